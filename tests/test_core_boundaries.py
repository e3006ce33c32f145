"""The core never imports Ray, and data-parallel training works without it (torch.distributed, gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def test_core_does_not_import_ray():
    code = ("import sys, segdistill, segdistill.config, segdistill.losses, segdistill.models, segdistill.data, "
            "segdistill.metrics, segdistill.train, segdistill.results, segdistill.summary, segdistill.cli; "
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"core imported Ray: {proc.stdout} {proc.stderr[-2000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        from segdistill.config import TrainConfig
        from segdistill.train import setup, train

        cfg = TrainConfig().replace(**{
            "data.num_classes": 5, "data.image_size": 48, "data.crop_size": 40, "data.train_images": 8,
            "data.val_images": 5, "optim.batch_size": 4, "optim.iterations": 3, "run.eval_every": 3,
            "run.out_dir": out, "run.progress": False, "run.device": "cpu", "model.arch": "deeplabv3_tiny_r18",
        })
        events = []
        run = setup(cfg)
        res = train(run, [type("CB", (), {"on_eval": lambda self, e: events.append(e)})()])
        weights = sum(float(p.detach().double().sum()) for p in run.student.parameters())
        queue.put((rank, res.final_miou, events[-1].checkpoint_dir, res.iterations_done, weights))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_data_parallel_fit(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tmp_path), queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a DDP worker hung"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results = dict((r[0], r[1:]) for r in (queue.get(timeout=5) for _ in range(2)))
    assert results[0][0] == results[1][0], "ranks disagree on the all-reduced mIoU"
    assert results[0][1] == str(tmp_path / "checkpoint") and results[1][1] is None  # rank 0 checkpoints
    assert results[0][2] == results[1][2] == 3
    assert results[0][3] == pytest.approx(results[1][3], rel=1e-6), "DDP replicas diverged"
    assert (tmp_path / "model.pt").is_file()
