"""Synthetic defects: mask-guided copy-paste of real defect regions onto clean training crops.

With 5–13 training tiles per defect class, the network sees each defect in a handful of contexts.
``DefectBank`` cuts every connected defect region of the *training* tiles (with a margin of its
surroundings) once; ``paste_defects`` puts a randomly chosen one — class-balanced, rotated by a
multiple of 90°, maybe flipped, rescaled — at a random place of a crop cut from a defect-free tile,
blended through a feathered alpha so no seam is left, and marks its pixels in the crop's mask; the
crop's tile-class label becomes the pasted defect's class. Only defect-free tiles receive pastes,
and defect-free tiles belong to other tile groups than every defect source by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mtdefect.inference.preprocess import normalize
from mtdefect.inference.settings import PreprocessSettings


@dataclass
class Patch:
    image: torch.Tensor  # (h, w) float32, normalised like the source tile's crops
    mask: torch.Tensor  # (h, w) bool: the defect pixels
    alpha: torch.Tensor  # (h, w) float32 in [0, 1]: 1 on the defect, fading out over the margin
    background: float  # mean of the patch outside the defect (matched to the destination)
    label: int  # the source tile's class index (-1 without a tile head)


class DefectBank:
    """Every connected defect region of the given training tiles (``min_area`` pixels or more)."""

    def __init__(
        self,
        images: list[np.ndarray],
        masks: list[np.ndarray],
        labels: list[int],
        preprocess: PreprocessSettings,
        max_side: int,
        margin: int = 6,
        min_area: int = 4,
        feather: float = 1.5,
    ) -> None:
        self.patches: list[Patch] = []
        for gray, mask, label in zip(images, masks, labels):
            if not mask.any():
                continue
            normalised = normalize(gray, preprocess)
            components, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
            for index, box in enumerate(ndimage.find_objects(components), start=1):
                region = components == index
                if region.sum() < min_area:
                    continue
                top, bottom = max(box[0].start - margin, 0), min(box[0].stop + margin, gray.shape[0])
                left, right = max(box[1].start - margin, 0), min(box[1].stop + margin, gray.shape[1])
                cut = region[top:bottom, left:right]
                soft = ndimage.gaussian_filter(
                    ndimage.binary_dilation(cut, iterations=2).astype(np.float32), feather
                )
                alpha = np.maximum(np.clip(soft * 1.5, 0.0, 1.0), cut)
                image = normalised[top:bottom, left:right].astype(np.float32)
                outside = image[~cut]
                self.patches.append(
                    Patch(
                        image=torch.from_numpy(np.ascontiguousarray(image)),
                        mask=torch.from_numpy(np.ascontiguousarray(cut)),
                        alpha=torch.from_numpy(np.ascontiguousarray(alpha.astype(np.float32))),
                        background=float(outside.mean()) if outside.size else float(image.mean()),
                        label=int(label),
                    )
                )
        self.max_side = max_side
        self.by_label: dict[int, list[int]] = {}
        for i, patch in enumerate(self.patches):
            self.by_label.setdefault(patch.label, []).append(i)

    def __len__(self) -> int:
        return len(self.patches)

    def draw(self, generator: torch.Generator | None = None) -> Patch:
        """A class chosen uniformly, then one of its regions (rare classes are pasted as often)."""
        labels = sorted(self.by_label)
        label = labels[int(torch.randint(len(labels), (), generator=generator))]
        members = self.by_label[label]
        return self.patches[members[int(torch.randint(len(members), (), generator=generator))]]


def transform(
    patch: Patch, max_side: int, scale_range: tuple[float, float], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random pose of ``patch``: rotation by k·90°, a flip, a scale in ``scale_range``, capped so
    it fits a ``max_side`` square. Returns (image, mask, alpha)."""
    k = int(torch.randint(4, (), generator=generator))
    stack = torch.stack([patch.image, patch.mask.float(), patch.alpha])
    stack = torch.rot90(stack, k, dims=(1, 2))
    if torch.rand((), generator=generator) < 0.5:
        stack = torch.flip(stack, dims=(2,))
    low, high = scale_range
    scale = low + float(torch.rand((), generator=generator)) * (high - low)
    height, width = stack.shape[1:]
    scale = min(scale, max_side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size != (height, width):
        stack = F.interpolate(stack[None], size=size, mode="bilinear", align_corners=False)[0]
    return stack[0], stack[1] > 0.5, stack[2].clamp(0.0, 1.0)


def paste_defects(
    batch: dict[str, torch.Tensor],
    receives: torch.Tensor,
    bank: DefectBank,
    probability: float,
    scale_range: tuple[float, float] = (0.75, 1.25),
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Paste one bank region into each crop flagged in ``receives`` (bool, (B,)) with
    ``probability``; ``batch`` as ``render_crops`` returns it (image, mask, maybe label), changed in
    place and returned. The region's background is shifted to the destination's mean under it, and
    the crop's ``label`` (when the batch has one) becomes the region's class."""
    if probability <= 0 or not len(bank):
        return batch
    images, masks = batch["image"], batch["mask"]
    size = images.shape[-1]
    for i in torch.nonzero(receives).flatten().tolist():
        if float(torch.rand((), generator=generator)) >= probability:
            continue
        source = bank.draw(generator)
        image, mask, alpha = transform(source, min(bank.max_side, size), scale_range, generator)
        h, w = image.shape
        top = int(torch.randint(size - h + 1, (), generator=generator))
        left = int(torch.randint(size - w + 1, (), generator=generator))
        target = images[i, 0, top : top + h, left : left + w]
        background = float(image[~mask].mean()) if (~mask).any() else float(image.mean())
        shifted = image.to(target.device) - background + target.mean()
        a = alpha.to(target.device)
        images[i, 0, top : top + h, left : left + w] = a * shifted + (1 - a) * target
        masks[i, 0, top : top + h, left : left + w] = torch.maximum(
            masks[i, 0, top : top + h, left : left + w], mask.to(masks.device).float()
        )
        if "label" in batch and source.label >= 0:
            batch["label"][i] = source.label
    return batch
