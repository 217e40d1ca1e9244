"""/detect_tile over real HTTP: the photographs of one tile (1 to 6 ``image`` parts) → one fused tile
decision plus each view's own answer, equal to what /detect and the in-process decision give for
the same files; bad uploads refused with a JSON 4xx naming the view. Real lightings of one tile from
the shared dataset when present."""

from __future__ import annotations

import base64
import io
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from mtdefect import store
from mtdefect.inference import Predictor, decode_image
from mtdefect.inference.multiview import decide_tile
from mtdefect.serving.schema import TileResult

from ..conftest import SHARED_ZIP
from .svc_support import encode, rgb, tile

pytestmark = pytest.mark.slow


def post_views(server, views: list[tuple[str, bytes]], **kw):
    files = [("image", (name, data, "application/octet-stream")) for name, data in views]
    return server.post("/detect_tile", files=files, **kw)


def in_process_tile(views: list[bytes], tag: str):
    predictor = Predictor.from_dir(store.model_path(tag))
    predictions = [predictor.predict(decode_image(data))[0] for data in views]
    return decide_tile(predictions, predictor.settings.postprocess), predictions


def assert_tile_answer(server, tag: str, views: list[tuple[str, bytes]]) -> dict:
    response = post_views(server, views)
    assert response.status_code == 200, response.text
    body = response.json()
    TileResult.model_validate(body)
    expected, predictions = in_process_tile([data for _, data in views], tag)
    assert body["defective"] == expected.defective and body["fusion"] == expected.fusion == "median"
    assert body["score"] == pytest.approx(expected.score, abs=1e-6)
    assert body["tile_threshold"] == pytest.approx(expected.threshold)
    assert body["defect_class"] == expected.defect_class
    assert body["score"] == pytest.approx(float(np.median([v["score"] for v in body["views"]])), abs=1e-6)
    assert body["defective"] == (body["score"] >= body["tile_threshold"])
    assert response.headers["x-defective"] == str(body["defective"]).lower()
    assert [v["index"] for v in body["views"]] == list(range(len(views)))
    assert [v["filename"] for v in body["views"]] == [name for name, _ in views]
    for answer, prediction, (name, data) in zip(body["views"], predictions, views):
        single = server.post_image("/detect", data, filename=name).json()
        for key in ("defective", "score", "regions", "defect_class", "decision_threshold"):
            assert answer[key] == single[key], key
        assert answer["score"] == pytest.approx(prediction.score, abs=1e-6)
        height, width = decode_image(data).shape
        assert (answer["width"], answer["height"]) == (width, height)
        if answer["mask_png"]:
            mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask_png"]))))
            assert mask.shape == (height, width) and np.array_equal(mask, prediction.mask)
        else:
            assert not prediction.mask.any()
    assert body["inference_ms"] == pytest.approx(sum(v["inference_ms"] for v in body["views"]), abs=0.01)
    return body


def test_three_views_of_one_tile_give_one_fused_decision(server, use_model_home):
    views = [
        (f"exp{i + 1}.png", encode(rgb(tile(180 + 7 * i, 220, seed=40 + i, blobs=2 + i)), "PNG"))
        for i in range(3)
    ]
    assert_tile_answer(server, use_model_home.tag, views)


def test_a_single_view_answers_as_detect_does(server, use_model_home):
    body = assert_tile_answer(server, use_model_home.tag, [("only.png", encode(tile(150, 170, seed=3)))])
    assert body["score"] == body["views"][0]["score"] and body["defective"] == body["views"][0]["defective"]


def test_openapi_documents_the_tile_endpoint(server):
    spec = server.get("/docs.json").json()
    operation = spec["paths"]["/detect_tile"]["post"]
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["image"]["type"] == "array" and body["properties"]["image"]["maxItems"] == 6
    for status in ("400", "413", "415", "429", "503"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}


def refused(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


def test_bad_tile_uploads_are_refused_with_a_json_4xx_naming_the_view(server):
    good = encode(tile(64, 80, seed=1))
    assert "image 2 of 3" in refused(
        post_views(server, [("a", good), ("b", b"not an image"), ("c", good)]), 415
    )
    assert "1 to 6" in refused(post_views(server, [(f"v{i}", good) for i in range(7)]), 400)
    assert "missing form field" in refused(server.post("/detect_tile", files={"photo": ("a", good)}), 400)
    assert "multipart" in refused(server.post("/detect_tile", data=good), 415)
    assert server.get("/readyz").status_code == 200


@pytest.mark.skipif(not SHARED_ZIP.exists(), reason=f"shared dataset not found at {SHARED_ZIP}")
def test_the_lightings_of_a_real_tile(server, use_model_home):
    """All photographs of one real defective tile (its lightings: one capture group) in one request."""
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if "/MT_Crack/Imgs/" in n and n.endswith(".jpg"))
        numbered = sorted((int(re.search(r"num_(\d+)", n).group(1)), n) for n in names)
        group = [numbered[0]]
        for number, name in numbered[1:]:
            if number - group[-1][0] > 300 or len(group) == 6:
                break
            group.append((number, name))
        views = [(name.rsplit("/", 1)[-1], archive.read(name)) for _, name in group]
    assert len(views) >= 2
    assert_tile_answer(server, use_model_home.tag, views)


def test_views_over_the_pixel_budget_together_are_refused_with_413(strict_server):
    """Each view within MT_MAX_PIXELS (90,000) but three together over the worker's pixel budget
    (2 x 90,000): a 413 before any is decoded; two of them fit."""
    from .svc_support import API_KEY

    auth = {"Authorization": f"Bearer {API_KEY}"}
    view = encode(tile(290, 300, seed=2))  # 87,000 pixels
    error = refused(post_views(strict_server, [(f"v{i}", view) for i in range(3)], headers=auth), 413)
    assert "pixel budget" in error
    fits = post_views(strict_server, [(f"v{i}", view) for i in range(2)], headers=auth)
    # admitted: answered, or (3 s timeout on a loaded machine) a clean 503 with Retry-After
    assert fits.status_code == 200 or (fits.status_code == 503 and "retry-after" in fits.headers), fits.text
    assert "API key" in refused(post_views(strict_server, [("v", view)]), 401)
