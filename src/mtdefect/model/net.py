"""Build the segmentation network from its config: segmentation-models-pytorch on a timm encoder.

Imports torch and smp only, so the service can rebuild a network without training code.
"""
from __future__ import annotations

from typing import Any

import torch


def build_net(
    arch: str = "Unet",
    encoder_name: str = "tu-resnet18",
    encoder_weights: str | None = None,
    in_channels: int = 1,
    classes: int = 1,
    **kwargs: Any,
) -> torch.nn.Module:
    """One builder for every family: ``arch`` is any smp architecture (Unet, UnetPlusPlus, FPN, ...),
    ``encoder_name`` any smp encoder, ``tu-<name>`` for a timm encoder. ``encoder_weights="imagenet"``
    loads pretrained encoder weights (needs the model hub); None trains from scratch."""
    import segmentation_models_pytorch as smp

    return smp.create_model(
        arch=arch,
        encoder_name=encoder_name,
        encoder_weights=encoder_weights,
        in_channels=in_channels,
        classes=classes,
        **kwargs,
    )


def inference_net_config(net_config: dict[str, Any]) -> dict[str, Any]:
    """The net config to store with a trained model: same architecture, never re-download weights."""
    config = dict(net_config)
    config["encoder_weights"] = None
    return config
