"""Data parallelism on the 2-process gloo path: SyncBatchNorm for the student (``optim.sync_bn``) and
per-worker vs whole-batch coupling of the batch-coupled terms (``distill.batch_coupling``).

Each check compares 2 ranks x 2 images with one process on the same 4 images: 'global' coupling
and SyncBatchNorm must give the one-process values and gradients (after DDP's averaging over ranks),
'worker' coupling each rank's own 2-image value (the reference's per-GPU behaviour).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

C = 5
TEACHER = "deeplabv3_tiny_r101"


def _data():
    g = torch.Generator().manual_seed(7)
    return {
        "fs": torch.randn(4, 6, 4, 4, generator=g), "ft": torch.randn(4, 9, 4, 4, generator=g),
        "sl": torch.randn(4, C, 4, 4, generator=g), "tl": torch.randn(4, C, 4, 4, generator=g),
        "x": torch.randn(4, 3, 5, 5, generator=g), "w": torch.randn(4, 3, 5, 5, generator=g),
    }


def _cfg(method: str, coupling: str):
    from segdistill.config import DistillConfig

    return DistillConfig(method=method, teacher_arch=TEACHER, teacher_checkpoint="-", batch_coupling=coupling)


def _coupled_terms(sl, tl, fs, ft, coupling: str):
    """(CIRKD pair, DIST intra) and their gradients w.r.t. (fs, sl)."""
    from segdistill.losses import METHODS

    sl, fs = sl.clone().requires_grad_(True), fs.clone().requires_grad_(True)
    cirkd = METHODS["cirkd"](_cfg("cirkd", coupling), num_classes=C, student_channels={"head": 6},
                             teacher_channels={"head": 9})
    dist_ = METHODS["dist"](_cfg("dist", coupling), num_classes=C)
    pair = _pair(cirkd, fs, ft)
    intra = dist_.terms(sl, tl, None)["intra"]
    g_fs, = torch.autograd.grad(pair, fs)
    g_sl, = torch.autograd.grad(intra, sl)
    return float(pair.detach()), float(intra.detach()), g_fs, g_sl


def _pair(cirkd, fs, ft):
    """CIRKD's 'pair' term exactly as CIRKDDistiller.terms forms it (coupling included)."""
    from segdistill.losses import minibatch_pair_loss

    c = cirkd.params
    return c.cirkd_pair_weight * minibatch_pair_loss(*cirkd.coupled(fs, ft), tau=c.cirkd_pair_tau, pool=c.cirkd_pair_pool)


def _sync_bn(x, w):
    """BatchNorm output and input gradient with sync BN (CPU path)."""
    from segdistill.parallel import convert_sync_batchnorm, count_sync_batchnorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    net = convert_sync_batchnorm(net, torch.device("cpu"))
    assert count_sync_batchnorm(net) == 1
    x = x.clone().requires_grad_(True)
    y = net(x)
    g, = torch.autograd.grad((y * w).sum(), x)
    return y.detach(), g, net[1].running_mean.clone(), net[1].running_var.clone()


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        d = _data()
        mine = slice(2 * rank, 2 * rank + 2)
        out = {}
        for coupling in ("worker", "global"):
            out[coupling] = _coupled_terms(d["sl"][mine], d["tl"][mine], d["fs"][mine], d["ft"][mine], coupling)
        out["sync_bn"] = _sync_bn(d["x"][mine], d["w"][mine])
        # numpy: tensors through a queue live in shared memory that dies with this process
        queue.put((rank, {k: tuple(v.numpy() if torch.is_tensor(v) else v for v in t) for k, t in out.items()}))
    finally:
        dist.destroy_process_group()


def _spawn(target, world: int = 2, timeout: float = 240, args: tuple = ()):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, world, port, queue, *args)) for r in range(world)]
    for p in procs:
        p.start()
    got = {}
    try:
        for _ in range(world):
            rank, value = queue.get(timeout=timeout)
            got[rank] = value
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return got


