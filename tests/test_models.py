"""Tests for segdistill.models: the registry is the test matrix (STYLE.md 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from segdistill.models import (
    FEATURE_NAMES,
    MODELS,
    SegOutput,
    aspp_rates,
    build_model,
    count_flops,
    count_params,
    load_backbone_weights,
    register_model,
)
from segdistill.models.backbones import conv_geometry, dilate_, stage_dilations

PAPER = [f"{h}_{b}" for h in ("deeplabv3", "pspnet") for b in ("r18", "r101", "mbv2")]
TV = [f"{h}_tv_{b}" for h in ("deeplabv3", "pspnet") for b in ("r18", "r101")]
TINY = [f"{h}_tiny_{b}" for h in ("deeplabv3", "pspnet") for b in ("r18", "r101", "mbv2")]
NUM_CLASSES = 5


def test_registry_holds_paper_and_tiny_models() -> None:
    assert set(PAPER + TV + TINY) <= set(MODELS)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_forward_contract_and_gradients(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, NUM_CLASSES).train()
    assert (model.arch, model.num_classes, model.output_stride) == (arch, NUM_CLASSES, 8)
    size = 32 if arch.endswith("_r101") and "tiny" not in arch else 64  # keep ResNet-101 cheap
    x = torch.randn(2, 3, size, size)  # batch 2: BN in the pooled branches needs > 1 value in training
    out = model(x)
    side = size // 8
    assert isinstance(out, SegOutput) and out._fields == ("logits", "aux", "features")
    assert out.logits.shape == (2, NUM_CLASSES, side, side)  # input / output_stride, not upsampled
    assert torch.isfinite(out.logits).all()
    if "mbv2" in arch:
        assert out.aux is None
    else:
        assert out.aux is not None and out.aux.shape == (2, NUM_CLASSES, side, side)
        assert torch.isfinite(out.aux).all()
    assert set(out.features) == set(FEATURE_NAMES)
    for name, feat in out.features.items():
        stride = model.feature_strides[name]
        assert feat.shape == (2, model.feature_channels[name], size // stride, size // stride), name
    assert out.features["backbone"] is out.features["stage4"]

    loss = out.logits.square().mean() + (out.aux.square().mean() if out.aux is not None else 0.0)
    loss.backward()
    for name, p in model.backbone.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    first = next(model.backbone.parameters())  # the stem conv
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("output_stride", [4, 8, 16])
@pytest.mark.parametrize("arch", ["deeplabv3_tiny_r18", "pspnet_tiny_mbv2", "deeplabv3_tiny_r101"])
def test_output_stride(arch: str, output_stride: int) -> None:
    model = build_model(arch, NUM_CLASSES, output_stride=output_stride).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    side = 64 // output_stride
    assert model.output_stride == output_stride
    assert out.logits.shape == (1, NUM_CLASSES, side, side)
    assert out.features["head"].shape[-2:] == (side, side)
    if out.aux is not None:
        assert out.aux.shape[-2:] == out.features["stage3"].shape[-2:]


def test_aspp_rates_scale_with_output_stride() -> None:
    assert aspp_rates(8) == (12, 24, 36)
    assert aspp_rates(16) == (6, 12, 18)
    assert aspp_rates(4) == (24, 48, 72)
    assert build_model("deeplabv3_tiny_r18", 3, output_stride=16).head.aspp.rates == (6, 12, 18)


def test_hand_dilation_matches_torchvision() -> None:
    """Our generic dilate_ reproduces replace_stride_with_dilation (used for R101) exactly."""
    with torch.device("meta"):
        ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
        ours = torchvision.models.resnet50(weights=None)
    for layer, d in zip((ours.layer2, ours.layer3, ours.layer4), stage_dilations(8)):
        dilate_(layer, d)
    assert conv_geometry(ours) == conv_geometry(ref)


@pytest.mark.parametrize("arch", ["deeplabv3_r18", "deeplabv3_tv_r18"])
def test_basicblock_dilation_follows_reference(arch: str) -> None:
    """R18 (BasicBlock): first block conv1 at the previous dilation, the rest at the stage's."""
    bb = build_model(arch, 3).backbone
    geo = {name: (stride, dil) for name, stride, dil, _ in conv_geometry(bb)}
    assert geo["layer2.0.conv1"] == ((2, 2), (1, 1))
    assert geo["layer3.0.conv1"] == ((1, 1), (1, 1)) and geo["layer3.0.conv2"] == ((1, 1), (2, 2))
    assert geo["layer3.0.downsample.0"][0] == (1, 1)
    assert geo["layer4.0.conv1"] == ((1, 1), (2, 2)) and geo["layer4.1.conv2"] == ((1, 1), (4, 4))


