"""Golden tests against the paper's reference code (tests/fixtures/reference/, docs/REFERENCE.md).

Each reference-format file is rebuilt from its layout with the fill rule, ``torch.save``d as the
reference writes it, loaded through the user-facing paths (``load_teacher``, ``distill.teacher_checkpoint``
via the trainer and the study preflight, ``model.pretrained`` for the ImageNet backbone files) and run
on the fixed inputs in eval mode; every output array must match the reference's within
1e-4 x max|golden| (float32 agreement; each conversion mistake the fixtures were checked against
moves the logits by >= 1.3e-3 x max). Exporting back gives the same state dict bit for bit. Files
that do not fit are refused with errors that name the file and what does not fit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reference_helpers import (
    BACKBONE_FIXTURES,
    REFERENCE_FILE_NAMES,
    SEG_FIXTURES,
    fill_state_dict,
    golden,
    golden_index,
    inputs,
    layout,
    rel_error,
)
from segdistill.checkpoints import identify_reference_arch, load_model
from segdistill.cli import main as cli_main
from segdistill.config import (
    IMAGENET_PREPROCESSING,
    REFERENCE_PREPROCESSING,
    REFERENCE_UPSAMPLING,
    ConfigError,
    DataConfig,
    TrainConfig,
)
from segdistill.data import build_datasets
from segdistill.data.transforms import REFERENCE
from segdistill.export import export_reference, read_program_metadata
from segdistill.models import MODELS, build_model, load_backbone_weights, reference_key_map
from segdistill.models.reference import backbone_file_key_map
from segdistill.study import StudySpec
from segdistill.study.preflight import PreflightError, preflight_spec
from segdistill.study.presets import get_preset
from segdistill.evaluation import collect_extras
from segdistill.train import load_teacher, save_model_artifact, setup, upsample_logits

TOL = 1e-4  # x max|golden| per array (golden_index.json "comparison_advice")
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ref_files(tmp_path_factory: pytest.TempPathFactory):
    """``get(name, variant="")`` -> path of the reference-format file of fixture ``name`` (made once)."""
    root = tmp_path_factory.mktemp("reference_files")
    made: dict[tuple[str, str], Path] = {}

    def get(name: str, variant: str = "") -> Path:
        if (name, variant) not in made:
            state = fill_state_dict(name)
            if variant == "classifier":  # what an ImageNet training script would also save
                if "mobilenet" in name:
                    state["features.18.0.weight"] = torch.zeros(1280, 320, 1, 1)
                    state["classifier.1.weight"] = torch.zeros(1000, 1280)
                else:
                    state["fc.weight"] = torch.zeros(1000, 512 if "resnet18" in name else 2048)
                    state["fc.bias"] = torch.zeros(1000)
            folder = root / (variant or "plain")
            folder.mkdir(exist_ok=True)
            path = folder / REFERENCE_FILE_NAMES.get(name, f"{name}_best_model.pth")
            torch.save(state, path)
            made[(name, variant)] = path
        return made[(name, variant)]

    return get


def reference_data(**over) -> DataConfig:
    flat = {k.split(".", 1)[1]: v for k, v in REFERENCE_PREPROCESSING.items()}
    return DataConfig(**{**flat, "num_classes": 19, **over})


def _check(name: str, array: str, ours: torch.Tensor, errors: dict[str, float]) -> None:
    ref = golden(name)[array]
    err = rel_error(ours, ref)
    errors[array] = err
    assert err <= TOL, f"{name} {array}: |ours - reference| = {err:.2e} x max|reference| > {TOL}"


def _check_eval_pred(name: str, size: str, logits: torch.Tensor) -> int:
    """The reference's evaluation: bilinear align_corners=True to the input size, argmax; pixels whose
    top-2 margin is below 1e-4 may flip (golden_index.json "eval_pred_advice")."""
    paper = get_preset("paper", data_root="/data")
    x = inputs()[size]
    pred = upsample_logits(logits, x.shape[-2:], align_corners=paper.base.model.eval_align_corners).argmax(1)
    ref = golden(name)[f"eval_pred_{size}"]
    allowed = golden_index()["models"][name]["arrays"][f"eval_pred_{size}"]["num_pixels_margin_below_1e-4"]
    flips = int((pred.numpy() != ref).sum())
    assert flips <= allowed, f"{name} eval_pred_{size}: {flips} pixels differ (allowed {allowed})"
    return flips


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("arch", sorted(SEG_FIXTURES))
def test_reference_key_map_is_the_reference_layout(arch: str) -> None:
    """Every key, shape and dtype of the reference's state dict, in its order."""
    with torch.device("meta"):
        model = build_model(arch, 19, aux=True)
    mapping = reference_key_map(model)
    ours = [(mapping[k], list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == [(e["key"], e["shape"], e["dtype"]) for e in layout(SEG_FIXTURES[arch])]


@pytest.mark.parametrize("arch", sorted(BACKBONE_FIXTURES))
def test_backbone_file_layout(arch: str) -> None:
    with torch.device("meta"):
        backbone = build_model(arch, 19).backbone
    mapping = backbone_file_key_map(backbone)
    ours = [(mapping[k], list(v.shape)) for k, v in backbone.state_dict().items()]
    assert ours == [(e["key"], e["shape"]) for e in layout(BACKBONE_FIXTURES[arch])]


# ---------------------------------------------------------------- checkpoints in: goldens


@pytest.mark.parametrize("arch", sorted(SEG_FIXTURES))
def test_reference_checkpoint_matches_goldens(arch: str, ref_files) -> None:
    """load_teacher (the teacher path: no aux head) and load_model(aux=True) on the reference's file."""
    name = SEG_FIXTURES[arch]
    path = ref_files(name)
    teacher = load_teacher(path, arch=arch, num_classes=19, device=CPU, data=reference_data())
    assert not teacher.training and teacher.aux_head is None
    assert all(not p.requires_grad for p in teacher.parameters())
    full, file = load_model(path, arch=arch, num_classes=19, aux=True)
    assert file.format == "reference" and file.arch is None and file.num_classes == 19
    full.eval()
    errors: dict[str, float] = {}
    flips = {}
    mobile = "mobilenet" in name
    for size, x in inputs().items():
        with torch.no_grad():
            t_out, f_out = teacher(x), full(x)
        _check(name, f"out0_logits_{size}", t_out.logits, errors)
        _check(name, f"out{1 if mobile else 2}_feat_{size}", t_out.features["head"], errors)
        if mobile:
            assert f_out.aux is None  # the reference MobileNetV2 models have no aux head
        else:
            _check(name, f"out1_auxlogits_{size}", f_out.aux, errors)
        assert torch.equal(f_out.logits, t_out.logits)
        flips[size] = _check_eval_pred(name, size, t_out.logits)
    print(f"\n{arch}: max |ours - ref| / max|ref| = " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
          + f"; eval_pred pixels differing: {flips}")


@pytest.mark.parametrize("variant", ["", "classifier"])
@pytest.mark.parametrize("arch", sorted(BACKBONE_FIXTURES))
def test_reference_backbone_files_match_goldens(arch: str, variant: str, ref_files) -> None:
    """model.pretrained = the reference's ImageNet file (with or without its classifier tensors): the
    dilated stage-4 map at output stride 8, and the undilated ImageNet form at 32."""
    name = BACKBONE_FIXTURES[arch]
    path = ref_files(name, variant)
    model = build_model(arch, 19, pretrained=str(path)).eval()
    undilated = MODELS[arch](19, output_stride=32, aux=False).eval()
    assert load_backbone_weights(undilated, path) == "reference"
    x = inputs()["64x64"]
    errors: dict[str, float] = {}
    with torch.no_grad():
        _check(name, "c4_os8_64x64", model.backbone(x)["stage4"], errors)
        _check(name, "c4_os32_64x64", undilated.backbone(x)["stage4"], errors)
    print(f"\n{arch} backbone ({variant or 'no classifier'}): " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))


def test_backbone_directory_picks_the_file_per_architecture(tmp_path: Path, ref_files) -> None:
    folder = tmp_path / "weights"  # the released names: resnet18-imagenet.pth, mobilenetv2-imagenet.pth
    folder.mkdir()
    for name in ("backbone_resnet18_v1s", "backbone_mobilenetv2"):
        (folder / REFERENCE_FILE_NAMES[name]).symlink_to(ref_files(name))
    r18 = build_model("pspnet_r18", 19, pretrained=str(folder))
    mbv2 = build_model("deeplabv3_mbv2", 19, pretrained=str(folder))
    r18_state = fill_state_dict("backbone_resnet18_v1s")
    assert torch.equal(r18.backbone.layer3[1].conv2.weight, r18_state["layer3.1.conv2.weight"])
    mbv2_state = fill_state_dict("backbone_mobilenetv2")
    assert torch.equal(mbv2.backbone.features[17].conv[2].weight, mbv2_state["features.17.conv.6.weight"])
    with pytest.raises(FileNotFoundError, match="resnet101-imagenet.pth"):
        build_model("deeplabv3_r101", 19, pretrained=str(folder))


def _trainer_config(tmp_path: Path, teacher: Path, pretrained: Path, **over) -> TrainConfig:
    return TrainConfig().replace(**{
        **REFERENCE_PREPROCESSING, **REFERENCE_UPSAMPLING,
        "data.num_classes": 19, "data.image_size": 32, "data.crop_size": 32, "data.train_images": 4, "data.val_images": 2,
        "model.arch": "deeplabv3_r18", "model.pretrained": str(pretrained),
        "distill.method": "cwd", "distill.teacher_arch": "deeplabv3_r18", "distill.teacher_checkpoint": str(teacher),
        "optim.iterations": 1, "optim.batch_size": 2, "run.device": "cpu", "run.out_dir": str(tmp_path / "run"),
        "run.progress": False, **over})


def test_trainer_and_preflight_take_reference_files(tmp_path: Path, ref_files) -> None:
    """distill.teacher_checkpoint = a reference checkpoint and model.pretrained = a reference backbone
    file, as a study passes them: preflight accepts them, the trainer's teacher and student backbone
    reproduce the goldens."""
    teacher_file, backbone_file = ref_files("deeplabv3_resnet18"), ref_files("backbone_resnet18_v1s")
    cfg = _trainer_config(tmp_path, teacher_file, backbone_file)
    preflight_spec(StudySpec(name="reference_files", base=cfg))  # raises on any problem
    run = setup(cfg)
    errors: dict[str, float] = {}
    x = inputs()["65x97"]
    with torch.no_grad():
        _check("deeplabv3_resnet18", "out0_logits_65x97", run.teacher(x).logits, errors)
        run.student.eval()
        _check("backbone_resnet18_v1s", "c4_os8_64x64", run.student.backbone(inputs()["64x64"])["stage4"], errors)
    print(f"\ntrainer: {errors}")


def test_reference_files_need_reference_preprocessing(tmp_path: Path, ref_files) -> None:
    """Reference weights expect BGR minus the Caffe means: any other preprocessing is refused before
    anything runs, naming every field to set; torchvision-format weights refuse the reference's."""
    cfg = _trainer_config(tmp_path, ref_files("deeplabv3_resnet18"), ref_files("backbone_resnet18_v1s"),
                          **IMAGENET_PREPROCESSING)
    with pytest.raises(PreflightError) as err:
        preflight_spec(StudySpec(name="wrong_preprocessing", base=cfg))
    text = str(err.value)
    assert len(err.value.problems) == 2, text
    for field in ("distill.teacher_checkpoint=", "model.pretrained=", "data.channel_order='rgb' (needs 'bgr')",
                  "data.pixel_scale=255.0 (needs 1.0)", "data.mean_b=0.406 (needs 104.00698793)",
                  "set data.channel_order=bgr data.pixel_scale=1.0"):
        assert field in text, (field, text)
    with pytest.raises(ConfigError, match="expect other input preprocessing"):
        setup(cfg)  # the trainer checks too (a run started without the study layer)
    torchvision_state = {k: v for k, v in _torchvision_resnet18().items()}
    torch.save(torchvision_state, tmp_path / "tv.pth")
    tv_cfg = _trainer_config(tmp_path, ref_files("deeplabv3_resnet18"), tmp_path / "tv.pth",
                             **{"model.arch": "deeplabv3_tv_r18"})
    with pytest.raises(PreflightError, match=r"torchvision-format ImageNet backbone file .*data.channel_order='bgr' "
                                             r"\(needs 'rgb'\)"):
        preflight_spec(StudySpec(name="tv_backbone", base=tv_cfg))


def _torchvision_resnet18() -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


# ---------------------------------------------------------------- refusals


def _bad_files(tmp_path: Path, ref_files) -> dict[str, tuple[Path, str, str]]:
    """name -> (file, arch to load it as, expected message fragment)."""
    good = ref_files("deeplabv3_resnet18")
    state = torch.load(good, weights_only=True)
    files = {}
    trunc = tmp_path / "truncated.pth"
    data = good.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    files["truncated"] = (trunc, "deeplabv3_r18", "cannot be read as a torch.save file (truncated")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    files["not a state dict"] = (tmp_path / "list.pth", "deeplabv3_r18", "is not a state dict: it holds a list of 3 items")
    torch.save({"lr": 0.01, "epoch": 3}, tmp_path / "numbers.pth")
    files["not tensors"] = (tmp_path / "numbers.pth", "deeplabv3_r18", "is not a state dict of tensors")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")
    files["pickled module"] = (tmp_path / "module.pth", "deeplabv3_r18", "holds a pickled Linear object")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    files["module. prefix"] = (tmp_path / "ddp.pth", "deeplabv3_r18", "'module.' prefix of a DDP-wrapped model")
    files["other architecture"] = (good, "deeplabv3_r101", "It fits deeplabv3_r18 (with 19 classes)")
    files["other head"] = (good, "pspnet_r18", "unexpected keys: head.aspp.b0.0.weight")
    torch.save({k: v for k, v in state.items() if k != "head.aspp.b2.block.0.weight"}, tmp_path / "missing.pth")
    files["missing tensor"] = (tmp_path / "missing.pth", "deeplabv3_r18", "1 missing keys: head.aspp.b2.block.0.weight")
    return files


def test_files_that_do_not_fit_are_refused_naming_the_file(tmp_path: Path, ref_files) -> None:
    for what, (path, arch, fragment) in _bad_files(tmp_path, ref_files).items():
        with pytest.raises(ValueError) as err:
            load_teacher(path, arch=arch, num_classes=19, device=CPU, data=reference_data())
        assert fragment in str(err.value) and str(path) in str(err.value), (what, str(err.value))
    with pytest.raises(ValueError, match=r"predicts 19 classes, but the dataset has 150"):
        load_teacher(ref_files("deeplabv3_resnet18"), arch="deeplabv3_r18", num_classes=150, device=CPU)


def test_preflight_lists_every_bad_teacher_before_ray(tmp_path: Path, ref_files) -> None:
    bad = _bad_files(tmp_path, ref_files)
    base = _trainer_config(tmp_path, ref_files("deeplabv3_resnet18"), ref_files("backbone_resnet18_v1s"))
    variants = [{"distill.teacher_checkpoint": str(p), "distill.teacher_arch": a} for p, a, _ in bad.values()]
    variants.append({"data.num_classes": 150})  # the good file, but 19 classes against 150
    with pytest.raises(PreflightError) as err:
        preflight_spec(StudySpec(name="bad_teachers", base=base, variants=variants))
    text = str(err.value)
    assert len(err.value.problems) == len(variants), text
    for _, (path, _, fragment) in bad.items():
        assert fragment in text and str(path) in text, (fragment, text)
    assert "predicts 19 classes, but the dataset has 150" in text


def test_backbone_files_that_do_not_fit(tmp_path: Path, ref_files) -> None:
    r18 = ref_files("backbone_resnet18_v1s")
    model = build_model("deeplabv3_tv_r18", 19)
    with pytest.raises(ValueError, match=r"reference deep-stem ResNet .* it fits deeplabv3_r18"):
        load_backbone_weights(model, r18)
    with pytest.raises(ValueError, match=r"whole segmentation model's state dict"):
        load_backbone_weights(build_model("deeplabv3_r18", 19), ref_files("deeplabv3_resnet18"))
    mbv2 = torch.load(ref_files("backbone_mobilenetv2"), weights_only=True)
    del mbv2["features.5.conv.3.weight"]
    torch.save(mbv2, tmp_path / "mbv2_missing.pth")
    model = build_model("deeplabv3_mbv2", 19)
    before = model.backbone.features[0][0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"1 missing keys: features\.5\.conv\.3\.weight"):
        load_backbone_weights(model, tmp_path / "mbv2_missing.pth")
    assert torch.equal(model.backbone.features[0][0].weight, before)  # never a partial load
    cfg = _trainer_config(tmp_path, ref_files("deeplabv3_resnet18"), r18, **{"model.arch": "deeplabv3_tv_r18"})
    with pytest.raises(PreflightError, match=r"model\.pretrained=.*resnet18-imagenet\.pth.* does not fit "
                                             r"model\.arch='deeplabv3_tv_r18'"):
        preflight_spec(StudySpec(name="bad_backbone", base=cfg))


def test_identify_reference_arch(ref_files) -> None:
    for arch, name in SEG_FIXTURES.items():
        state = torch.load(ref_files(name), weights_only=True)
        assert identify_reference_arch(state) == [arch]


# ---------------------------------------------------------------- checkpoints out


@pytest.mark.parametrize("arch", sorted(SEG_FIXTURES))
def test_export_back_to_the_reference_is_bit_identical(arch: str, tmp_path: Path, ref_files) -> None:
    path = ref_files(SEG_FIXTURES[arch])
    model, _ = load_model(path, arch=arch, aux=True)
    out = export_reference(model, tmp_path / "back.pth")
    original, back = torch.load(path, weights_only=True), torch.load(out, weights_only=True)
    assert list(back) == list(original)
    for key, value in original.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_cli_export_reference_and_refusal(tmp_path: Path, ref_files, capsys: pytest.CaptureFixture[str]) -> None:
    path = ref_files("deeplabv3_mobilenetv2")
    out = tmp_path / "mbv2.pth"
    assert cli_main(["export", str(path), "--to", "reference", "--out", str(out), "--arch", "deeplabv3_mbv2"]) == 0
    original, back = torch.load(path, weights_only=True), torch.load(out, weights_only=True)
    assert list(back) == list(original) and all(torch.equal(back[k], v) for k, v in original.items())
    capsys.readouterr()
    assert cli_main(["export", str(path), "--to", "reference", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not name its architecture" in err and "it fits deeplabv3_mbv2" in err
    cfg = TrainConfig().replace(**{"data.num_classes": 5})
    tiny = save_model_artifact(build_model("deeplabv3_tiny_r18", 5), cfg, tmp_path / "tiny" / "model.pt")
    assert cli_main(["export", str(tiny), "--to", "reference", "--out", str(tmp_path / "t.pth")]) == 2
    assert "has no counterpart in the reference code" in capsys.readouterr().err


_STANDALONE = r"""
import json, sys
import numpy as np
import torch
out = {}
for name, pt2, x in json.load(open(sys.argv[1])):
    ep = torch.export.load(pt2)
    with torch.no_grad():
        y = ep.module()(torch.from_numpy(np.load(x)))
    np.save(x + ".out.npy", y.numpy())
assert not any(m == "segdistill" or m.startswith("segdistill.") for m in sys.modules), "segdistill was imported"
print("ok")
"""


def test_standalone_program_runs_without_segdistill(tmp_path: Path, ref_files) -> None:
    """``segdistill export --to pt2`` of a reference checkpoint and of a segdistill model.pt; plain
    PyTorch (``python -I``, another directory) loads and runs them: the reference's evaluation
    (BGR preprocessing, align_corners=True) and segdistill's (the model's own config)."""
    jobs, expected = [], {}
    # 1. the reference DeepLabV3-R18: RGB [0, 255] in -> the golden evaluation
    ref_pt2 = tmp_path / "ref.pt2"
    assert cli_main(["export", str(ref_files("deeplabv3_resnet18")), "--to", "pt2", "--out", str(ref_pt2),
                     "--arch", "deeplabv3_r18"]) == 0
    meta = read_program_metadata(ref_pt2)
    assert meta["preprocessing"]["channel_order"] == "bgr" and meta["upsampling"]["align_corners"] is True
    bgr_mean = torch.tensor([104.00698793, 116.66876762, 122.67891434]).view(1, 3, 1, 1)
    for size, x in inputs().items():
        rgb = (x + bgr_mean).flip(1)  # the image the golden input was preprocessed from
        np.save(tmp_path / f"ref_{size}.npy", rgb.numpy())
        jobs.append(("ref", str(ref_pt2), str(tmp_path / f"ref_{size}.npy")))
    # 2. a segdistill tiny model (ImageNet RGB preprocessing, align_corners=False)
    torch.manual_seed(0)
    cfg = TrainConfig().replace(**{"data.num_classes": 5, "model.arch": "pspnet_tiny_r18"})
    tiny = build_model("pspnet_tiny_r18", 5).eval()
    tiny_file = save_model_artifact(tiny, cfg, tmp_path / "tiny" / "model.pt")
    tiny_pt2 = tmp_path / "tiny.pt2"
    assert cli_main(["export", str(tiny_file), "--to", "pt2", "--out", str(tiny_pt2)]) == 0
    image = torch.rand(2, 3, 70, 90) * 255
    np.save(tmp_path / "tiny.npy", image.numpy())
    jobs.append(("tiny", str(tiny_pt2), str(tmp_path / "tiny.npy")))
    prep = build_datasets(cfg.data)[1].transform.preprocessing  # what the trained model was fed
    with torch.no_grad():
        expected["tiny"] = upsample_logits(tiny(torch.stack([prep(i) for i in image])).logits, (70, 90)).numpy()
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    script = tmp_path / "standalone.py"
    script.write_text(_STANDALONE)
    run = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "jobs.json")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
    for size in inputs():
        y = torch.from_numpy(np.load(tmp_path / f"ref_{size}.npy.out.npy"))
        assert y.shape[-2:] == inputs()[size].shape[-2:]
        ref = golden("deeplabv3_resnet18")[f"eval_pred_{size}"]
        allowed = golden_index()["models"]["deeplabv3_resnet18"]["arrays"][f"eval_pred_{size}"]["num_pixels_margin_below_1e-4"]
        assert int((y.argmax(1).numpy() != ref).sum()) <= allowed
        info = golden_index()["models"]["deeplabv3_resnet18"]["arrays"][f"eval_pred_{size}"]
        assert float(y.double().sum()) == pytest.approx(info["upsampled_logits_sum"], rel=1e-4, abs=1e-2)
        assert float(y.double().square().sum()) == pytest.approx(info["upsampled_logits_sumsq"], rel=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "tiny.npy.out.npy"), expected["tiny"], rtol=0,
                               atol=1e-5 * float(np.abs(expected["tiny"]).max()))


# ---------------------------------------------------------------- preprocessing and presets


def test_reference_preprocessing_is_bgr_minus_the_caffe_means() -> None:
    """x[c] = pixel_BGR[c] - mean_BGR[c], no std, no /255, bit for bit the reference's numpy arithmetic
    (a float32 image minus a float64 mean, rounded once to float32)."""
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8, generator=g)  # RGB
    ours = REFERENCE(image)
    bgr = image.numpy()[::-1].astype(np.float32)
    ref = (bgr - np.array([104.00698793, 116.66876762, 122.67891434]).reshape(3, 1, 1)).astype(np.float32)
    assert ours.dtype == torch.float32 and np.array_equal(ours.numpy(), ref)  # bit for bit
    assert torch.equal(REFERENCE.invert(ours), image)
    data = reference_data(image_size=24, crop_size=24, val_images=2)
    _, val, _ = build_datasets(data)
    src = val.source.load(0)[0]
    assert torch.equal(val[0][0], REFERENCE(src))


