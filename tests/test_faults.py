"""Reliability (issue 8): faults injected for real, nothing lost, every bad input answered clearly.

``pytest -m faults`` runs this file. Each fault is real: processes are killed with signals (a Ray
Train worker, a study driver, a writer mid-write), a write is cut short by the kernel (RLIMIT_FSIZE
-> SIGXFSZ), a trial diverges numerically, files are written in old schema versions, data files are
truncated or hold bad ids. Ray runs on loopback only; every loop is bounded in count and time.
docs/ERRORS.md is the table of these faults and bad inputs with the exact messages.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_helpers import DRIVER_ITERATIONS, DRIVER_SAMPLES, DRIVER_STUDY, fit_config, log_space  # noqa: E402
from ray_helpers import REPO, ray_env, tiny_base, two_node_cluster  # noqa: E402

from segdistill import results as rs  # noqa: E402
from segdistill.config import ConfigError, DataConfig, TrainConfig, param_owners  # noqa: E402
from segdistill.results import SchemaVersionError, read_curves, read_joined, read_trials, write_trial  # noqa: E402
from segdistill.study import Resources, StudySpec  # noqa: E402
from segdistill.study.preflight import PreflightError, check_resources, preflight_spec  # noqa: E402

pytestmark = pytest.mark.faults
HELPER = str(REPO / "tests" / "fault_helpers.py")


def _run_helper(*args: str, limit_bytes: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run fault_helpers.py in a child process; ``limit_bytes`` caps the size of any file it writes
    (RLIMIT_FSIZE): the kernel kills it with SIGXFSZ in the middle of the write that crosses it."""
    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**ray_env(), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, HELPER, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)


# =============================================================================================
# Bad input: answered before any Ray job starts, naming the field, the value and what is allowed
# =============================================================================================
HWD_STUDENT = {"distill.method": "hwd", "distill.teacher_arch": "deeplabv3_tiny_r18", "distill.teacher_checkpoint": "t.pt"}
BAD_CONFIGS = [
    ({"distill.beta": 0.0}, r"distill\.beta must be in \(0, 1\), got 0\.0"),
    ({"distill.beta": 1.0}, r"distill\.beta must be in \(0, 1\), got 1\.0"),
    ({"distill.beta": 1.5}, r"distill\.beta must be in \(0, 1\), got 1\.5"),
    ({"distill.sigma": 0.0}, r"distill\.sigma must be > 0, got 0\.0"),
    ({"distill.sigma": -1.0}, r"distill\.sigma must be > 0, got -1\.0"),
    ({"distill.tau": 0.0}, r"distill\.tau must be > 0, got 0\.0"),
    ({"distill.tau": -2.0}, r"distill\.tau must be > 0, got -2\.0"),
    ({"distill.beta": float("nan")}, r"distill\.beta must be a finite number, got nan"),
    ({"distill.method": "hwdd"}, r"distill\.method must be one of \('none', .*'hwd'.*\), got 'hwdd'"),
    ({"model.arch": "deeplabv3_r50"}, r"model\.arch: unknown model 'deeplabv3_r50'; known models: \[.*'deeplabv3_r18'"),
    ({"distill.teacher_arch": "r101"}, r"distill\.teacher_arch: unknown model 'r101'; known models: \[.*'deeplabv3_r101'"),
    ({"data.name": "cityscape"}, r"data\.name: unknown dataset 'cityscape'; known datasets: \[.*'cityscapes'.*'synthetic'\]"),
    ({"distill.bta": 0.1}, r"unknown config key 'distill\.bta' \(did you mean 'distill\.beta'\?\); distill fields are \[.*'beta'"),
]


@pytest.mark.parametrize("override,message", BAD_CONFIGS, ids=[next(iter(o)) + "=" + str(next(iter(o.values())))
                                                                for o, _ in BAD_CONFIGS])
def test_bad_config_values_are_refused_at_construction(override, message):
    # HWD's parameters are checked on an HWD config (on another method's they are foreign keys)
    student = HWD_STUDENT if any(param_owners(k.partition(".")[2]) for k in override) else {}
    with pytest.raises(ConfigError, match=message):
        TrainConfig().replace(**student, **override)
    # the same typo in a study is caught when the StudySpec is built, long before Ray
    with pytest.raises(ConfigError, match=message):
        StudySpec(name="s", base=tiny_base().replace(**student), grid={k: [v] for k, v in override.items()})