def test_aux_flag() -> None:
    assert build_model("deeplabv3_tiny_r18", 3, aux=False).aux_head is None
    assert build_model("pspnet_tiny_r101", 3, aux=True).aux_head is not None
    assert build_model("pspnet_tiny_mbv2", 3, aux=True).aux_head is None


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("deeplabv3_r18")(MODELS["deeplabv3_r18"])
    name = "_test_only_model"
    try:
        register_model(name)(MODELS["deeplabv3_tiny_r18"])
        with pytest.raises(ValueError, match=name):
            register_model(name)(MODELS["deeplabv3_tiny_r18"])
    finally:
        MODELS.pop(name, None)


def test_unknown_arch_lists_known_names() -> None:
    with pytest.raises(ValueError) as err:
        build_model("deeplabv3_r50", 3)
    assert "deeplabv3_r50" in str(err.value)
    for arch in PAPER + TV + TINY:
        assert arch in str(err.value)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        build_model("deeplabv3_tiny_r18", 3, output_stride=32)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("deeplabv3_tiny_r18", 0)


# ---------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_load_torchvision_resnet18(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)  # includes fc.*, which must be ignored
    model = build_model("deeplabv3_tv_r18", NUM_CLASSES, pretrained=str(path))
    assert torch.equal(model.backbone.layer4[1].conv2.weight, resnet18_state["layer4.1.conv2.weight"])
    assert torch.equal(model.backbone.bn1.running_var, resnet18_state["bn1.running_var"])


def test_load_without_num_batches_tracked(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    """Old torchvision files predate BN's num_batches_tracked buffer; they must still load."""
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in resnet18_state.items() if "num_batches_tracked" not in k}, path)
    model = build_model("pspnet_tv_r18", NUM_CLASSES)
    assert load_backbone_weights(model, path) == "torchvision"
    assert torch.equal(model.backbone.conv1.weight, resnet18_state["conv1.weight"])


def test_torchvision_resnet_refused_by_deep_stem_model_with_hint(tmp_path: Path,
                                                                 resnet18_state: dict[str, torch.Tensor]) -> None:
    """The paper models have the reference's deep stem: torchvision files fit their *_tv_* twins."""
    torch.save(resnet18_state, tmp_path / "resnet18.pth")
    model = build_model("deeplabv3_r18", NUM_CLASSES)
    before = model.backbone.layer4[1].conv2.weight.detach().clone()
    with pytest.raises(ValueError, match=r"conv1\.weight \(64, 3, 7, 7\) vs model \(64, 3, 3, 3\).*fits the "
                                         r"torchvision-stem model deeplabv3_tv_r18") as err:
        load_backbone_weights(model, tmp_path / "resnet18.pth")
    assert str(tmp_path / "resnet18.pth") in str(err.value)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, before)  # nothing loaded


