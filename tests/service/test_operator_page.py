"""The operator page at / and the OpenAPI UI at /docs, over real HTTP and in a real headless Chromium
(Debian's chromium + chromium-driver through Selenium; skipped, with the reason, where they are
missing). The page must show what /detect answers for the same file, explain refusals, and make no
request to another origin (BentoML's own index page loads Google Tag Manager).

MT_SCREENSHOT_DIR=docs/images pytest tests/service/test_operator_page.py  also writes the page's
screenshot at 1280x800 there (operator_page.png, the one docs/API.md shows).
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from mtdefect.devtools import browser as chromium_tools

from .svc_support import API_KEY, REPO, encode, tile

pytestmark = pytest.mark.slow

TRACKERS = ("googletagmanager", "gtm-wnpgwrm", "google-analytics.com", "datalayer.push")


def dataset_zip() -> Path | None:
    source = os.environ.get("MT_DATA_SOURCE", "")
    for candidate in (
        Path(source) if source.endswith(".zip") else None,
        REPO.parent / "shared" / "data" / "magnetic-tiles.zip",
    ):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def real_tile(folder: Path) -> Path:
    """A real defective tile from the dataset archive when there is one, else a synthetic tile."""
    archive = dataset_zip()
    if archive is not None:
        with zipfile.ZipFile(archive) as z:
            names = sorted(n for n in z.namelist() if "/MT_Crack/Imgs/" in n and n.endswith(".jpg"))
            if names:
                path = folder / Path(names[0]).name
                path.write_bytes(z.read(names[0]))
                return path
    path = folder / "synthetic_tile.png"
    path.write_bytes(encode(tile(240, 300, seed=11, blobs=2)))
    return path


@pytest.fixture(scope="module")
def chromium_session():
    try:
        browser = chromium_tools.Chromium(1280, 800)
    except chromium_tools.BrowserUnavailable as exc:
        pytest.skip(f"no headless Chromium for the operator-page test: {exc}")
    yield browser
    browser.close()


@pytest.fixture
def chromium(chromium_session):
    """The module's browser on a blank page, at 1280x800, with an empty request list."""
    chromium_session.driver.get("about:blank")
    chromium_session.viewport(1280, 800)
    chromium_session.forget_requests()
    chromium_session.driver.get_log("browser")
    return chromium_session


def page_facts(browser) -> dict:
    d = browser.driver
    rows = d.find_elements("css selector", "#regions tbody tr:not(.muted)")
    return {
        "decision": d.find_element("id", "decision").get_attribute("data-value"),
        "defect_class": d.find_element("id", "defect-class").get_attribute("data-value"),
        "regions": len(rows),
        "region_count": d.find_element("id", "region-count").get_attribute("data-value"),
        "first_bbox": [int(td.text) for td in rows[0].find_elements("css selector", "td")[4:8]]
        if rows
        else None,
        "score": d.find_element("id", "score").text,
        "model": d.find_element("id", "model").text,
        "latency": d.find_element("id", "latency").text,
        "overlay": d.execute_script(
            "const i = document.getElementById('overlay');"
            "return i.hidden ? null : [i.naturalWidth, i.naturalHeight];"
        ),
    }


def upload_on_strict(browser, path: Path, attempts: int = 5) -> str:
    """The strict server sheds load (2 in flight, 3 s timeout): on a busy machine a prediction can
    answer 503 (busy: it could not finish within the timeout), 504 or 429, which the page rightly
    reports; try again then."""
    for _ in range(attempts):
        state = browser.upload(path)
        text = browser.driver.find_element("id", "error").text
        if state == "done" or not any(f"(HTTP {code})" in text for code in (429, 503, 504)):
            return state
        time.sleep(1.0)
    return state


def no_horizontal_scroll(browser) -> bool:
    return browser.driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth;")


def box(browser, element_id: str) -> dict:
    return browser.driver.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return {left: r.left, right: r.right, top: r.top, bottom: r.bottom};",
        element_id,
    )


