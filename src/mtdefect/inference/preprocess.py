"""Grayscale image → network input. The only implementation: training, evaluation and serving call it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mtdefect.inference.settings import PreprocessSettings


@dataclass(frozen=True)
class InputGeometry:
    """What preprocessing did, so postprocessing can undo it exactly."""

    original: tuple[int, int]  # (height, width) of the input image
    scaled: tuple[int, int]  # (height, width) after scaling, before padding
    padded: tuple[int, int]  # (height, width) fed to the network


def scaled_size(height: int, width: int, settings: PreprocessSettings) -> tuple[int, int]:
    """Size after the optional scaling, to a long side or by a factor (aspect kept, each side ≥ 1)."""
    if settings.long_side is not None:
        factor = settings.long_side / max(height, width)
    elif settings.scale != 1.0:
        factor = settings.scale
    else:
        return height, width
    return max(1, round(height * factor)), max(1, round(width * factor))


def resize_image(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 image to (height, width); no-op when the size already matches."""
    if gray.shape == size:
        return gray
    return np.asarray(Image.fromarray(gray).resize((size[1], size[0]), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a binary mask (never creates soft values)."""
    if mask.shape == size:
        return mask
    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))


def scale_image(gray: np.ndarray, settings: PreprocessSettings) -> np.ndarray:
    return resize_image(gray, scaled_size(*gray.shape, settings))


def scale_mask(mask: np.ndarray, settings: PreprocessSettings) -> np.ndarray:
    return resize_mask(mask, scaled_size(*mask.shape, settings))


MIN_STD = 1e-2  # a flat image is not blown up into noise


def image_stats(gray: np.ndarray) -> tuple[float, float]:
    """(mean, std) of a uint8 image in [0, 1] units, the std at least ``MIN_STD``: what
    ``per_image`` normalisation divides by. Training computes it on the whole tile, before cropping."""
    values = gray.astype(np.float64) / 255.0
    return float(np.float32(values.mean())), float(np.float32(max(values.std(), MIN_STD)))


def normalize(gray, settings: PreprocessSettings, stats=None):
    """uint8 → float32 (x/255 - mean) / std. A NumPy array, or a torch tensor on its own device (how
    training normalises crops on the GPU); the same float32 arithmetic either way.

    With ``settings.per_image``, mean and std are the image's own (``image_stats``); ``stats`` passes
    them in where ``gray`` is a crop of a larger tile (training: broadcastable tensors, one per crop)."""
    values = gray.astype(np.float32) if isinstance(gray, np.ndarray) else gray.float()
    mean, std = settings.mean, settings.std
    if settings.per_image:
        if stats is None:
            if not isinstance(gray, np.ndarray):
                raise ValueError("per-image normalisation of a tensor needs the tile's stats")
            stats = image_stats(gray)
        mean, std = stats
    return ((values / 255.0) - mean) / std


def pad_to_stride(array: np.ndarray, stride: int, mode: str = "zero") -> np.ndarray:
    """Pad bottom/right up to the next multiple of ``stride``: with 0 (``zero``; on a normalised image,
    its mean) or by repeating the last row/column (``edge``). See ``PreprocessSettings.pad``."""
    height, width = array.shape[-2:]
    pad_h = (-height) % stride
    pad_w = (-width) % stride
    if pad_h == 0 and pad_w == 0:
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, pad_h), (0, pad_w)]
    if mode == "zero":
        return np.pad(array, pad, mode="constant")
    if mode == "edge":
        return np.pad(array, pad, mode="edge")
    raise ValueError(f"unknown padding {mode!r}")


def preprocess(gray: np.ndarray, settings: PreprocessSettings) -> tuple[np.ndarray, InputGeometry]:
    """HxW uint8 → (1x1xH'xW' float32 network input, geometry to undo it)."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected an HxW uint8 image, got shape {gray.shape} dtype {gray.dtype}")
    scaled = scale_image(gray, settings)
    padded = pad_to_stride(normalize(scaled, settings), settings.stride, settings.pad)
    geometry = InputGeometry(original=gray.shape, scaled=scaled.shape, padded=padded.shape)
    return np.ascontiguousarray(padded[None, None]), geometry