def test_paper_preset_uses_the_reference_conventions_and_rows_record_them(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from segdistill.results import read_trials, record_from_fit, write_trial

    paper = get_preset("paper", data_root="/data", pretrained="/weights", teacher_checkpoint="/w/t.pth")
    flat = paper.base.to_flat()
    assert {k: flat[k] for k in REFERENCE_PREPROCESSING} == REFERENCE_PREPROCESSING
    assert {k: flat[k] for k in REFERENCE_UPSAMPLING} == REFERENCE_UPSAMPLING
    assert flat["model.pretrained"] == "/weights" and flat["distill.teacher_checkpoint"] == "/w/t.pth"
    assert flat["distill.teacher_arch"] == "deeplabv3_r101"
    demo = get_preset("demo").base.to_flat()
    assert {k: demo[k] for k in IMAGENET_PREPROCESSING} == IMAGENET_PREPROCESSING  # demo/smoke unchanged
    assert not any(demo[k] for k in REFERENCE_UPSAMPLING)
    result = SimpleNamespace(config=paper.base, best_miou=0.3, final_miou=0.3, pixel_acc=0.7, per_class=[], curves=[],
                             params=1, flops=1.0, wall_time_s=1.0, images_per_s=1.0, device="cpu", iterations_done=1,
                             checkpoint_dir=None, model_path=None, stopped_early=False)
    write_trial(tmp_path, record_from_fit(result, study="paper", trial_id="t0"))
    row = read_trials(tmp_path).iloc[0]
    assert row["data.channel_order"] == "bgr" and row["data.mean_b"] == pytest.approx(104.00698793)
    assert row["model.ce_align_corners"] and row["model.aux_align_corners"] and row["model.eval_align_corners"]


def test_figures_show_the_rgb_image_under_bgr_preprocessing(tmp_path: Path) -> None:
    """collect_extras inverts the configured preprocessing: the sample is the source image."""
    cfg = TrainConfig().replace(**{**REFERENCE_PREPROCESSING, "data.image_size": 32, "data.crop_size": 32,
                                   "data.num_classes": 5, "data.train_images": 4, "data.val_images": 2,
                                   "optim.iterations": 1, "optim.batch_size": 2, "run.sample_images": 1,
                                   "run.device": "cpu", "run.progress": False, "run.out_dir": str(tmp_path)})
    run = setup(cfg)
    _, samples = collect_extras(run)
    src = run.val_ds.source.load(0)[0]
    assert np.array_equal(samples[0]["image"], src.permute(1, 2, 0).numpy())


def test_teacher_recipe_keeps_a_pretrained_directory(tmp_path: Path) -> None:
    """A directory of reference ImageNet files serves the zoo teacher too (resnet101-imagenet.pth);
    a single file is the student's backbone only."""
    from segdistill.study import TeacherRecipe

    recipe = TeacherRecipe("deeplabv3_r101")
    student = TrainConfig().replace(**{"model.arch": "deeplabv3_r18", "model.pretrained": str(tmp_path)})
    assert recipe.config_for(student).model.pretrained == str(tmp_path)
    single = student.replace(**{"model.pretrained": str(tmp_path / "resnet18-imagenet.pth")})
    assert recipe.config_for(single).model.pretrained == ""


def test_cli_train_preset_paper_needs_a_data_root(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", "--preset", "paper", "--set", "optim.iterations=1"]) == 2
    assert "needs --data-root" in capsys.readouterr().err


def test_cli_evaluate_a_reference_checkpoint(tmp_path: Path, ref_files, capsys: pytest.CaptureFixture[str]) -> None:
    """``segdistill evaluate`` scores a reference file with the config's evaluation, after checking
    its preprocessing (refused without the reference's)."""
    path = str(ref_files("psp_resnet18"))
    small = ["data.num_classes=19", "data.image_size=32", "data.crop_size=32", "data.train_images=2",
             "data.val_images=2", "run.device=cpu", f"run.out_dir={tmp_path}"]
    reference = [f"{k}={v}" for k, v in {**REFERENCE_PREPROCESSING, **REFERENCE_UPSAMPLING}.items()]
    assert cli_main(["evaluate", path, "--arch", "pspnet_r18", "--set", *small, *reference]) == 0
    out = capsys.readouterr().out
    assert "pspnet_r18 on synthetic val (2 images, eval_align_corners=True): mIoU" in out
    assert cli_main(["evaluate", path, "--arch", "pspnet_r18", "--set", *small]) == 2
    assert "expect other input preprocessing" in capsys.readouterr().err
