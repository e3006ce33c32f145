"""The command line: info, config errors, and a tiny end-to-end distill run (smoke preset of the CLI)."""

from __future__ import annotations

import json

import pytest

from segdistill.cli import main, parse_overrides
from segdistill.config import ConfigError

TINY = ["data.num_classes=5", "data.image_size=48", "data.crop_size=40", "data.train_images=8",
        "data.val_images=4", "optim.batch_size=2", "run.progress=false", "run.device=cpu"]


def test_info_lists_registries(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"hwd", "cwd", "kd", "none"} <= set(info["methods"])
    assert "synthetic" in info["datasets"] and "deeplabv3_r18" in info["models"]
    assert "distill.beta" in info["config_keys"]


def test_overrides_are_typed_and_checked(capsys):
    assert parse_overrides(["distill.beta=0.3", "run.amp=false", "optim.iterations=5", "model.arch=x"]) == {
        "distill.beta": 0.3, "run.amp": False, "optim.iterations": 5, "model.arch": "x"}
    with pytest.raises(ConfigError):
        parse_overrides(["distill.beta"])
    assert main(["train", "--set", "distill.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_distill_smoke(tmp_path, capsys):
    rc = main(["distill", "--out", str(tmp_path), "--iterations", "2", "--teacher-iterations", "2",
               "--classes", "5", "--methods", "none", "hwd", "--set", *TINY])
    assert rc == 0
    out = capsys.readouterr().out
    assert "teacher" in out and "student hwd" in out and "summary" in out
    assert (tmp_path / "teacher" / "model.pt").is_file() and (tmp_path / "student_hwd" / "model.pt").is_file()
