"""Build the network from its config: segmentation-models-pytorch on a timm encoder, plus an optional
tile-level head. Imports torch and smp only, so the service rebuilds a network without training code.

Pretrained weights are a training concern (``mtdefect.model.pretrained``): a stored model's net
config always rebuilds the architecture without weights and then loads its own safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class TileHead(nn.Module):
    """Tile-level classifier on the deepest ``stages`` encoder feature maps: each map is pooled to
    its spatial mean and maximum, the vectors are concatenated, then dropout and one linear layer.

    The maximum keeps a small defect visible in a large tile (a mean alone dilutes it with the tile's
    area, and the network is trained on crops but answers for whole tiles); the mean carries
    tile-wide cues such as uneven brightness. Outputs one logit per class (softmax over classes)."""

    def __init__(self, in_channels: Sequence[int], classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.linear = nn.Linear(2 * sum(in_channels), classes)
        self.stages = len(in_channels)

    def pool(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The deepest ``stages`` feature maps → one (N, 2·ΣC) vector per image: what the linear
        layer reads (also what training refits the linear layer on, over whole tiles)."""
        pooled = []
        for feature in features[-self.stages :]:
            pooled += [feature.mean(dim=(2, 3)), feature.amax(dim=(2, 3))]
        return torch.cat(pooled, dim=1).float()

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.linear(self.dropout(self.pool(features)))


class SegmenterWithTileHead(nn.Module):
    """One network pass → (pixel logits N×1×H×W, tile class logits N×K). The segmenter is an smp
    model; the head reads the same encoder features (no second encoder pass)."""

    def __init__(self, segmenter: nn.Module, head: TileHead) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.head = head

    @property
    def encoder(self) -> nn.Module:
        return self.segmenter.encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.segmenter.encoder(x)
        masks = self.segmenter.segmentation_head(self.segmenter.decoder(features))
        return masks, self.head(features)


def timm_name(encoder: str) -> str:
    """``tu-resnet18`` or ``resnet18`` → ``resnet18`` (the timm model name)."""
    return encoder[3:] if encoder.startswith("tu-") else encoder


def build_net(
    arch: str = "Unet",
    encoder: str = "resnet18",
    in_channels: int = 1,
    classes: int = 1,
    tile_classes: int = 0,
    head_stages: int = 2,
    head_dropout: float = 0.2,
    decoder_channels: Sequence[int] | None = None,
    pretrained: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """One builder for every family: ``arch`` is any smp architecture (Unet, UnetPlusPlus, FPN, ...),
    ``encoder`` any timm model name (smp's ``tu-<name>`` encoder). ``decoder_channels`` goes to the
    architectures that take it (U-Net, U-Net++); None leaves smp's default (FPN has none).
    ``tile_classes`` > 0 adds a ``TileHead`` on the deepest ``head_stages`` feature maps: the network
    then returns ``(pixel logits, tile logits)``. The weights are random: ``pretrained`` is accepted
    (older stored configs carry it) and ignored; training loads pretrained weights itself."""
    import segmentation_models_pytorch as smp

    if decoder_channels is not None:
        kwargs["decoder_channels"] = [int(c) for c in decoder_channels]
    segmenter = smp.create_model(
        arch=arch,
        encoder_name=f"tu-{timm_name(encoder)}",
        encoder_weights=None,
        in_channels=in_channels,
        classes=classes,
        **kwargs,
    )
    if not tile_classes:
        return segmenter
    channels = list(segmenter.encoder.out_channels)[-head_stages:]
    return SegmenterWithTileHead(segmenter, TileHead(channels, int(tile_classes), head_dropout))


def split_outputs(
    output: torch.Tensor | tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A network's output as (pixel logits, tile logits or None), whichever builder made it."""
    if isinstance(output, (tuple, list)):
        return output[0], output[1]
    return output, None
