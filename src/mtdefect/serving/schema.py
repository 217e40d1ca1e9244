"""What the API accepts and answers, as BentoML IO descriptors (they drive the OpenAPI document).

``ImageUpload`` describes the request body (multipart/form-data with one binary ``image`` field) but
does not parse it: its ``from_http_request`` hands the raw Starlette request to the endpoint, which
reads and validates it itself (see upload.py). That keeps BentoML's generic deserialisers — which
answer 500 to some malformed uploads, download URLs given in place of files, and unpickle
``application/vnd.bentoml+pickle`` bodies in non-main services — out of the request path, while
the OpenAPI document still says exactly what to send.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import bentoml
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from mtdefect.inference.multiview import MAX_VIEWS
from mtdefect.serving.upload import FIELD


class PendingUpload:
    """The request of an API call, not yet read; the endpoint reads it with its own limits."""

    __slots__ = ("request",)

    def __init__(self, request: Request) -> None:
        self.request = request


class ImageUpload(bentoml.IODescriptor):
    """multipart/form-data with exactly one file field ``image``."""

    model_config = ConfigDict(extra="forbid", title="ImageUpload")
    media_type: ClassVar[str] = "multipart/form-data"

    image: bytes = Field(
        description="The image file: JPEG, PNG, BMP or TIFF, grayscale or colour, one frame, "
        "each side at least 8 px, at most MT_MAX_PIXELS pixels and MT_MAX_BYTES bytes.",
    )

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> ImageUpload:
        return cls.model_construct(image=PendingUpload(request))  # type: ignore[arg-type]


ImageUpload.multipart_fields = [FIELD]


class TileUpload(bentoml.IODescriptor):
    """multipart/form-data with 1 to 6 file fields, each named ``image``: the photographs of one
    physical tile under its lightings, in any order."""

    model_config = ConfigDict(extra="forbid", title="TileUpload")
    media_type: ClassVar[str] = "multipart/form-data"

    image: list[bytes] = Field(
        min_length=1,
        max_length=MAX_VIEWS,
        description="The tile's photographs (repeat the 'image' field, e.g. curl -F image=@exp1.jpg -F "
        "image=@exp2.jpg): each JPEG, PNG, BMP or TIFF, at most MT_MAX_PIXELS pixels and MT_MAX_BYTES "
        "bytes; together at most the worker's pixel budget (MT_PIXEL_BUDGET / MT_WORKERS).",
    )

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> TileUpload:
        return cls.model_construct(image=PendingUpload(request))  # type: ignore[arg-type]


TileUpload.multipart_fields = [FIELD]


class RegionOut(BaseModel):
    model_config = ConfigDict(title="Region", populate_by_name=True)

    bbox: list[int] = Field(
        min_length=4, max_length=4, description="[x, y, width, height] in input pixels (x, y: top-left)"
    )
    area: int = Field(ge=1, description="defect pixels in the region")
    score: float = Field(ge=0.0, le=1.0, description="highest defect probability inside the region")
    class_name: str | None = Field(
        default=None,
        alias="class",
        description="the region's defect class: the tile's defect_class, carried to each of its regions "
        "(null for models without a class head)",
    )
    class_score: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="the class head's probability of that class (null without a head)",
    )


class ImageAnswer(BaseModel):
    """Image-level decision and the defect regions, in the input image's pixel coordinates."""

    defective: bool = Field(
        description="the reject decision: score >= decision_threshold (models without a decision threshold: "
        "at least one defect region was found)"
    )
    score: float = Field(
        ge=0.0,
        le=1.0,
        description="image-level defect score (see score_source): 'head': P(defect) from the model's "
        "tile-class head (its defect classes' probabilities summed, i.e. 1 - P(MT_Free)); 'mask': the "
        "highest mean defect probability over any window of the model's "
        "score_window x score_window pixels",
    )
    score_source: str = Field(description="where score comes from: 'head' (tile-class head) or 'mask'")
    decision_threshold: float | None = Field(
        ge=0.0,
        le=1.0,
        description="score at or above which the tile is defective (chosen on validation to keep "
        "false alarms within budget); null for models that decide by regions",
    )
    mask_gate_threshold: float | None = Field(
        ge=0.0,
        le=1.0,
        description="a tile judged clean whose gate score (the score, or with mask_gate_window the mask's "
        "highest mean probability over that window) reaches this is not rejected, yet shows its suspect "
        "regions; null: a tile judged clean shows none. Chosen on validation for the best mask with at "
        "most a set share of defect-free tiles showing regions",
    )
    mask_gate_window: int | None = Field(
        ge=1, description="window (pixels) of the gate score; null: the gate compares the score"
    )
    threshold: float = Field(
        ge=0.0, le=1.0, description="pixel probability at or above which a pixel is a defect"
    )
    defect_area_fraction: float = Field(
        ge=0.0, le=1.0, description="fraction of the image's pixels marked defect"
    )
    regions: list[RegionOut] = Field(
        description="connected defect regions (8-connectivity) that passed the minimum area, on a tile "
        "judged defective or passing the mask gate (else none)"
    )
    defect_class: str | None = Field(
        description="the most probable defect class (MT_Blowhole, MT_Break, MT_Crack, MT_Fray, MT_Uneven) "
        "of a "
        "tile judged defective; null when the tile is judged clean or the model has no class head"
    )
    class_scores: dict[str, float] = Field(
        description="the class head's probability per class, MT_Free (no defect) included, summing to 1; "
        "empty for models without a class head"
    )
    model: str = Field(description="model store tag that produced this answer")
    inference_ms: float = Field(
        ge=0.0, description="model time incl. pre/post-processing, excl. upload and decoding"
    )


