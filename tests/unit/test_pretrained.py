"""Packaged ImageNet weights: every encoder tensor loaded, equal to the reference implementation,
the 1-channel stem = the summed RGB filters, refusals on any mismatch."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from mtdefect.inference.network import build_net
from mtdefect.model.pretrained import (
    PretrainedError,
    load_pretrained,
    map_by_order,
    package_state_dict,
    package_weights_path,
    pretrained_source,
)

timm = pytest.importorskip("timm")


@pytest.mark.parametrize(
    "encoder",
    ["tf_efficientnet_lite0", "efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"],
)
def test_every_encoder_tensor_is_loaded(encoder: str) -> None:
    net = build_net(
        arch="Unet", encoder=encoder, in_channels=1, decoder_channels=[16, 16, 8, 8, 8], tile_classes=6
    )
    report = load_pretrained(net, encoder, "package", in_channels=1)
    own = {k: v for k, v in net.encoder.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert report["tensors"] == len(own) and report["adapted_stem"] == ["conv_stem.weight"]
    weights = package_state_dict(encoder)
    for name, tensor in own.items():
        expected = weights[name].sum(1, keepdim=True) if name == "conv_stem.weight" else weights[name]
        assert torch.equal(tensor, expected), name
    # only the ImageNet classifier's tensors are left out
    assert all(k.startswith(("conv_head", "bn2", "classifier")) for k in report["unused"])


def test_mapped_timm_network_equals_the_reference_implementation() -> None:
    reference_lib = pytest.importorskip("efficientnet_lite_pytorch")
    reference = reference_lib.EfficientNet.from_name("efficientnet-lite0", num_classes=1000).eval()
    source = torch.load(package_weights_path("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    reference.load_state_dict(source)
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    ours.load_state_dict(package_state_dict("tf_efficientnet_lite0"), strict=False)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-4)
        # the encoder's deepest features equal the reference's last block output
        features = reference._swish(reference._bn0(reference._conv_stem(x)))
        for block in reference._blocks:
            features = block(features)
        assert torch.allclose(ours.blocks(ours.bn1(ours.conv_stem(x))), features, atol=1e-4)


def test_one_channel_stem_answers_as_the_rgb_network_on_a_gray_image() -> None:
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True).eval()
    weights = package_state_dict("tf_efficientnet_lite0")
    full.load_state_dict({k: v for k, v in weights.items() if k in full.state_dict()}, strict=False)
    net = build_net(
        arch="Unet", encoder="tf_efficientnet_lite0", in_channels=1, decoder_channels=[16, 16, 8, 8, 8]
    )
    load_pretrained(net, "tf_efficientnet_lite0", "package", in_channels=1)
    gray = torch.rand(1, 1, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rgb_features = full(gray.expand(1, 3, 96, 128))
        gray_features = net.eval().encoder(gray)[1:]
    for a, b in zip(rgb_features, gray_features):
        assert torch.allclose(a, b, atol=1e-4)


def test_mismatches_refuse_the_whole_load() -> None:
    names = OrderedDict([("a", torch.Size([2, 3])), ("b", torch.Size([4]))])
    with pytest.raises(PretrainedError, match="hold 1 tensors, the timm network 2"):
        map_by_order(
            {"x": torch.zeros(2, 3)}, OrderedDict([("a", torch.Size([2, 3]))]) | {"c": torch.Size([1])}
        )
    with pytest.raises(PretrainedError, match="does not fit"):
        map_by_order({"x": torch.zeros(2, 3), "y": torch.zeros(5)}, names)
    mapped = map_by_order(
        {"x": torch.zeros(2, 3), "y": torch.zeros(4), "z.num_batches_tracked": torch.tensor(1)}, names
    )
    assert list(mapped) == ["a", "b"]
    with pytest.raises(PretrainedError, match="no installed package"):
        package_weights_path("resnet18")
    with pytest.raises(PretrainedError, match="must be one of"):
        pretrained_source("imagenet21k")
    assert pretrained_source(False) == "none" and pretrained_source(True) == "hub"


def test_weights_file_is_read_without_unpickling(monkeypatch) -> None:
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    package_state_dict("tf_efficientnet_lite0")
    assert seen.get("weights_only") is True
