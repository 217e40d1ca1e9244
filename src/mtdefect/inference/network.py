"""Build the segmentation network from its config: segmentation-models-pytorch on a timm encoder.

Imports torch and smp only, so the service can rebuild a network without training code.
"""
from __future__ import annotations

from typing import Any

import torch


def build_net(
    arch: str = "Unet",
    encoder: str = "resnet18",
    pretrained: bool = False,
    in_channels: int = 1,
    classes: int = 1,
    **kwargs: Any,
) -> torch.nn.Module:
    """One builder for every family: ``arch`` is any smp architecture (Unet, UnetPlusPlus, FPN, ...),
    ``encoder`` any timm model name (used as smp's ``tu-<name>`` encoder). ``pretrained=True`` loads
    ImageNet weights from the model hub (needs internet); False trains from scratch."""
    import segmentation_models_pytorch as smp

    return smp.create_model(
        arch=arch,
        encoder_name=encoder if encoder.startswith("tu-") else f"tu-{encoder}",
        encoder_weights="imagenet" if pretrained else None,
        in_channels=in_channels,
        classes=classes,
        **kwargs,
    )


def inference_net_config(net_config: dict[str, Any]) -> dict[str, Any]:
    """The net config stored with a trained model: same architecture, never re-download weights."""
    return {**net_config, "pretrained": False}