def save_screenshot(browser, name: str, tmp_path: Path) -> None:
    browser.driver.execute_script("document.activeElement && document.activeElement.blur();")
    browser.driver.save_screenshot(str(tmp_path / name))
    target = os.environ.get("MT_SCREENSHOT_DIR")
    if target and name in ("operator_page.png", "operator_page_tile.png"):  # the ones docs/API.md shows
        Path(target).mkdir(parents=True, exist_ok=True)
        browser.driver.save_screenshot(str(Path(target) / name))


# ------------------------------------------------------------------ over plain HTTP


def test_root_is_the_operator_page_not_bentoml_index(server):
    page = server.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Tile inspection" in page.text and 'id="file-input"' in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    for path, kind in (
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/docs", "text/html"),
        ("/docs/init.js", "text/javascript"),
        ("/docs/assets/swagger-ui-bundle.js", "javascript"),
        ("/docs/assets/swagger-ui.css", "text/css"),
    ):
        response = server.get(path)
        assert response.status_code == 200, path
        assert kind in response.headers["content-type"], (path, response.headers["content-type"])
        text = response.text.lower()
        assert not any(t in text for t in TRACKERS), path
    for path in (
        "/ui/index.html",
        "/ui/docs.html",
        "/ui/..%2Fpages.py",
        "/ui/missing.js",
        "/docs/assets/../pages.py",
    ):
        assert server.get(path).status_code == 404, path
    for method in ("post", "put", "delete"):
        assert requests.request(method, server.url + "/", timeout=10).status_code == 405


def test_pages_need_no_api_key(strict_server):
    for path in ("/", "/ui/app.js", "/ui/style.css", "/docs", "/docs.json"):
        assert strict_server.get(path).status_code == 200, path
    assert strict_server.post_image("/detect", encode(tile(64, 64))).status_code == 401


def test_bento_ships_the_pages():
    """bentofile.yaml's include/exclude, read by BentoML's own matcher, take every page file."""
    import yaml
    from bentoml._internal.bento.build_config import BentoPathSpec

    config = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    spec = BentoPathSpec(config["include"], config.get("exclude", []), str(REPO))
    page = REPO / "src" / "mtdefect" / "serving" / "page"
    files = [p.relative_to(REPO).as_posix() for p in page.iterdir() if p.is_file()]
    assert {"index.html", "app.js", "style.css", "docs.html", "docs.js"} <= {Path(f).name for f in files}
    for path in [*files, "src/mtdefect/serving/pages.py", "src/mtdefect/serving/monitoring.py"]:
        assert spec.includes(path), path
    assert not spec.includes("src/mtdefect/devtools/browser.py")


# ------------------------------------------------------------------ in Chromium


def test_page_shows_what_detect_answers_and_stays_on_its_origin(server, chromium, tmp_path):
    real = real_tile(tmp_path)
    blobs = tmp_path / "blobs.png"  # what the tiny test model calls defective
    blobs.write_bytes(encode(tile(200, 260, seed=3, blobs=3)))
    chromium.driver.get(server.url + "/")
    chromium.wait_for(
        lambda: chromium.driver.find_element("id", "service-state").get_attribute("data-ready") == "yes",
        30,
        "service ready pill",
    )
    answers = []
    for path in (real, blobs):  # the screenshot shows the last one: defects found, regions listed
        assert chromium.upload(path) == "done", chromium.driver.find_element("id", "error").text
        facts = page_facts(chromium)
        expected = server.post_image("/detect", path.read_bytes(), path.name).json()
        answers.append(expected)
        assert facts["decision"] == ("defective" if expected["defective"] else "clean"), (facts, expected)
        assert facts["defect_class"] == (expected.get("defect_class") or ""), (facts, expected)
        assert facts["regions"] == len(expected["regions"]) == int(facts["region_count"]), (facts, expected)
        if expected["regions"]:
            assert facts["first_bbox"] == expected["regions"][0]["bbox"]
        assert facts["score"] == f"{expected['score']:.3f}"
        assert facts["model"] == expected["model"]
        assert facts["latency"].startswith("model ") and "round trip" in facts["latency"]
        width, height = Image.open(path).size
        assert facts["overlay"] is not None and facts["overlay"][0] == width and facts["overlay"][1] >= height
        shown = chromium.driver.find_element("id", "original")
        assert (
            shown.is_displayed()
            and chromium.driver.execute_script("return arguments[0].naturalWidth;", shown) == width
        )
        assert chromium.driver.find_element("id", "error").is_displayed() is False
    assert any(a["defective"] and a["regions"] for a in answers), (
        "no defective answer: the regions table went untested"
    )

    # 1280x800: pictures and result side by side, nothing wider than the window
    chromium.viewport(1280, 800)
    assert no_horizontal_scroll(chromium)
    assert box(chromium, "result")["left"] >= box(chromium, "drop")["right"] - 1
    save_screenshot(chromium, "operator_page.png", tmp_path)
    # tablet (800 px wide, portrait): one column, the result under the pictures, still no sideways scroll
    chromium.viewport(800, 1280)
    assert no_horizontal_scroll(chromium)
    assert box(chromium, "result")["top"] >= box(chromium, "drop")["bottom"]
    save_screenshot(chromium, "operator_page_tablet.png", tmp_path)
    chromium.viewport(1280, 800)

    urls = chromium.requests()
    assert any(u.endswith("/detect") for u in urls) and any(u.endswith("/overlay") for u in urls)
    assert any(u.endswith("/ui/app.js") for u in urls) and any(u.endswith("/ui/style.css") for u in urls)
    assert chromium_tools.foreign(urls, server.url) == []
    assert chromium.console_errors() == []


