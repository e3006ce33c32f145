#!/usr/bin/env bash
# GPU probe: does the tiny teacher out-learn the tiny student on the synthetic benchmark?
# Four runs side by side on one GPU; prints each run's evaluation history from its checkpoint.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=platform
ITERS=${ITERS:-1500}
for arch in deeplabv3_tiny_r18 deeplabv3_tiny_r101; do for lr in 0.01 0.05; do
  timeout ${LIMIT:-170} python3 -m segdistill train --fresh --set model.arch=$arch optim.lr=$lr optim.iterations=$ITERS \
    run.eval_every=500 run.progress=false run.device=cuda data.num_workers=3 run.out_dir=/tmp/cap/${arch}_$lr \
    > /tmp/cap_${arch}_$lr.log 2>&1 &
done; done
wait
python3 - <<'PY'
import glob, torch
for f in sorted(glob.glob("/tmp/cap/*/checkpoint/state.pt")):
    s = torch.load(f, map_location="cpu", weights_only=False)
    print(f.split("/")[3], [(e["iteration"], round(e["val/miou"], 3)) for e in s["evals"]], "img/s", round(s["images_seen"] / max(s["train_time"], 1e-9), 1))
PY
tail -3 /tmp/cap_*.log
