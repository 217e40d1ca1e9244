"""Bytes → validated 8-bit grayscale image, with limits checked before pixels are decoded."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "MPO"})


class DecodeError(ValueError):
    """The upload is not an image we accept; the message says why (safe to show a client)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    min_side: int = 8


def _to_gray_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL mode → HxW uint8 (16-bit and float scaled by their range, colour → luminance)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16)
        return (arr >> 8).astype(np.uint8)
    if mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        hi = 65535 if arr.max(initial=0) > 255 else 255
        return (np.clip(arr, 0, hi) * 255 // hi).astype(np.uint8)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(arr * scale, 0, 255).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    if mode == "1":
        img = img.convert("L")
    return np.asarray(img.convert("L"), dtype=np.uint8)


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Decode an upload into an HxW uint8 array, or raise DecodeError with a client-safe message.

    The byte cap, the format, the frame count and the pixel cap are checked from the header,
    before any pixel is decoded. EXIF orientation is applied (the mask matches the image as
    displayed).
    """
    if not data:
        raise DecodeError("empty upload: send an image file in the 'image' field")
    if len(data) > limits.max_bytes:
        raise DecodeError(f"upload is {len(data)} bytes, over the {limits.max_bytes}-byte limit", 413)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            # Pillow's own guard fired from the header alone: the declared size is far too large
            raise DecodeError(f"image declares too many pixels (limit {limits.max_pixels})", 413) from None
        except UnidentifiedImageError:
            raise DecodeError("not a supported image (JPEG, PNG, BMP or TIFF expected)", 415) from None
        except Exception as exc:  # PIL raises a zoo of errors on hostile headers
            raise DecodeError(f"unreadable image header: {type(exc).__name__}") from None
        if img.format not in ALLOWED_FORMATS:
            raise DecodeError(
                f"image format {img.format} not accepted (JPEG, PNG, BMP or TIFF expected)", 415
            )
        width, height = img.size
        if width * height > limits.max_pixels or max(width, height) > limits.max_side:
            raise DecodeError(
                f"image is {width}x{height} pixels, over the limit of {limits.max_pixels} pixels "
                f"(longest side {limits.max_side})",
                413,
            )
        if min(width, height) < limits.min_side:
            raise DecodeError(f"image is {width}x{height}; each side must be at least {limits.min_side} px")
        if getattr(img, "n_frames", 1) > 1:
            raise DecodeError("multi-frame images are not accepted: send one frame")
        try:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            gray = _to_gray_uint8(img)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"image data is corrupt or truncated ({type(exc).__name__})") from None
    if gray.ndim != 2 or gray.size == 0:
        raise DecodeError("image has no usable pixels")
    return np.ascontiguousarray(gray)