def test_photographs_of_one_tile_dropped_together_show_one_tile_decision(server, chromium, tmp_path):
    """Three photographs dropped at once: the page asks /detect_tile once and shows its tile decision,
    and one card per view with the view's own decision and its mask tinted on the photograph."""
    views = [
        (f"exp{i + 1}_num_{100 + 30 * i}.png", encode(tile(150, 180, seed=60 + i, blobs=i + 1)))
        for i in range(3)
    ]
    chromium.driver.get(server.url + "/")
    assert chromium.drop_files(views) == "done", chromium.driver.find_element("id", "error").text
    files = [("image", (name, data, "application/octet-stream")) for name, data in views]
    expected = server.post("/detect_tile", files=files).json()
    d = chromium.driver
    decision = d.find_element("id", "decision")
    assert decision.get_attribute("data-value") == ("defective" if expected["defective"] else "clean")
    assert decision.get_attribute("data-views") == "3" and "3 views, median" in decision.text
    assert d.find_element("id", "score").text == f"{expected['score']:.3f}"
    assert d.find_element("id", "defect-class").get_attribute("data-value") == (
        expected["defect_class"] or ""
    )
    chromium.wait_for(
        lambda: len(d.find_elements("css selector", "#views canvas[data-drawn='yes']")) == 3,
        30,
        "views drawn",
    )
    cards = d.find_elements("css selector", "#views .view-card")
    assert [float(c.get_attribute("data-score")) for c in cards] == pytest.approx(
        [v["score"] for v in expected["views"]], abs=1e-6
    )
    assert [c.get_attribute("data-defective") == "true" for c in cards] == [
        v["defective"] for v in expected["views"]
    ]
    for card, view in zip(cards, expected["views"]):
        canvas = card.find_element("css selector", "canvas")
        size = d.execute_script("return [arguments[0].width, arguments[0].height];", canvas)
        assert size == [view["width"], view["height"]]
        tinted = int(canvas.get_attribute("data-tinted") or 0)
        assert (tinted > 0) == bool(view["mask_png"]), (tinted, view["defective"])
    assert d.find_element("id", "pictures").is_displayed() is False
    rows = d.find_elements("css selector", "#regions tbody tr:not(.muted)")
    assert len(rows) == sum(len(v["regions"]) for v in expected["views"])
    assert any(v["mask_png"] for v in expected["views"]), "no view with a mask: the tint went untested"
    save_screenshot(chromium, "operator_page_tile.png", tmp_path)
    urls = chromium.requests()
    assert sum(u.endswith("/detect_tile") for u in urls) == 1 and not any(u.endswith("/detect") for u in urls)
    assert chromium_tools.foreign(urls, server.url) == [] and chromium.console_errors() == []

    # seven files: refused on the page itself, nothing sent
    chromium.forget_requests()
    assert chromium.drop_files(views * 3) == "error"
    assert "at most 6" in d.find_element("id", "error").text
    assert not any(u.endswith("/detect_tile") for u in chromium.requests())

    # one file again: the single-image view comes back
    assert chromium.drop_files(views[:1]) == "done"
    assert (
        d.find_element("id", "pictures").is_displayed()
        and not d.find_element("id", "views-section").is_displayed()
    )


