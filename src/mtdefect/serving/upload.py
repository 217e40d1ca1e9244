"""The request body → the bytes of its ``image`` file(s), or an ApiError saying what was wrong.

The body is read with a byte cap (a client that lies about, or omits, Content-Length is cut off as
soon as the cap is passed) and parsed in memory with python-multipart's streaming parser, so no
temporary files are written and every malformed input ends in a 4xx we chose.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from mtdefect.serving.errors import ApiError, one_line

FIELD = "image"
MULTIPART = "multipart/form-data"
MAX_PARTS = 8
MAX_PART_HEADER_BYTES = 16 * 1024
PICKLE = "application/vnd.bentoml+pickle"


def check_content_type(content_type: str | None) -> None:
    """Refuse anything but multipart/form-data (including BentoML's pickle body type) with 415."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == MULTIPART:
        return
    if media_type == PICKLE:
        raise ApiError(
            415,
            f"pickle request bodies are not accepted: send multipart/form-data with one '{FIELD}' file field",
        )
    shown = media_type or "none"
    raise ApiError(
        415,
        f"Content-Type {shown} not accepted: send multipart/form-data with one "
        f"'{FIELD}' file field (e.g. curl -F {FIELD}=@tile.png)",
    )


def check_content_length(value: str | None, limit: int) -> None:
    """Refuse a declared body larger than ``limit`` before any of it is read."""
    if value is None:
        return
    try:
        length = int(value)
    except ValueError:
        raise ApiError(400, f"invalid Content-Length header {value!r}") from None
    if length < 0:
        raise ApiError(400, f"invalid Content-Length header {value!r}")
    if length > limit:
        raise ApiError(
            413,
            f"request body is {length} bytes, over the {limit}-byte limit "
            "(the image byte limit plus room for the multipart envelope)",
        )


async def read_body(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """Collect the body, stopping with 413 as soon as it grows past ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body is over the {limit}-byte limit")
            parts.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client disconnected before sending the whole body") from None
    return b"".join(parts)


class _Part:
    __slots__ = ("_field", "_value", "data", "headers")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.data: list[bytes] = []
        self._field = bytearray()
        self._value = bytearray()

    @property
    def disposition(self) -> tuple[bytes, dict[bytes, bytes]]:
        return parse_options_header(self.headers.get("content-disposition", ""))


def _parse_parts(body: bytes, boundary: bytes) -> list[_Part]:
    parts: list[_Part] = []
    state = {"ended": False, "header_bytes": 0}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise ApiError(400, f"too many form fields: send only the '{FIELD}' file")
        parts.append(_Part())
        state["header_bytes"] = 0

    def on_header_field(data: bytes, start: int, end: int) -> None:
        _count_header(end - start)
        parts[-1]._field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        _count_header(end - start)
        parts[-1]._value += data[start:end]

    def _count_header(n: int) -> None:
        state["header_bytes"] += n
        if state["header_bytes"] > MAX_PART_HEADER_BYTES:
            raise ApiError(400, "multipart part headers are too large")

    def on_header_end() -> None:
        part = parts[-1]
        name = part._field.decode("latin-1").strip().lower()
        part.headers[name] = part._value.decode("latin-1").strip()
        part._field, part._value = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.append(data[start:end])

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 — python-multipart raises MultipartParseError and friends
        raise ApiError(
            400, f"malformed multipart body ({type(exc).__name__}): {one_line(exc, limit=200)}"
        ) from None
    if not state["ended"]:
        raise ApiError(400, "multipart body is incomplete: the closing boundary is missing")
    return parts


@dataclass(frozen=True)
class FormImage:
    data: bytes
    filename: str | None  # as the client named the part's file (for its answer only, never a path)


def image_from_form(body: bytes, content_type: str | None) -> bytes:
    """The bytes of the single ``image`` part of a multipart/form-data body."""
    return images_from_form(body, content_type, 1)[0].data


def images_from_form(body: bytes, content_type: str | None, max_images: int) -> list[FormImage]:
    """The 1 to ``max_images`` ``image`` parts of a multipart/form-data body, in order."""
    check_content_type(content_type)
    wanted = f"one '{FIELD}' file field" if max_images == 1 else f"1 to {max_images} '{FIELD}' file fields"
    if not body:
        raise ApiError(400, f"empty request body: send multipart/form-data with {wanted}")
    _, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart/form-data Content-Type has no boundary parameter")
    if len(boundary) > 200:
        raise ApiError(400, "multipart boundary is too long")
    parts = _parse_parts(body, boundary)

    names: list[str] = []
    images: list[_Part] = []
    for part in parts:
        kind, options = part.disposition
        if kind.lower() != b"form-data" or b"name" not in options:
            raise ApiError(400, "every multipart part needs 'Content-Disposition: form-data; name=...'")
        name = options[b"name"].decode("utf-8", "replace")
        names.append(name)
        if name == FIELD:
            images.append(part)
    extra = sorted({n for n in names if n != FIELD})
    if not images:
        got = f" (got {', '.join(repr(n) for n in extra)})" if extra else ""
        raise ApiError(
            400, f"missing form field '{FIELD}'{got}: send the image as a file in the '{FIELD}' field"
        )
    if extra:
        raise ApiError(
            400, f"unexpected form field(s) {', '.join(repr(n) for n in extra)}: only '{FIELD}' is accepted"
        )
    if len(images) > max_images:
        if max_images == 1:
            raise ApiError(400, f"{len(images)} '{FIELD}' parts sent: send exactly one image")
        raise ApiError(
            400, f"{len(images)} '{FIELD}' parts sent: send the 1 to {max_images} photographs of one tile"
        )
    return [FormImage(b"".join(part.data), _filename(part)) for part in images]


def _filename(part: _Part) -> str | None:
    name = part.disposition[1].get(b"filename")
    return name.decode("utf-8", "replace")[:255] if name is not None else None