class DetectResult(ImageAnswer, bentoml.IODescriptor):
    """Image-level decision and the defect regions, in the input image's pixel coordinates."""

    model_config = ConfigDict(title="DetectResult")


class ViewOut(ImageAnswer):
    """One photograph of the tile: what /detect answers for it, plus its mask and where it was sent."""

    model_config = ConfigDict(title="ViewResult")

    index: int = Field(ge=0, description="position of the photograph among the request's 'image' parts")
    filename: str | None = Field(description="the part's file name, as sent (null when none was sent)")
    width: int = Field(ge=1, description="the photograph's width in pixels")
    height: int = Field(ge=1, description="the photograph's height in pixels")
    mask_png: str = Field(
        description="the defect mask as a base64-encoded PNG of the photograph's size (0 = background, "
        "255 = defect); empty for a view judged clean by a model with a decision threshold"
    )


class TileResult(bentoml.IODescriptor):
    """One decision for a physical tile from the photographs of its lightings, and each photograph's
    own answer."""

    model_config = ConfigDict(title="TileResult")

    defective: bool = Field(
        description="the tile's reject decision: score >= tile_threshold (models without a decision "
        "threshold: at least half of the views are defective)"
    )
    score: float = Field(ge=0.0, le=1.0, description="the views' scores fused by 'fusion'")
    fusion: str = Field(description="how the view scores are fused: 'median' (default), 'mean' or 'max'")
    tile_threshold: float | None = Field(
        description="fused score at or above which the tile is rejected, chosen on the validation "
        "split's physical tiles for the false-alarm budget (null: decided by the views' majority)"
    )
    defect_class: str | None = Field(
        description="the defect class of the highest-scoring view judged defective, when the tile is "
        "rejected; null otherwise or without a class head"
    )
    views: list[ViewOut] = Field(description="each photograph's answer, in the order sent")
    model: str = Field(description="model store tag that produced this answer")
    inference_ms: float = Field(ge=0.0, description="model time of all views together")


class PngImage(bentoml.IODescriptor):
    """A PNG image (its own media type; documented as a binary string)."""

    media_type: ClassVar[str] = "image/png"

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"type": "string", "format": "binary"}

    @classmethod
    def openapi_components(cls, name: str) -> dict[str, Any]:
        return {}


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong with the request, or why the service cannot answer")


