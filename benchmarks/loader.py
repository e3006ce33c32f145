"""Input-pipeline benchmark: can the loader with the paper's augmentation outrun the GPU step?

Times the trainer's own DataLoader (``segdistill.runstate.loader``: seeded per-sample augmentation, random scale
0.5-2, pad, crop, flip) for a number of worker processes, on

- ``synthetic``: the embedded dataset (in-memory uint8 scenes), at the given image/crop size;
- ``ade20k``: a generated ADE20K-layout tree of JPEG images and PNG labels (decoding included), so
  real-dataset decoding cost is measured without the real data.

    python benchmarks/loader.py --workers 0,2 --images 64 --size 512           # this machine
    python benchmarks/loader.py --workers 4,8,14 --dataset ade20k --size 512   # a 16-core GPU host
The last line is one JSON object: images/s per worker count and the target (2x the step's images/s,
``--step-images-per-s``) where given.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from segdistill.config import TrainConfig
from segdistill.runstate import loader, setup

ROOT = Path(__file__).resolve().parents[1]


def make_ade20k_tree(root: Path, count: int, size: int, classes: int = 150) -> None:
    """ADE20K's ``ADEChallengeData2016`` layout with ``count`` JPEG/PNG pairs per split (blocky labels,
    noisy images: realistic compressed sizes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count if split == "training" else 2):
            h, w = size, int(size * 4 / 3)
            blocks = rng.integers(0, classes + 1, (h // 32 + 1, w // 32 + 1)).astype(np.uint8)
            label = np.kron(blocks, np.ones((32, 32), np.uint8))[:h, :w]
            image = (rng.normal(128, 40, (h, w, 3)) + label[..., None] % 7 * 10).clip(0, 255).astype(np.uint8)
            name = f"ADE_{split[:5]}_{i:08d}"
            Image.fromarray(image).save(base / "images" / split / f"{name}.jpg", quality=90)
            Image.fromarray(label).save(base / "annotations" / split / f"{name}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("synthetic", "ade20k"), default="synthetic")
    ap.add_argument("--workers", default="0,2", help="comma list of DataLoader worker counts")
    ap.add_argument("--images", type=int, default=64, help="training images in the dataset")
    ap.add_argument("--size", type=int, default=512, help="image size (synthetic: square; ade20k: height)")
    ap.add_argument("--crop", type=int, default=0, help="crop size (default: --size)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=30, help="batches timed per worker count (worker start-up included)")
    ap.add_argument("--steady", type=int, default=0,
                    help="also report images/s after the first N batches (worker start-up excluded)")
    ap.add_argument("--step-images-per-s", type=float, default=0.0, help="the GPU step's images/s (target: 2x)")
    a = ap.parse_args()
    crop = a.crop or a.size
    tmp = tempfile.TemporaryDirectory()
    over = {"data.crop_size": crop, "optim.batch_size": a.batch, "optim.iterations": a.iters,
            "run.device": "cpu", "run.progress": False, "run.out_dir": str(Path(tmp.name) / "run"),
            "model.arch": "deeplabv3_tiny_r18"}
    if a.dataset == "synthetic":
        over.update({"data.image_size": a.size, "data.train_images": a.images, "data.val_images": 2})
    else:
        make_ade20k_tree(Path(tmp.name) / "ade", a.images, a.size)
        over.update({"data.name": "ade20k", "data.root": str(Path(tmp.name) / "ade")})
    results: dict[str, object] = {"dataset": a.dataset, "size": a.size, "crop": crop, "batch": a.batch,
                                  "cpu_count": torch.multiprocessing.cpu_count()}
    for workers in (int(w) for w in a.workers.split(",")):
        cfg = TrainConfig().replace(**over, **{"data.num_workers": workers})
        run = setup(cfg)
        batches = loader(run, 0, cfg.optim.iterations)
        t0 = time.perf_counter()  # from the start, so prefetched batches are not free
        n = n_steady = 0
        t_steady = None
        for i, batch in enumerate(batches):
            n += batch[0].shape[0]
            if i == a.steady - 1:
                t_steady = time.perf_counter()
            elif t_steady is not None:
                n_steady += batch[0].shape[0]
        end = time.perf_counter()
        ips = n / (end - t0)
        results[f"workers_{workers}_images_per_s"] = ips
        line = f"{a.dataset} {a.size}px crop {crop}, {workers} workers: {ips:8.1f} images/s"
        if t_steady is not None and n_steady:
            results[f"workers_{workers}_steady_images_per_s"] = n_steady / (end - t_steady)
            line += f" ({n_steady / (end - t_steady):.1f} after the first {a.steady} batches)"
        print(line, flush=True)
    if a.step_images_per_s:
        best = max(v for k, v in results.items() if k.endswith("_images_per_s") and "steady" not in k)  # type: ignore[type-var]
        results["target_images_per_s"] = 2 * a.step_images_per_s
        results["meets_target"] = best >= 2 * a.step_images_per_s
    tmp.cleanup()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