CLASSIFIED_ANSWER = {  # the documented /detect answer of a model with a class head (docs/API.md)
    "defective": True,
    "score": 0.912345,
    "decision_threshold": 0.4172,
    "threshold": 0.5,
    "defect_area_fraction": 0.00412,
    "regions": [
        {
            "bbox": [120, 48, 31, 22],
            "area": 517,
            "score": 0.987655,
            "class": "MT_Crack",
            "class_score": 0.8731,
        },
        {"bbox": [10, 200, 6, 5], "area": 21, "score": 0.71, "class": "MT_Blowhole", "class_score": 0.42},
    ],
    "defect_class": "MT_Crack",
    "class_scores": {
        "MT_Blowhole": 0.0212,
        "MT_Break": 0.0305,
        "MT_Crack": 0.8731,
        "MT_Fray": 0.0118,
        "MT_Free": 0.0409,
        "MT_Uneven": 0.0225,
    },
    "model": "magnetic-tile-segmenter:abc123",
    "inference_ms": 41.7,
}


def test_page_shows_defect_classes_as_documented(server, chromium):
    """The class fields of the contract, fed to the page's renderer (the test model has no class
    head): class name and colour, every class probability, per-region class and probability."""
    from mtdefect.inference.overlay import CLASS_COLOURS

    chromium.driver.get(server.url + "/")
    chromium.driver.execute_script("render(arguments[0], 50);", CLASSIFIED_ANSWER)
    d = chromium.driver
    assert d.find_element("id", "decision").text == "DEFECTIVE · reject"
    defect_class = d.find_element("id", "defect-class")
    assert defect_class.get_attribute("data-value") == "MT_Crack" and "Crack" in defect_class.text
    colour = d.execute_script(
        "return getComputedStyle(document.querySelector('#defect-class .swatch')).backgroundColor;"
    )
    assert colour == "rgb({}, {}, {})".format(*CLASS_COLOURS["MT_Crack"])
    probabilities = [li.text.split("\n") for li in d.find_elements("css selector", "#class-scores li")]
    assert [p[0] for p in probabilities] == [
        "Crack",
        "Free",
        "Break",
        "Uneven",
        "Blowhole",
        "Fray",
    ]  # most likely first
    assert probabilities[0][-1] == "0.873"
    drawn = d.execute_script(
        "return [...document.querySelectorAll('#class-scores .prob')].map(b => [b.firstChild"
        ".getBoundingClientRect().width / b.getBoundingClientRect().width,"
        " b.getBoundingClientRect().height]);"
    )
    assert [round(share, 2) for share, _ in drawn] == [0.87, 0.04, 0.03, 0.02, 0.02, 0.01]  # bars to scale
    assert all(0 < height <= 12 for _, height in drawn)
    rows = [
        [td.text for td in tr.find_elements("css selector", "td")]
        for tr in d.find_elements("css selector", "#regions tbody tr")
    ]
    assert rows == [
        ["1", "Crack", "0.873", "0.988", "120", "48", "31", "22", "517"],
        ["2", "Blowhole", "0.420", "0.710", "10", "200", "6", "5", "21"],
    ]
    assert d.find_element("id", "threshold").text == "0.417"
    clean = {**CLASSIFIED_ANSWER, "defective": False, "score": 0.1, "regions": [], "defect_class": None}
    d.execute_script("render(arguments[0], 50);", clean)
    assert d.find_element("id", "defect-class").text == "none (clean tile)"
    assert d.find_element("id", "decision").get_attribute("data-value") == "clean"
    legacy = {k: v for k, v in CLASSIFIED_ANSWER.items() if k not in ("defect_class", "class_scores")}
    legacy["regions"] = [
        {k: v for k, v in r.items() if k not in ("class", "class_score")} for r in legacy["regions"]
    ]
    d.execute_script("render(arguments[0], 50);", legacy)  # an older server: no class fields at all
    assert d.find_element("id", "defect-class").text == "not available (this model has no class head)"
    assert len(d.find_elements("css selector", "#regions tbody tr:not(.muted)")) == 2
    assert chromium.console_errors() == []