def test_load_rejects_bad_keys_and_shapes(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    model = build_model("deeplabv3_tv_r18", NUM_CLASSES)
    before = model.backbone.conv1.weight.detach().clone()

    renamed = dict(resnet18_state)
    renamed["layer1.0.convX.weight"] = renamed.pop("layer1.0.conv1.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"missing keys: layer1\.0\.conv1\.weight") as err:
        load_backbone_weights(model, tmp_path / "renamed.pth")
    assert "unexpected keys: layer1.0.convX.weight" in str(err.value)

    reshaped = dict(resnet18_state)
    reshaped["layer2.0.conv1.weight"] = torch.zeros(1, 64, 3, 3)
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight \(1, 64, 3, 3\) vs model \(128, 64, 3, 3\)"):
        load_backbone_weights(model, tmp_path / "reshaped.pth")

    assert torch.equal(model.backbone.conv1.weight, before)  # never a partial load

    with pytest.raises(FileNotFoundError):
        load_backbone_weights(model, tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError):
        build_model("deeplabv3_tv_r18", NUM_CLASSES, pretrained=str(tmp_path / "nope.pth"))


def test_tiny_models_refuse_weights(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    with pytest.raises(ValueError, match="paper models"):
        build_model("deeplabv3_tiny_r18", NUM_CLASSES, pretrained=str(path))


def test_load_torchvision_mobilenet_v2(tmp_path: Path) -> None:
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()  # has features.18 + classifier
    torch.save(state, tmp_path / "mbv2.pth")
    model = build_model("deeplabv3_mbv2", NUM_CLASSES, pretrained=str(tmp_path / "mbv2.pth"))
    assert torch.equal(model.backbone.features[17].conv[0][0].weight, state["features.17.conv.0.0.weight"])


# ---------------------------------------------------------------- complexity


def test_deep_stem_and_torchvision_stem() -> None:
    """Paper ResNets: the reference's deep stem (3x3 3->64 s2, 64->64, 64->128), 128 channels into
    layer1 (so R18's layer1.0 has a shortcut); *_tv_*: torchvision's 7x7 stem, 64 channels."""
    with torch.device("meta"):
        deep, tv = build_model("deeplabv3_r18", 3).backbone, build_model("deeplabv3_tv_r18", 3).backbone
        deep101 = build_model("pspnet_r101", 3).backbone
    assert deep.stem == "deep" and tv.stem == "plain"
    shapes = {k: tuple(v.shape) for k, v in deep.state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 3, 3) and shapes["conv2.weight"] == (64, 64, 3, 3)
    assert shapes["conv3.weight"] == (128, 64, 3, 3) and shapes["layer1.0.downsample.0.weight"] == (64, 128, 1, 1)
    assert deep.conv1.stride == (2, 2) and deep.conv2.stride == (1, 1) and deep.conv3.stride == (1, 1)
    assert tuple(deep101.state_dict()["layer1.0.conv1.weight"].shape) == (64, 128, 1, 1)
    assert tuple(tv.state_dict()["conv1.weight"].shape) == (64, 3, 7, 7) and "conv2.weight" not in tv.state_dict()
    assert "layer1.0.downsample.0.weight" not in tv.state_dict()


def test_count_params() -> None:
    tiny18 = count_params(build_model("deeplabv3_tiny_r18", 150))
    tiny101 = count_params(build_model("deeplabv3_tiny_r101", 150))
    assert 0 < tiny18 < 1_000_000
    assert tiny101 > 3 * tiny18


# Parameters at 19 classes with the aux head, counted by the reference code on its networks
# (tests/fixtures/reference/golden_index.json "num_params"; paper Table II: 61.1M, 13.6M, 3.2M, 12.9M).
REFERENCE_PARAMS = {"deeplabv3_r101": 61_118_950, "deeplabv3_r18": 13_607_974, "deeplabv3_mbv2": 3_233_171,
                    "pspnet_r18": 12_919_334}


@pytest.mark.parametrize(("arch", "params"), sorted(REFERENCE_PARAMS.items()))
def test_params_match_reference_and_paper_table(arch: str, params: int) -> None:
    """Exactly the reference's count (paper Table II rounds it to 0.1M)."""
    with torch.device("meta"):
        model = build_model(arch, 19)
    assert count_params(model) == params
    paper = {"deeplabv3_r101": 61.1, "deeplabv3_r18": 13.6, "deeplabv3_mbv2": 3.2, "pspnet_r18": 12.9}[arch]
    assert round(count_params(model) / 1e6, 1) == paper


def test_pspnet_r101_head_is_the_references() -> None:
    """The reference's PSPNet head on 2048 channels is 512 wide (pspnet.py _PSPHead): 68.1M parameters."""
    with torch.device("meta"):
        model = build_model("pspnet_r101", 19)
    assert model.head.width == 512 and round(count_params(model) / 1e6, 1) == 68.1


def test_count_flops_plausible() -> None:
    flops = count_flops("deeplabv3_r18", 150, size=512)
    assert 100e9 < flops < 140e9  # ~128 GFLOPs = ~64 GMACs at 512x512, OS 8 (deep stem)


def test_count_flops_matches_a_real_forward() -> None:
    model = build_model("pspnet_tiny_r18", NUM_CLASSES, aux=False).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 96, 96))
    assert count_flops("pspnet_tiny_r18", NUM_CLASSES, size=96) == counter.get_total_flops()
    assert count_flops("pspnet_tiny_r18", NUM_CLASSES, size=96, aux=True) > counter.get_total_flops()
