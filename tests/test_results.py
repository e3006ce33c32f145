"""segdistill.results: the Parquet store (round trips, schema version, atomic writes, readers)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from segdistill import results as rs
from segdistill.config import TrainConfig
from segdistill.results import (Embeddings, EmptyResultsWarning, SchemaVersionError, TrialRecord, decode_sample,
                                embedding_matrix, git_sha, read_curves, read_joined, read_per_class, read_table,
                                read_trials, record_from_fit, write_trial)

CFG = TrainConfig().replace(**{"distill.method": "hwd", "distill.teacher_arch": "deeplabv3_tiny_r101",
                               "distill.teacher_checkpoint": "t.pt", "distill.beta": 0.3, "model.arch": "deeplabv3_tiny_r18"})


def make_record(study: str = "s1", trial_id: str = "t1", *, extras: bool = True, miou: float = 0.5) -> TrialRecord:
    rng = np.random.default_rng(0)
    per_class = [dict(class_id=0, class_name="road", iou=0.9, acc=0.95, pixels=100, td=30.0, ntd=3.0),
                 dict(class_id=1, class_name="wall", iou=0.1, acc=0.2, pixels=0, td=0.0, ntd=0.0)]
    curves = [{"iteration": 10, "loss/total": 1.5, "loss/ce": 1.0, "loss/distill": 0.5, "lr": 0.01, "images_per_s": 8.0},
              {"iteration": 20, "loss/total": 1.2, "loss/ce": 0.9, "lr": 0.009},
              {"iteration": 20, "val/miou": miou}]
    emb = samples = None
    if extras:
        emb = Embeddings(features=rng.normal(size=(6, 3)), labels=[0, 0, 1, 1, 2, 2], tsne=rng.normal(size=(6, 2)))
        samples = [dict(index=7, image=rng.integers(0, 255, (4, 5, 3), dtype=np.uint8),
                        label=np.full((4, 5), 255), prediction=rng.integers(0, 3, (4, 5)))]
    return TrialRecord(study=study, trial_id=trial_id, status="completed", config=CFG.to_flat(),
                       metrics={"best_miou": miou, "params": 123, "device": "cpu", "role": "student", "group": "beta"},
                       per_class=per_class, curves=curves, embeddings=emb, samples=samples)


def test_round_trip_every_table(tmp_path):
    rec = make_record()
    paths = write_trial(tmp_path, rec)
    assert [p.parent.name for p in paths] == ["per_class", "curves", "embeddings", "samples", "trials"]
    assert all(p == tmp_path / "s1" / p.parent.name / "t1.parquet" for p in paths)

    trials = read_trials(tmp_path)
    assert len(trials) == 1
    row = trials.iloc[0]
    assert row["study"] == "s1" and row["trial_id"] == "t1" and row["status"] == "completed"
    for key, value in CFG.to_flat().items():  # dotted config columns, values preserved
        assert row[key] == value, key
    assert row["distill.beta"] == 0.3 and row["best_miou"] == 0.5 and row["group"] == "beta"

    pc = read_per_class(tmp_path)
    assert list(pc["class_name"]) == ["road", "wall"]
    assert pc["td_ntd"].iloc[0] == pytest.approx(10.0)
    assert math.isnan(pc["td_ntd"].iloc[1])  # 0/0 -> NaN, no crash
    assert set(pc[["study", "trial_id"]].drop_duplicates().itertuples(index=False)) == {("s1", "t1")}

    cv = read_curves(tmp_path)
    assert list(cv["iteration"]) == [10, 20, 20]
    assert math.isnan(cv["loss/distill"].iloc[1]) and cv["val/miou"].iloc[2] == 0.5

    emb = read_table(tmp_path, "embeddings")
    feats, labels = embedding_matrix(emb)
    np.testing.assert_allclose(feats, rec.embeddings.features, rtol=1e-6)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_allclose(emb[["tsne_x", "tsne_y"]].to_numpy(), rec.embeddings.tsne)

    smp = read_table(tmp_path, "samples")
    got = decode_sample(smp.iloc[0])
    assert smp["sample_index"].iloc[0] == 7
    np.testing.assert_array_equal(got["image"], rec.samples[0]["image"])
    np.testing.assert_array_equal(got["label"], 255)
    np.testing.assert_array_equal(got["prediction"], rec.samples[0]["prediction"])


def test_schema_version_in_metadata_and_newer_rejected(tmp_path):
    write_trial(tmp_path, make_record(extras=False))
    path = tmp_path / "s1" / "trials" / "t1.parquet"
    meta = pq.read_schema(path).metadata
    assert meta[b"segdistill.schema_version"] == str(rs.SCHEMA_VERSION).encode()
    assert meta[b"segdistill.study"] == b"s1" and meta[b"segdistill.table"] == b"trials"
    table = pq.read_table(path)
    newer = {**table.schema.metadata, b"segdistill.schema_version": str(rs.SCHEMA_VERSION + 1).encode()}
    pq.write_table(table.replace_schema_metadata(newer), path)
    with pytest.raises(SchemaVersionError, match="newer|upgrade"):
        read_trials(tmp_path)
    pq.write_table(table.replace_schema_metadata({}), path)
    with pytest.raises(SchemaVersionError, match="not a segdistill results file"):
        read_trials(tmp_path)


def test_version_1_files_stay_readable_and_name_their_miou_convention(tmp_path):
    """Schema 2 changed what mIoU means (mmseg convention); a version-1 trials file still reads, its
    rows marked miou_convention='labels-present' (their all-classes mIoU: NaN, not measured)."""
    rec = make_record(extras=False)
    write_trial(tmp_path, rec)
    path = tmp_path / "s1" / "trials" / "t1.parquet"
    assert read_trials(tmp_path)["miou_convention"].tolist() == [rs.MIOU_CONVENTION]
    table = pq.read_table(path)
    table = table.drop([c for c in ("miou_convention", "final_miou_all_classes") if c in table.column_names])
    old = {**table.schema.metadata, b"segdistill.schema_version": b"1"}
    pq.write_table(table.replace_schema_metadata(old), path)
    got = read_trials(tmp_path)
    assert got["miou_convention"].tolist() == [rs.MIOU_CONVENTION_V1]
    assert got["best_miou"].tolist() == read_trials(tmp_path)["best_miou"].tolist()


def test_version_2_files_get_the_reported_metric_from_their_curves(tmp_path):
    """Schema 3 added ``last_evals_miou`` (catalog.REPORTED_METRIC) to ``trials``; a version-2 trials
    file reads with the value its own curves part gives (the mean of its last 2 evaluations), and NaN
    when that part is gone."""
    rec = make_record(extras=False)
    rec.curves = [{"iteration": 10, "val/miou": 0.2}, {"iteration": 15, "loss/total": 1.0},
                  {"iteration": 20, "val/miou": 0.3}, {"iteration": 30, "val/miou": 0.5}]
    write_trial(tmp_path, rec)
    path = tmp_path / "s1" / "trials" / "t1.parquet"
    table = pq.read_table(path)
    assert "last_evals_miou" not in table.column_names  # a record not built from a FitResult carries none
    old = {**table.schema.metadata, b"segdistill.schema_version": b"2"}
    pq.write_table(table.replace_schema_metadata(old), path)
    assert read_trials(tmp_path)["last_evals_miou"].tolist() == pytest.approx([0.4])
    (tmp_path / "s1" / "curves" / "t1.parquet").unlink()
    assert math.isnan(read_trials(tmp_path)["last_evals_miou"].iloc[0])


def test_atomic_write_leaves_no_temp_file(tmp_path):
    write_trial(tmp_path, make_record())
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and (p.name.startswith(".") or p.suffix == ".tmp")]
    assert leftovers == []


def test_crash_mid_write_leaves_no_readable_partial_file(tmp_path, monkeypatch):
    real = pq.write_table

    def half_write_then_crash(table, where, **kw):
        where.write(b"PAR1 truncated garbage")  # partial bytes hit the temp file
        raise OSError("disk full")

    monkeypatch.setattr(rs.pq, "write_table", half_write_then_crash)
    with pytest.raises(OSError, match="disk full"):
        write_trial(tmp_path, make_record())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # temp removed, nothing renamed into place
    monkeypatch.setattr(rs.pq, "write_table", real)

    # a writer killed before cleanup leaves a temp file: readers must skip it
    write_trial(tmp_path, make_record(trial_id="ok"))
    stray = tmp_path / "s1" / "trials" / ".t2.parquet.deadbeef.tmp"
    stray.write_bytes(b"PAR1 half written")
    (tmp_path / "s1" / "trials" / ".hidden.parquet").write_bytes(b"junk")
    assert list(read_trials(tmp_path)["trial_id"]) == ["ok"]


def test_crash_between_tables_hides_trial_from_joins(tmp_path, monkeypatch):
    real = rs._write_atomic

    def fail_on_trials(path, table):
        if path.parent.name == "trials":
            raise OSError("killed")
        real(path, table)

    monkeypatch.setattr(rs, "_write_atomic", fail_on_trials)
    with pytest.raises(OSError):
        write_trial(tmp_path, make_record(extras=False))
    monkeypatch.setattr(rs, "_write_atomic", real)
    assert len(read_per_class(tmp_path)) == 2  # orphan rows exist ...
    assert read_joined(tmp_path, "per_class").empty  # ... but the trials-last order keeps them out of joins


def test_corrupt_part_file_is_skipped_with_warning_or_raises(tmp_path):
    write_trial(tmp_path, make_record(extras=False))
    (tmp_path / "s1" / "trials" / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.warns(rs.CorruptResultWarning, match="bad.parquet"):
        df = read_trials(tmp_path)
    assert list(df["trial_id"]) == ["t1"]
    with pytest.raises(rs.ResultsError, match="bad.parquet"):
        read_trials(tmp_path, on_error="raise")


def test_several_studies_and_join(tmp_path):
    write_trial(tmp_path, make_record("alpha", "a1", miou=0.4))
    write_trial(tmp_path, make_record("alpha", "a2", extras=False, miou=0.45))
    rec = make_record("beta", "b1", extras=False, miou=0.6)
    rec.curves = [{"iteration": 5, "loss/total": 2.0, "loss/mgd": 0.3}]  # other method, other loss terms
    write_trial(tmp_path, rec)
    trials = read_trials(tmp_path)
    assert sorted(trials["trial_id"]) == ["a1", "a2", "b1"]
    assert sorted(read_trials(tmp_path, study="beta")["trial_id"]) == ["b1"]
    assert sorted(read_trials(tmp_path, study=["alpha"])["trial_id"]) == ["a1", "a2"]
    curves = read_curves(tmp_path)
    assert {"loss/mgd", "loss/distill", "val/miou"} <= set(curves.columns)
    assert curves.loc[curves["trial_id"] == "a1", "loss/mgd"].isna().all()
    joined = read_joined(tmp_path, "curves")
    assert len(joined) == len(curves)
    assert {"distill.beta", "best_miou", "images_per_s", "status"} <= set(joined.columns)
    assert joined.loc[joined["trial_id"] == "b1", "best_miou"].unique().tolist() == [0.6]
    pc = read_joined(tmp_path, "per_class", study="alpha")
    assert set(pc["trial_id"]) == {"a1", "a2"} and (pc["model.arch"] == "deeplabv3_tiny_r18").all()


def test_rewrite_replaces_and_drops_stale_optional_tables(tmp_path):
    write_trial(tmp_path, make_record())
    write_trial(tmp_path, make_record(extras=False, miou=0.7))
    assert read_trials(tmp_path)["best_miou"].tolist() == [0.7]
    assert not (tmp_path / "s1" / "embeddings" / "t1.parquet").exists()


def test_empty_and_missing_roots(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_trials(tmp_path / "nope")
    with pytest.warns(EmptyResultsWarning, match="no 'curves' results"):
        df = read_curves(tmp_path)
    assert df.empty and list(df.columns) == ["study", "trial_id"]
    with pytest.raises(ValueError, match="unknown results table"):
        read_table(tmp_path, "bogus")


def test_empty_per_class_and_curves(tmp_path):
    write_trial(tmp_path, TrialRecord(study="s", trial_id="failed1", status="failed", config=CFG.to_flat()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_per_class(tmp_path).empty and read_curves(tmp_path).empty
    assert read_trials(tmp_path)["status"].tolist() == ["failed"]


@pytest.mark.parametrize("bad", ["", "../x", ".hidden", "a/b", "x.tmp"])
def test_unsafe_names_rejected(bad):
    with pytest.raises(rs.ResultsError):
        TrialRecord(study="s", trial_id=bad)


def test_config_metric_collision_rejected():
    with pytest.raises(rs.ResultsError, match="collide"):
        TrialRecord(study="s", trial_id="t", config={"distill.beta": 0.1}, metrics={"distill.beta": 1})
    with pytest.raises(rs.ResultsError, match="dotted"):
        TrialRecord(study="s", trial_id="t", config={"beta": 0.1})


def test_git_sha_never_raises(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGDISTILL_GIT_SHA", raising=False)
    assert git_sha(tmp_path) == "unknown"  # not a git repository
    assert git_sha(tmp_path / "does-not-exist") == "unknown"
    assert isinstance(git_sha(), str)
    monkeypatch.setenv("SEGDISTILL_GIT_SHA", "cafe123")
    assert git_sha() == "cafe123"


def test_record_from_fit(tmp_path):
    result = SimpleNamespace(
        config=CFG, iterations_done=40, best_miou=0.42, final_miou=0.41, pixel_acc=0.8,
        per_class=[dict(class_id=0, class_name="road", iou=0.9, acc=0.9, pixels=10, td=2.0, ntd=1.0)],
        curves=[{"iteration": 10, "loss/total": 1.0, "lr": 0.01}, {"iteration": 40, "val/miou": 0.42}],
        params=1000, flops=2.5e9, wall_time_s=12.0, images_per_s=30.0, device="cpu",
        checkpoint_dir=Path("/tmp/ckpt"), stopped_early=True)
    rec = record_from_fit(result, study="st", trial_id="tr_00001", tags={"group": "beta", "role": "student"})
    assert rec.status == "early_stopped"
    assert rec.config["distill.beta"] == 0.3
    assert rec.metrics["best_miou"] == 0.42 and rec.metrics["group"] == "beta" and rec.metrics["iterations_done"] == 40
    assert rec.metrics["checkpoint_dir"] == "/tmp/ckpt" and isinstance(rec.metrics["git_sha"], str)
    assert math.isnan(rec.metrics["last_evals_miou"])  # the namespace has no such field: NaN, not a crash
    write_trial(tmp_path, rec)
    row = read_trials(tmp_path).iloc[0]
    assert row["status"] == "early_stopped" and row["flops"] == 2.5e9 and row["distill.beta"] == 0.3
    teacher = record_from_fit(result, study="st", trial_id="teach", status="completed", tags={"role": "teacher"})
    assert teacher.status == "completed" and teacher.metrics["role"] == "teacher"
