"""Photometric augmentation of training crops: what another lighting does to the same tile.

The archive photographs each tile under up to six lightings (``exp1`` … ``exp6``). Per-image
normalisation (``PreprocessSettings.per_image``) already takes out a lighting's overall brightness
and contrast, and ``jitter`` moves them a little; what it leaves are the *shape* of the intensity
response and the direction the light falls from. Two changes imitate those on each training crop,
after it is cut (and after any synthetic defect is pasted in), on the model's device:

- ``gamma``: the crop's intensities through a gamma curve, γ = exp(u), u uniform in [−gamma, gamma]
  (0.3: γ in [0.74, 1.35]), renormalised by the tile's mean and std carried through the same curve
  (first order), so a crop stays on the scale of its tile;
- ``illumination``: a linear brightness ramp across the crop in a random direction, its amplitude
  uniform in [0, illumination] standard deviations of the tile (light falling from one side).

Both 0 (the default) change nothing and draw no random numbers, so a recipe without them trains as
before, bit for bit. Masks and labels are untouched: the defect is where it was.
"""

from __future__ import annotations

import math

import torch


def photometric(images: torch.Tensor, stats: torch.Tensor, gamma: float, illumination: float) -> torch.Tensor:
    """``images``: (B, 1, H, W) normalised crops; ``stats``: (B, 2) their tiles' (mean, std) in [0, 1]
    units (what normalised them). Returns new crops; ``images`` is not changed."""
    if gamma < 0 or illumination < 0:
        raise ValueError(f"gamma and illumination are ranges (>= 0), got {gamma} and {illumination}")
    out = images
    batch, device = images.shape[0], images.device
    if gamma > 0:
        g = torch.exp((torch.rand(batch, device=device) * 2 - 1) * gamma)[:, None, None, None]
        mean = stats[:, 0].clamp(1e-3, 1.0)[:, None, None, None].to(images.dtype)
        std = stats[:, 1][:, None, None, None].to(images.dtype)
        raw = (out * std + mean).clamp(0.0, 1.0)
        # the tile's mean and std through the same curve, to first order: d(x^g)/dx = g x^(g-1)
        new_mean = mean**g
        new_std = (std * g * mean ** (g - 1)).clamp_min(1e-4)
        out = (raw**g - new_mean) / new_std
    if illumination > 0:
        height, width = images.shape[-2:]
        theta = torch.rand(batch, device=device) * (2 * math.pi)
        amplitude = torch.rand(batch, device=device) * illumination
        rows = torch.linspace(-1.0, 1.0, height, device=device, dtype=images.dtype)
        cols = torch.linspace(-1.0, 1.0, width, device=device, dtype=images.dtype)
        ramp = (
            torch.cos(theta)[:, None, None] * cols[None, None, :]
            + torch.sin(theta)[:, None, None] * rows[None, :, None]
        )
        out = out + (amplitude[:, None, None] * ramp)[:, None].to(images.dtype)
    return out