ERROR_RESPONSES: dict[int, str] = {
    400: "Bad input: malformed multipart body, missing/misnamed/extra field, not a decodable image, "
    "truncated image, multi-frame image, an image side under 8 px",
    401: "MT_API_KEY is set and the Authorization: Bearer header is missing or wrong",
    405: "Only POST is allowed",
    413: "Body over MT_MAX_BYTES (refused from Content-Length before reading) or image over MT_MAX_PIXELS",
    415: "Content-Type is not multipart/form-data (pickle bodies included), or the file is not "
    "JPEG, PNG, BMP or TIFF",
    429: "Too many requests in flight (MT_MAX_CONCURRENCY): retry later",
    500: "Unexpected server error (a bug; the server keeps serving)",
    503: "Model not loaded or failed its warm-up: the service is not ready",
    504: "No answer within MT_TIMEOUT_S",
}

API_ROUTES = ("/segment", "/detect", "/overlay", "/detect_tile")
# the routes answering JSON, and their answer's model (inlined in the OpenAPI document, nulls kept)
JSON_ANSWERS: dict[str, type[BaseModel]] = {"/detect": DetectResult, "/detect_tile": TileResult}


def _nullable_for_openapi_30(node: Any) -> Any:
    """Pydantic writes Optional[X] as anyOf [X, {type: null}], which OpenAPI 3.0 has no type for;
    3.0 spells it X + nullable: true (BentoML's TaskStatusResponse component has one)."""
    if isinstance(node, list):
        return [_nullable_for_openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_for_openapi_30(value) for key, value in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        del node["anyOf"]
        if len(rest) == 1 and isinstance(rest[0], dict) and "$ref" not in rest[0]:
            node.update(rest[0])
        elif rest:
            node["anyOf"] = rest
        node["nullable"] = True
    return node


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _inline_refs(
            {**defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}, defs
        )
    return {key: _inline_refs(value, defs) for key, value in node.items()}


def detect_response_schema(model: type[BaseModel] | None = None) -> dict[str, Any]:
    """``DetectResult`` (or another JSON answer) as an inline OpenAPI 3.0 schema. BentoML flattens
    ``anyOf`` to its first option, which turns every ``X | None`` field into a plain ``X``: a client
    validating against it would reject ``"defect_class": null``. This keeps the null (as ``nullable``)."""
    schema = (model or DetectResult).model_json_schema()
    defs = schema.pop("$defs", {})
    return _nullable_for_openapi_30(_inline_refs(schema, defs))


def with_error_responses(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document made valid OpenAPI 3.0, with every status the API routes can
    answer documented (BentoML lists 200, 400, 404 and 500 only) and ``/detect``'s nullable fields
    kept nullable."""
    spec = _nullable_for_openapi_30(copy.deepcopy(spec))
    for route, model in JSON_ANSWERS.items():
        responses = spec.get("paths", {}).get(route, {}).get("post", {}).get("responses", {})
        for status in (200, "200"):  # BentoML's asdict() keys statuses by int
            content = responses.get(status, {}).get("content", {})
            if "application/json" in content:
                content["application/json"]["schema"] = detect_response_schema(model)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {
        "type": "object",
        "title": "Error",
        "properties": {
            "error": {"type": "string", "description": ErrorBody.model_fields["error"].description}
        },
        "required": ["error"],
    }
    for route in API_ROUTES:
        operation = spec.get("paths", {}).get(route, {}).get("post")
        if operation is None:
            continue
        responses = {str(k): v for k, v in operation.get("responses", {}).items()}
        operation["responses"] = responses
        for status, description in ERROR_RESPONSES.items():
            responses[str(status)] = {
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        for key in [k for k in responses if k not in {str(s) for s in ERROR_RESPONSES} | {"200"}]:
            del responses[key]  # BentoML's own 404 entry: never answered by these routes
        operation["security"] = [{}, {"bearer": []}]
    spec["components"].setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "Needed only when the server runs with MT_API_KEY set",
    }
    return spec