def _no_ray(monkeypatch):
    """Make any attempt to start or join Ray fail loudly: the checks must come first."""
    import ray

    def refuse(*a, **k):
        raise AssertionError("Ray was started although the study's input is invalid")

    monkeypatch.setattr(ray, "init", refuse)
    from segdistill.study import runtime

    monkeypatch.setattr(runtime.ray, "init", refuse)


def _empty_space(trial) -> dict:
    return {"distill.method": "none"}


def _bad_space(trial) -> dict:
    trial.suggest_float("distill.beta", 0.5, 1.5)  # a range that leaves (0, 1)
    return {"distill.method": "hwd"}


def test_empty_search_space_is_refused():
    with pytest.raises(ConfigError, match=r"StudySpec\.grid\['distill\.beta'\] = \[\]: the search space is empty"):
        StudySpec(name="s", base=tiny_base(), grid={"distill.beta": []})
    with pytest.raises(ConfigError, match=r"StudySpec\.variants is empty"):
        StudySpec(name="s", base=tiny_base(), variants=())
    with pytest.raises(PreflightError, match=r"StudySpec\.space='_empty_space' suggests no parameter"):
        preflight_spec(StudySpec(name="s", base=tiny_base(), search="optuna", space=_empty_space))


def _save_teacher(path: Path, arch: str = "deeplabv3_tiny_r18", classes: int = 6) -> Path:
    from segdistill.models import build_model
    from segdistill.train import save_model_artifact

    cfg = tiny_base().replace(**{"model.arch": arch, "data.num_classes": classes})
    return save_model_artifact(build_model(arch, classes), cfg, path)


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _cityscapes(root: Path, label_ids=(0, 7, 26, 33)) -> list[Path]:
    """A Cityscapes-layout fixture (2 train, 1 val images); returns the image paths."""
    images = []
    rng = np.random.default_rng(0)
    for split, city, n in (("train", "aachen", 2), ("val", "frankfurt", 1)):
        for k in range(n):
            stem = f"{city}_{k:06d}_000019"
            img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            _write_png(img, rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
            lab = np.zeros((16, 24), dtype=np.uint8)
            for i, v in enumerate(label_ids):
                lab[:, i * 24 // len(label_ids):(i + 1) * 24 // len(label_ids)] = v
            _write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lab)
            images.append(img)
    return images


def _city_spec(root: Path, **flat) -> StudySpec:
    base = tiny_base().replace(**{"data.name": "cityscapes", "data.root": str(root), "data.crop_size": 16, **flat})
    return StudySpec(name="bad", base=base)


def test_bad_data_and_teachers_are_refused_before_ray(tmp_path, monkeypatch):
    """Each bad input makes run_study raise PreflightError naming field, value and what is allowed,
    with Ray's init patched to fail: nothing is started, and the study directory is never created."""
    from segdistill.study import run_study

    _no_ray(monkeypatch)
    teacher = _save_teacher(tmp_path / "teacher6" / "model.pt")
    hwd = {"distill.method": "hwd", "distill.teacher_arch": "deeplabv3_tiny_r18", "distill.teacher_checkpoint": str(teacher)}
    missing = tmp_path / "nowhere"
    wrong_layout = tmp_path / "ade_layout"
    (wrong_layout / "ADEChallengeData2016" / "images" / "training").mkdir(parents=True)
    bad_ids = tmp_path / "bad_ids"
    _cityscapes(bad_ids, label_ids=(7, 26, 40))  # 40 is no Cityscapes labelId
    corrupt = tmp_path / "corrupt"
    img = _cityscapes(corrupt)[-1]  # the val image
    img.write_bytes(img.read_bytes()[: len(img.read_bytes()) // 3])  # truncated mid-file
    garbage = tmp_path / "garbage"
    img2 = _cityscapes(garbage)[0]
    img2.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    cases = [
        (StudySpec(name="bad", base=tiny_base().replace(**{**hwd, "data.num_classes": 5})),
         r"distill\.teacher_checkpoint='.*teacher6/model\.pt' does not fit this config \(distill\.teacher_arch="
         r"'deeplabv3_tiny_r18', data\.name='synthetic' with 5 classes\): ValueError: teacher checkpoint .* predicts "
         r"6 classes, but the dataset has 5"),
        (StudySpec(name="bad", base=tiny_base().replace(**{**hwd, "distill.teacher_arch": "pspnet_tiny_r18"})),
         r"does not fit this config .* holds architecture 'deeplabv3_tiny_r18', but distill\.teacher_arch is "
         r"'pspnet_tiny_r18'"),
        (StudySpec(name="bad", base=tiny_base().replace(**{**hwd, "distill.teacher_checkpoint": str(missing / "t.pt")})),
         r"distill\.teacher_checkpoint='.*nowhere/t\.pt': no such file"),
        (_city_spec(missing), r"data\.name='cityscapes' data\.root='.*nowhere': Cityscapes: data\.root .* is not a "
                              r"directory; expected it to hold leftImg8bit/\{train,val\}/<city>/\*_leftImg8bit\.png"),
        (_city_spec(wrong_layout), r"data\.root='.*ade_layout': expected Cityscapes images under .*leftImg8bit/train/"
                                   r"<city>/\*_leftImg8bit\.png; found none"),
        (_city_spec(bad_ids), r"data\.root='.*bad_ids': train item 0: Cityscapes: label .*aachen_000000_000019_gtFine_"
                              r"labelIds\.png holds ids \[40\] outside the allowed raw ids 0\.\.33, 255"),
        (_city_spec(corrupt), r"data\.root='.*corrupt': val item 0: image .*frankfurt_000000_000019_leftImg8bit\.png "
                              r"cannot be decoded .*the file is corrupt or not an image"),
        (_city_spec(garbage), r"train item 0: image .*aachen_000000_000019_leftImg8bit\.png cannot be decoded"),
        (StudySpec(name="bad", base=tiny_base(), search="optuna", space=_bad_space),
         r"StudySpec\.space suggests an invalid config: distill\.beta must be in \(0, 1\)"),
        (StudySpec(name="bad", base=tiny_base().replace(**{"model.pretrained": str(missing / "r18.pth")})),
         r"model\.pretrained='.*nowhere/r18\.pth': no such file"),
    ]
    for spec, message in cases:
        with pytest.raises(PreflightError, match=message):
            run_study(spec, results_root=tmp_path / "results", verbose=0)
        assert not (tmp_path / "results" / "bad").exists()
    # several problems at once are all listed
    spec = StudySpec(name="bad", base=tiny_base(), variants=(
        {**hwd, "data.num_classes": 5}, {"data.name": "cityscapes", "data.root": str(missing)}))
    with pytest.raises(PreflightError, match=r"found 2 problem\(s\)") as err:
        run_study(spec, results_root=tmp_path / "results", verbose=0)
    assert len(err.value.problems) == 2


def test_bad_data_found_mid_run_names_the_file(tmp_path):
    """The preflight samples a few items; a bad file it missed still fails loudly at training time
    (the reader checks every item), naming the file - never a silent ignore or a CUDA assert."""
    from segdistill.data import build_datasets
    from segdistill.data.validate import validate_data

    root = tmp_path / "city"
    _cityscapes(root)
    lab = root / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png"
    _write_png(lab, np.full((16, 24), 77, dtype=np.uint8))
    cfg = DataConfig(name="cityscapes", root=str(root), crop_size=16)
    validate_data(cfg, per_split=1)  # samples item 0 only: passes
    train, _, _ = build_datasets(cfg)
    with pytest.raises(ValueError, match=r"aachen_000001_000019_gtFine_labelIds\.png holds ids \[77\]"):
        train[1]

    class OutOfRange:  # a family whose labels are already train ids (e.g. a custom reader)
        def __len__(self):
            return 1

        def load(self, i):
            return torch.zeros(3, 8, 8, dtype=torch.uint8), torch.full((8, 8), 30, dtype=torch.int64)

    from segdistill.data.registry import SegmentationDataset
    from segdistill.data.transforms import EvalTransform

    ds = SegmentationDataset(OutOfRange(), EvalTransform(), train.info)
    with pytest.raises(ValueError, match=r"label ids \[30\] outside the class range 0\.\.18 \(ignore = 255\)"):
        ds[0]


def test_resources_beyond_the_cluster_are_refused():
    nodes = [{"CPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}]
    cluster = {"CPU": 6.0, "GPU": 1.0}
    assert check_resources({"CPU": 1, "GPU": 0}, 6, "train", cluster, nodes) == []
    (msg,) = check_resources({"CPU": 1, "GPU": 0}, 8, "train", cluster, nodes)
    assert msg == ("Resources(num_workers=8, cpus=1, gpus=0) with shape='train': one trial needs 8 CPU but the "
                   "cluster has 6 CPU in total; lower Resources.num_workers/cpus or add nodes")
    (msg,) = check_resources({"CPU": 1, "GPU": 1}, 2, "train", cluster, nodes)
    assert "one trial needs 2 GPU but the cluster has 1 GPU in total" in msg
    (msg,) = check_resources({"CPU": 5, "GPU": 0}, 1, "inline", cluster, nodes)
    assert "one worker needs 5 CPU but the largest node has 4 CPU; lower Resources.cpus" in msg
    (msg,) = check_resources({"CPU": 1, "GPU": 0.25}, 1, "inline", {"CPU": 6.0}, [{"CPU": 6.0}])
    assert "one trial needs 0.25 GPU but the cluster has 0 GPU in total" in msg


# =============================================================================================
# HWD weights: a property over arbitrary inputs
# =============================================================================================
def test_hwd_weights_finite_nonnegative_sum_to_c():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from segdistill.losses import hwd_weights

    @st.composite
    def cases(draw):
        b = draw(st.integers(1, 3))
        c = draw(st.integers(2, 12))
        h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        scale = draw(st.sampled_from([1.0, 10.0, 100.0]))
        s = draw(st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=b * c * h * w, max_size=b * c * h * w))
        t = draw(st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=b * c * h * w, max_size=b * c * h * w))
        kind = draw(st.sampled_from(["random", "all_ignore", "single_class", "mixed"]))
        H, W = 2 * h, 2 * w  # labels at input resolution, nearest-downsampled inside
        if kind == "random":
            labels = draw(st.lists(st.sampled_from([*range(c), 255]), min_size=b * H * W, max_size=b * H * W))
            labels = torch.tensor(labels).view(b, H, W)
        elif kind == "all_ignore":
            labels = torch.full((b, H, W), 255)
        elif kind == "single_class":
            labels = torch.full((b, H, W), draw(st.integers(0, c - 1)))
        else:  # image 0 all-ignore, the others single-class
            labels = torch.full((b, H, W), draw(st.integers(0, c - 1)))
            labels[0] = 255
        hp = {
            "tau": draw(st.floats(0.5, 8.0)), "mu": draw(st.floats(-5.0, 5.0)),
            "sigma": draw(st.floats(1e-3, 10.0)), "beta": draw(st.floats(1e-6, 1 - 1e-6)),
            "pixel_correction": draw(st.sampled_from(["n", "none"])),
            "weighting": draw(st.sampled_from(["smooth", "softmax"])), "tau_prime": draw(st.floats(0.05, 20.0)),
        }
        same = draw(st.booleans())  # student == teacher: every CD is 0 (zero std)
        s_t = torch.tensor(s).view(b, c, h, w) * scale
        t_t = s_t.clone() if same else torch.tensor(t).view(b, c, h, w) * scale
        return s_t, t_t, labels.long(), hp

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    @given(cases())
    def check(case):
        s, t, labels, hp = case
        w = hwd_weights(s, t, labels, **hp)
        c = s.shape[1]
        assert w.shape == (s.shape[0], c)
        assert torch.isfinite(w).all(), (w, hp)
        assert (w >= 0).all(), (w, hp)
        torch.testing.assert_close(w.double().sum(1), torch.full((s.shape[0],), float(c), dtype=torch.float64),
                                   rtol=1e-5, atol=1e-5 * c)

    check()


# =============================================================================================
# Writes interrupted by a real kill
# =============================================================================================
def test_parquet_write_killed_mid_way_leaves_previous_complete_version(tmp_path):
    """A writer killed by the kernel in the middle of a part file (RLIMIT_FSIZE -> SIGXFSZ, i.e. a
    write that cannot finish) leaves the previous complete version in place, and a partial temp
    file no reader opens. Then a writer SIGKILLed at random moments while rewriting in a loop:
    after every kill each part file a reader sees is complete."""
    res = str(tmp_path)
    out = _run_helper("write-parquet", "--results", res, "--trial", "t1", "--mb", "1", "--version", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    complete = tmp_path / "w" / "samples" / "t1.parquet"
    size = complete.stat().st_size
    out = _run_helper("write-parquet", "--results", res, "--trial", "t1", "--mb", "4", "--version", "2",
                      limit_bytes=size + (1 << 20))
    assert out.returncode == -signal.SIGXFSZ, (out.returncode, out.stderr[-2000:])
    partial = list((tmp_path / "w" / "samples").glob(".t1.parquet.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size == size + (1 << 20), "the kill did not land mid-write"
    with pytest.raises(pa.ArrowException):
        pq.read_table(partial[0])  # really torn
    trials = read_trials(tmp_path, on_error="raise")
    assert trials["version"].tolist() == [1], "the interrupted rewrite replaced the complete version"
    assert len(rs.read_table(tmp_path, "samples", on_error="raise")) == 1
    assert pq.read_metadata(complete).num_rows == 1 and complete.stat().st_size == size
    # the same cut as a failing write (EFBIG, like a full disk): the writer removes its temp file
    out = _run_helper("write-parquet", "--results", res, "--trial", "t1", "--mb", "4", "--version", "3",
                      "--xfsz", "error", limit_bytes=size + (1 << 20))
    assert out.returncode == 1 and "File too large" in out.stderr, out.stderr[-2000:]
    assert list((tmp_path / "w" / "samples").glob(".t1.parquet.*.tmp")) == partial
    assert read_trials(tmp_path, on_error="raise")["version"].tolist() == [1]

    # SIGKILL at random moments during a rewrite loop (bounded: 6 kills, 60 s)
    env = {**ray_env(), "PYTHONDONTWRITEBYTECODE": "1"}
    rng = np.random.default_rng(0)
    deadline = time.monotonic() + 60
    kills = 0
    while kills < 6 and time.monotonic() < deadline:
        proc = subprocess.Popen([sys.executable, HELPER, "write-parquet", "--results", res, "--trial", "t2",
                                 "--mb", "3", "--loop", "--version", str(100 * kills)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            proc.stdout.readline()  # one complete write done
            time.sleep(float(rng.uniform(0.0, 0.3)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        kills += 1
        for table in ("per_class", "curves", "samples", "trials"):
            for part in (tmp_path / "w" / table).glob("*.parquet"):
                tbl = pq.read_table(part)  # every visible part is a complete Parquet file
                assert tbl.num_rows >= 1 and rs.check_schema(tbl.schema.metadata, part) == rs.SCHEMA_VERSION
        df = read_trials(tmp_path, on_error="raise")
        assert sorted(df["trial_id"]) == ["t1", "t2"]
    assert kills == 6
    # every part of the last complete trials row is complete (the trials row is written last)
    joined = read_joined(tmp_path, "curves", on_error="raise")
    assert set(joined["trial_id"]) == {"t1", "t2"}


def test_checkpoint_write_killed_mid_way_resumes_from_previous(tmp_path):
    """fit killed by the kernel while writing its checkpoint (after the complete checkpoint at
    iteration 6 it lowers its own RLIMIT_FSIZE below the checkpoint's size, so the write at 9 gets
    SIGXFSZ mid-file): state.pt stays the complete checkpoint of 6; resuming continues from it,
    removes the dead writer's torn temp file, and the curves hold every iteration exactly once."""
    out = tmp_path / "run"
    r = _run_helper("fit", "--out", str(out), "--iterations", "12", "--checkpoint-every", "3", "--die-after", "6")
    assert r.returncode == -signal.SIGXFSZ, (r.returncode, r.stderr[-3000:])
    state = out / "checkpoint" / "state.pt"
    torn = list(state.parent.glob(".state.pt.*.tmp"))
    limit = int((out / "fsize_limit").read_text())
    assert len(torn) == 1 and torn[0].stat().st_size == limit, "the kill did not land mid-write"
    with pytest.raises((RuntimeError, EOFError, pickle.UnpicklingError)):
        torch.load(torn[0], weights_only=False)  # really torn
    assert torch.load(state, weights_only=False)["iteration"] == 6  # the previous complete checkpoint
    assert not (out / "model.pt").exists()

    # the same cut as a failing write (EFBIG, like a full disk): an error naming it, no temp file left
    out2 = tmp_path / "run2"
    r = _run_helper("fit", "--out", str(out2), "--iterations", "12", "--checkpoint-every", "3", "--die-after", "6",
                    "--xfsz", "error")
    assert r.returncode == 1, r.stderr[-2000:]
    assert re.search(r"OSError: writing .*run2/checkpoint/state\.pt failed \(.*\); \d+ MiB free on its filesystem "
                     r"- disk full or file-size limit\? The previous state\.pt, if any, is intact", r.stderr), r.stderr
    assert not list((out2 / "checkpoint").glob(".state.pt.*.tmp"))
    assert torch.load(out2 / "checkpoint" / "state.pt", weights_only=False)["iteration"] == 6

    from segdistill.train import fit

    result = fit(fit_config(str(out), 12, 3), resume=True)
    assert result.iterations_done == 12
    assert [c["iteration"] for c in result.curves] == list(range(1, 13))
    assert [int(e["iteration"]) for e in result.evals] == [3, 6, 9, 12]
    assert not list(state.parent.glob(".state.pt.*.tmp")), "the dead writer's torn temp file was left behind"


# =============================================================================================
# Results written by other schema versions
# =============================================================================================
def test_results_of_other_schema_versions_are_read_or_refused_clearly(tmp_path):
    from segdistill.results import TrialRecord

    write_trial(tmp_path, TrialRecord(study="s", trial_id="now", config={"distill.beta": 0.1},
                                      curves=[{"iteration": 1, "loss/total": 1.0}]))
    assert read_trials(tmp_path)["trial_id"].tolist() == ["now"]  # the current version reads
    part = tmp_path / "s" / "trials" / "now.parquet"
    table = pq.read_table(part)
    cases = [
        ({}, r"now\.parquet: no segdistill\.schema_version metadata; not a segdistill results file \(or one written "
             r"before results carried a schema version\); this segdistill reads results schema versions 1\.\.3"),
        ({b"segdistill.schema_version": b"0"}, r"now\.parquet: written with results schema version 0, older than 1: "
                                               r"this segdistill reads results schema versions 1\.\.3; re-run"),
        ({b"segdistill.schema_version": b"4"}, r"now\.parquet: written with results schema version 4, but this "
                                               r"segdistill reads results schema versions 1\.\.3; upgrade segdistill"),
        ({b"segdistill.schema_version": b"v1"}, r"bad schema version b'v1'"),
    ]
    for meta, message in cases:
        pq.write_table(table.replace_schema_metadata(meta), part)
        for on_error in ("warn", "raise"):  # never skipped silently, whatever on_error says
            with pytest.raises(SchemaVersionError, match=message):
                read_trials(tmp_path, on_error=on_error)
    # an older version still reads (version 1: its mIoU averaged labelled classes only, and says so)
    v1 = table.drop([c for c in ("miou_convention", "final_miou_all_classes", "effective_alpha") if c in table.column_names])
    pq.write_table(v1.replace_schema_metadata({**table.schema.metadata, b"segdistill.schema_version": b"1"}), part)
    assert read_trials(tmp_path)["miou_convention"].tolist() == ["labels-present"]


# =============================================================================================
# Ray: a diverging trial, a killed Train worker, resources the cluster lacks
# =============================================================================================
@pytest.fixture
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()  # ends the processes of this Ray, which the test process started


@pytest.mark.ray
def test_diverging_trial_recorded_and_worker_kill_restarts_from_checkpoint(tmp_path, local_ray):
    """One local Ray session (2 CPUs, no dashboard) for four faults: resources the cluster lacks,
    a diverging trial, a trial process killed between its final checkpoint and its report, and a
    Ray Train worker SIGKILLed mid-trial."""
    from segdistill.study import run_study

    # (1) resources the cluster lacks: refused once Ray is up, before any trial
    too_big = StudySpec(name="too_big", base=tiny_base(), shape="train", resources=Resources(cpus=1, num_workers=3))
    with pytest.raises(PreflightError, match=r"Resources\(num_workers=3, cpus=1, gpus=0\) with shape='train': one "
                                             r"trial needs 3 CPU but the cluster has 2 CPU in total"):
        run_study(too_big, results_root=tmp_path, verbose=0)
    with pytest.raises(PreflightError, match=r"one trial needs 1 GPU but the cluster has 0 GPU"):
        run_study(too_big.replace(resources=Resources(cpus=1, gpus=1)), results_root=tmp_path, verbose=0)
    assert not (tmp_path / "too_big" / "runs").exists()

    # (2) a trial that diverges (lr 1e6: NaN at iteration 3, after the checkpoint at 2) fails with
    # its reason and iteration; the other trial of the study completes
    spec = StudySpec(name="diverge", base=tiny_base(6, 2), grid={"optim.lr": [0.01, 1e6]})
    df = run_study(spec, results_root=tmp_path, verbose=0)
    by_lr = df.set_index("optim.lr")
    assert by_lr.loc[0.01, "status"] == "completed" and by_lr.loc[0.01, "iterations_done"] == 6
    bad = by_lr.loc[1e6]
    assert bad["status"] == "failed"
    assert bad["failed_at_iteration"] == 3
    assert re.fullmatch(r"NonFiniteLossError: non-finite loss at iteration 3: \{'loss/ce': nan.*\}", bad["error_reason"])
    assert bad["iterations_done"] == 2  # what its last checkpoint holds, recorded, not lost
    curves = read_curves(tmp_path, "diverge")
    assert sorted(curves[curves["trial_id"] == bad["trial_id"]]["iteration"]) == [2]

    # (3) the Optuna "penultimate value" gap, made deterministic: a trial process killed right
    # after writing its final checkpoint, before reporting it. Resumed, it has nothing left to
    # evaluate; Optuna must still receive the final value, equal to the Parquet row's.
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    run_dir = tmp_path / "final_unreported_run"
    r = _run_helper("fit", "--out", str(run_dir), "--iterations", "6", "--checkpoint-every", "3", "--kill-after", "6")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert torch.load(run_dir / "checkpoint" / "state.pt", weights_only=False)["iteration"] == 6
    spec = StudySpec(name="final_unreported", base=fit_config(str(run_dir), 6, 3), search="optuna", space=log_space,
                     variants=({"run.out_dir": str(run_dir)},))  # the trial continues the killed run
    df = run_study(spec, results_root=tmp_path, verbose=0)
    assert df["status"].tolist() == ["completed"] and df["resumed_from_iteration"].tolist() == [6]
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "final_unreported" / "optuna.journal")))
    (ot,) = optuna.load_study(study_name="final_unreported", storage=storage).trials
    assert ot.state == optuna.trial.TrialState.COMPLETE, ot.state
    assert math.isclose(ot.value, df["final_miou"].iloc[0], rel_tol=0, abs_tol=1e-12)

    # (4) a Ray Train worker SIGKILLed mid-trial: Train restarts it from the last checkpoint
    # (FailureConfig(max_failures=1)); the row says it restarted; curves are whole and unique
    total = 160
    spec = StudySpec(name="worker_kill", base=tiny_base(total, 40).replace(**{"run.log_every": 1}),
                     shape="train", resources=Resources(cpus=1, num_workers=1), max_failures=1)
    killed: dict = {}

    def killer() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for attempts in (tmp_path / "worker_kill" / "runs").glob("*/attempts.jsonl"):
                state = attempts.parent / "checkpoint" / "state.pt"
                if state.is_file():
                    line = attempts.read_text().splitlines()[0]
                    pid = json.loads(line)["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, at=torch.load(state, weights_only=False)["iteration"])
                    return
            time.sleep(0.01)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    df = run_study(spec, results_root=tmp_path, verbose=0)
    th.join(timeout=10)
    assert killed, "the worker was never killed"
    assert 0 < killed["at"] < total, killed
    row = df.iloc[0]
    assert row["status"] == "completed" and row["iterations_done"] == total, row.to_dict()
    assert row["restarts"] == 1 and row["resumed_from_iteration"] >= killed["at"], row.to_dict()
    attempts = [json.loads(x) for x in (Path(row["checkpoint_dir"]).parent / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and attempts[0]["pid"] == killed["pid"] and attempts[1]["pid"] != killed["pid"]
    its = read_curves(tmp_path, "worker_kill")["iteration"].tolist()
    assert sorted(its) == list(range(1, total + 1)), "duplicated or missing iterations in the curves"


# =============================================================================================
# Ray: the driver killed mid-study, then --resume
# =============================================================================================
def _started(run_dir: Path) -> float:
    """When the trial in ``run_dir`` first started (its attempts.jsonl), +inf if unknown."""
    with contextlib.suppress(Exception):
        return float(json.loads((run_dir / "attempts.jsonl").read_text().splitlines()[0])["time"])
    return math.inf


def _ray_pids(port: int) -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(Exception):
            if any(f"127.0.0.1:{port}" in a for a in (p.info["cmdline"] or [])):
                pids.append(p.pid)
    return pids


@pytest.mark.ray
def test_driver_killed_mid_study_resume_finishes_exactly_once(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    with two_node_cluster(cpus_per_node=1) as address:
        port = int(address.rsplit(":", 1)[1])
        cmd = [sys.executable, HELPER, "driver", "--results", str(tmp_path), "--address", address]
        env = {**ray_env(), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
        log = open(tmp_path / "driver1.log", "w")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        done: list[Path] = []
        in_flight: list[Path] = []
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                done = list((tmp_path / DRIVER_STUDY / "trials").glob("*.parquet"))
                runs = tmp_path / DRIVER_STUDY / "runs"
                # an unfinished trial with a checkpoint, started > 2.5 s ago (> 2 of Tune's 1 s
                # experiment snapshots, so the restored experiment knows it)
                in_flight = [d for d in (runs.iterdir() if runs.is_dir() else [])
                             if (d / "checkpoint" / "state.pt").is_file() and d.name not in {p.stem for p in done}
                             and time.time() - _started(d) > 2.5]
                if done and in_flight:
                    break
                time.sleep(0.2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            killed_at = time.time()
            proc.wait(timeout=30)
            log.close()
        assert done, (tmp_path / "driver1.log").read_text()[-3000:]
        assert len(done) < DRIVER_SAMPLES, "every trial finished before the kill; resume is not exercised"
        before = {p.name: p.stat().st_mtime_ns for p in done}
        time.sleep(3)  # the cluster notices the dead driver and ends its trial actors
        out = subprocess.run([*cmd, "--resume"], env=ray_env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

        df = read_trials(tmp_path, DRIVER_STUDY)
        assert len(df) == DRIVER_SAMPLES and set(df["status"]) == {"completed"}, df[["trial_id", "status"]]
        assert df["trial_id"].is_unique
        configs = df[["optim.lr", "optim.momentum"]].round(12).apply(tuple, axis=1)
        assert configs.is_unique, "a configuration was recorded twice"
        assert (df["iterations_done"] == DRIVER_ITERATIONS).all()
        # each trial in flight at the kill either continued from its checkpoint after the resume
        # (restarts >= 1) or - its actor outliving the dead driver for a few seconds - finished
        # on its own after the kill; the resume then reports its recorded result, never reruns it
        for d in in_flight:
            row = df[df["trial_id"] == d.name].iloc[0]
            finished_alone = (tmp_path / DRIVER_STUDY / "trials" / f"{d.name}.parquet").stat().st_mtime > killed_at
            assert (row["restarts"] >= 1 and row["resumed_from_iteration"] > 0) or (
                row["restarts"] == 0 and finished_alone), row.to_dict()
        for name, mtime in before.items():  # finished trials were not rerun or rewritten
            assert (tmp_path / DRIVER_STUDY / "trials" / name).stat().st_mtime_ns == mtime
        curves = read_curves(tmp_path, DRIVER_STUDY)
        for tid, g in curves.groupby("trial_id"):
            assert g["iteration"].is_unique and sorted(g["iteration"]) == list(range(20, DRIVER_ITERATIONS + 1, 20)), tid

        storage = JournalStorage(JournalFileBackend(str(tmp_path / DRIVER_STUDY / "optuna.journal")))
        study = optuna.load_study(study_name=DRIVER_STUDY, storage=storage)
        states = [t.state for t in study.trials]
        assert optuna.trial.TrialState.RUNNING not in states, states  # no orphans left open
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == DRIVER_SAMPLES, states
        # each COMPLETE Optuna trial is exactly one Parquet row, with that row's final value
        for t in complete:
            match = df[np.isclose(df["optim.lr"], t.params["optim.lr"], rtol=0, atol=1e-12)
                       & np.isclose(df["optim.momentum"], t.params["optim.momentum"], rtol=0, atol=1e-12)]
            assert len(match) == 1, t.params
            assert math.isclose(t.value, match["final_miou"].iloc[0], rel_tol=0, abs_tol=1e-9), (
                t.number, t.value, match["final_miou"].iloc[0])

        # nothing left behind on the cluster: no live actors, no placement groups
        import ray
        from ray.util.state import list_actors, list_placement_groups

        ray.init(address=address, logging_level="ERROR")
        try:  # this cluster's state API (without an address Ray picks the latest Ray on the machine)
            alive = list_actors(address=address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
            pgs = [p for p in list_placement_groups(address=address, raise_on_missing_output=False)
                   if p.state != "REMOVED"]
        finally:
            ray.shutdown()
        assert not alive, [(a.class_name, a.state) for a in alive]
        assert not pgs, pgs
    assert not _ray_pids(port), "Ray processes of the test cluster survived its teardown"