def test_refusals_are_explained_on_the_page(server, chromium, tmp_path):
    chromium.driver.get(server.url + "/")
    text_file = tmp_path / "notes.txt"
    text_file.write_bytes(b"this is not an image\n" * 20)
    answer = server.post_image("/detect", text_file.read_bytes(), text_file.name)
    assert answer.status_code in (400, 415)

    assert chromium.upload(text_file) == "error"  # picked in the file dialog
    error = chromium.driver.find_element("id", "error")
    assert error.is_displayed()
    assert f"(HTTP {answer.status_code})" in error.text and answer.json()["error"] in error.text
    if answer.status_code == 415:
        assert "not an image the service accepts" in error.text
    assert not chromium.driver.find_element("id", "result").is_displayed()

    truncated = encode(tile(120, 120, seed=5))[:300]  # dropped on the drop zone
    answer = server.post_image("/detect", truncated, "cut.png")
    assert answer.status_code == 400
    assert chromium.drop("cut.png", truncated) == "error"
    assert "(HTTP 400)" in error.text and answer.json()["error"] in error.text

    good = tmp_path / "good.png"  # the error goes away with the next good tile
    good.write_bytes(encode(tile(100, 120, seed=6)))
    assert chromium.upload(good) == "done" and not error.is_displayed()
    assert chromium_tools.foreign(chromium.requests(), server.url) == []


def test_api_key_field_and_too_big_files(strict_server, chromium, tmp_path):
    """The strict server wants an API key and caps files at 60,000 bytes."""
    chromium.driver.get(strict_server.url + "/")
    small = tmp_path / "small.png"
    small.write_bytes(encode(tile(120, 150, seed=7)))
    key = chromium.driver.find_element("id", "api-key")
    key.clear()
    assert chromium.upload(small) == "error"
    error = chromium.driver.find_element("id", "error")
    assert "(HTTP 401)" in error.text and "API key" in error.text, error.text

    key.send_keys(API_KEY)
    assert upload_on_strict(chromium, small) == "done", chromium.driver.find_element("id", "error").text
    for _ in range(5):  # the same load shedding applies to this request
        answer = strict_server.post_image(
            "/detect", small.read_bytes(), headers={"Authorization": f"Bearer {API_KEY}"}
        )
        if answer.status_code not in (429, 503, 504):
            break
        time.sleep(1.0)
    assert answer.status_code == 200, answer.text
    expected = answer.json()
    assert page_facts(chromium)["decision"] == ("defective" if expected["defective"] else "clean")

    noise = np.random.default_rng(0).integers(0, 256, (250, 250), dtype=np.uint8)  # noise barely compresses
    big = tmp_path / "big.png"
    big.write_bytes(encode(noise))
    assert big.stat().st_size > 60_000
    assert chromium.upload(big) == "error"
    assert "(HTTP 413)" in error.text and "too big" in error.text, error.text
    assert chromium_tools.foreign(chromium.requests(), strict_server.url) == []
    key.clear()


def test_openapi_ui_at_docs_without_trackers(server, chromium):
    chromium.driver.get(server.url + "/docs")
    chromium.wait_for(
        lambda: len(chromium.driver.find_elements("css selector", ".opblock-summary-path")) >= 3,
        60,
        "Swagger UI",
    )
    paths = {
        e.text.replace("\u200b", "")
        for e in chromium.driver.find_elements("css selector", ".opblock-summary-path")
    }
    assert {"/detect", "/segment", "/overlay"} <= paths
    urls = chromium.requests()
    assert any(u.endswith("/docs.json") for u in urls)
    assert chromium_tools.foreign(urls, server.url) == []