@pytest.mark.slow
def test_batch_coupling_and_sync_bn_on_two_gloo_processes():
    got = {r: {k: tuple(torch.from_numpy(v) if hasattr(v, "dtype") and not isinstance(v, float) else v for v in t)
               for k, t in o.items()} for r, o in _spawn(_worker).items()}
    d = _data()
    whole = _coupled_terms(d["sl"], d["tl"], d["fs"], d["ft"], "global")  # one process, 4 images
    for rank in (0, 1):
        mine = slice(2 * rank, 2 * rank + 2)
        # 'worker' (the reference): each rank relates its own 2 images only
        own = _coupled_terms(d["sl"][mine], d["tl"][mine], d["fs"][mine], d["ft"][mine], "worker")
        w = got[rank]["worker"]
        assert w[0] == pytest.approx(own[0], rel=1e-6) and w[1] == pytest.approx(own[1], rel=1e-6)
        torch.testing.assert_close(w[2], own[2])
        torch.testing.assert_close(w[3], own[3])
        assert abs(w[0] - whole[0]) > 1e-3 * abs(whole[0])  # and that is not the whole batch
        # 'global': the one-process value on every rank; gradients / world (DDP's average) = one-process slice
        g = got[rank]["global"]
        assert g[0] == pytest.approx(whole[0], rel=1e-5) and g[1] == pytest.approx(whole[1], rel=1e-5)
        torch.testing.assert_close(g[2] / 2, whole[2][mine], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(g[3] / 2, whole[3][mine], rtol=1e-4, atol=1e-7)
    # SyncBatchNorm: 2 ranks x 2 images normalise like one BatchNorm over the 4 images
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    x = d["x"].clone().requires_grad_(True)
    y = ref(x)
    gx, = torch.autograd.grad((y * d["w"]).sum(), x)
    for rank in (0, 1):
        mine = slice(2 * rank, 2 * rank + 2)
        y_r, g_r, rm, rv = got[rank]["sync_bn"]
        torch.testing.assert_close(y_r, y.detach()[mine], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g_r, gx[mine], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rm, ref[1].running_mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rv, ref[1].running_var, rtol=1e-4, atol=1e-6)


def _fit_worker(rank: int, world: int, port: int, queue, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        from segdistill.config import TrainConfig
        from segdistill.parallel import count_sync_batchnorm
        from segdistill.train import setup, train

        cfg = TrainConfig().replace(**{
            "data.num_classes": 5, "data.image_size": 48, "data.crop_size": 40, "data.train_images": 8,
            "data.val_images": 4, "optim.batch_size": 4, "optim.iterations": 2, "run.eval_every": 2,
            "run.out_dir": out, "run.progress": False, "run.device": "cpu", "model.arch": "deeplabv3_tiny_r18",
            "optim.sync_bn": True,
        })
        run = setup(cfg)
        res = train(run)
        weights = sum(float(p.detach().double().sum()) for p in run.student.parameters())
        stats = sum(float(b.double().sum()) for n, b in run.student.named_buffers() if "running" in n)
        queue.put((rank, (count_sync_batchnorm(run.student), res.iterations_done, weights, stats)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_trainer_with_sync_bn_on_two_gloo_processes(tmp_path):
    got = _spawn(_fit_worker, args=(str(tmp_path / "run"),))
    n0, it0, w0, s0 = got[0]
    n1, it1, w1, s1 = got[1]
    assert n0 > 0 and n0 == n1 and it0 == it1 == 2
    assert w0 == pytest.approx(w1, rel=1e-9)
    assert s0 == pytest.approx(s1, rel=1e-6)  # running statistics: identical, as they are over all images


def test_helpers_are_the_identity_on_one_process():
    from segdistill.parallel import convert_sync_batchnorm, gather_batch, world_size

    assert world_size() == 1
    x = torch.randn(2, 3, 4, 4)
    assert gather_batch(x) is x
    net = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu"))
    ref = nn.BatchNorm2d(3)
    torch.testing.assert_close(net(x), ref(x))
    assert set(net.state_dict()) == {f"0.{k}" for k in ref.state_dict()}
