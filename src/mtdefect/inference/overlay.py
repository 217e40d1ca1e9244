"""Pictures for people: the image with defects tinted and outlined, and image | truth | prediction panels."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

TINT = np.array([255, 40, 40], dtype=np.float32)
OUTLINE = np.array([255, 255, 0], dtype=np.uint8)


def overlay(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """HxW uint8 image + HxW {0,255} mask → HxWx3 uint8 with defects tinted red and outlined yellow."""
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    inside = mask > 0
    rgb[inside] = (1 - alpha) * rgb[inside] + alpha * TINT
    out = rgb.clip(0, 255).astype(np.uint8)
    edge = inside & ~ndimage.binary_erosion(inside, border_value=0)
    out[edge] = OUTLINE
    return out


def panel(gray: np.ndarray, truth: np.ndarray, prediction: np.ndarray, gap: int = 4) -> np.ndarray:
    """image | truth overlay | prediction overlay, side by side (HxWx3 uint8)."""
    h = gray.shape[0]
    spacer = np.full((h, gap, 3), 255, dtype=np.uint8)
    image = np.repeat(gray[..., None], 3, axis=2)
    return np.concatenate([image, spacer, overlay(gray, truth), spacer, overlay(gray, prediction)], axis=1)
