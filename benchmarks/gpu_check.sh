#!/usr/bin/env bash
# One prepared GPU session (8-9.5 minutes on an H100/H200) for issue 7's numbers:
#   1. correctness on the GPU: blocked CE vs the literal path in bf16 (loss and gradient);
#   2. the step benchmark: ours (literal / compiled / blocked / +student) vs the reference, batch 16;
#   3. the loader with the paper's augmentation on the host's CPUs (synthetic and ADE20K-layout JPEGs);
#   4. cohort vs separate runs (K=4) with the paper models.
# Writes JSON and logs to $OUT (default ./gpu_out). SMOKE=1 runs tiny sizes on the CPU (to test this script).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=platform
PY=${PY:-python3}
if [ "${SMOKE:-0}" = 1 ]; then
  DEV=cpu; STEP="--size 48 --classes 5 --batch 2 --iters 1 --warm 1 --teacher deeplabv3_tiny_r101 --student deeplabv3_tiny_r18"
  LOADER="--workers 0,2 --images 8 --size 64 --batch 4 --iters 3 --steady 1"; COHORT="--k 2 --size 40 --classes 5 --batch 2 --warmup 1 --iterations 1 --train-images 6"
else
  DEV=cuda; STEP="--iters 15 --warm 5"
  LOADER="--workers 4,8,14 --images 96 --size 512 --batch 16 --iters 40 --steady 10"
  COHORT="--device cuda --k 4 --size 512 --classes 150 --batch 16 --teacher deeplabv3_r101 --student deeplabv3_r18 --warmup 5 --iterations 15 --train-images 64"
  nvidia-smi -L | tee "$OUT/gpu.txt"
fi
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"

timeout 60 $PY - "$DEV" > "$OUT/ce_check.json" 2> "$OUT/ce_check.err" <<'EOF'; echo "ce check rc=$?"
import json, sys, torch
from segdistill.train import segmentation_ce
from segdistill.upsample_ce import upsampled_cross_entropy
dev = sys.argv[1]
torch.manual_seed(0)
b, c, h, H = (16, 150, 64, 512) if dev == "cuda" else (2, 5, 6, 48)
x = torch.randn(b, c, h, h, device=dev)
y = torch.randint(0, c, (b, H, H), device=dev); y[:, :8] = 255
out = {}
for name, fn in (("literal", segmentation_ce), ("blocked", upsampled_cross_entropy)):
    xb = x.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        loss = fn(xb, y)
    loss.backward()
    out[name] = (float(loss), xb.grad.float())
x32 = x.clone().requires_grad_(True); ref = segmentation_ce(x32, y); ref.backward()
res = {"fp32_loss": float(ref)}
for name, (l, g) in out.items():
    res[f"{name}_loss_err"] = abs(l - float(ref))
    res[f"{name}_grad_max_rel_err"] = float((g - x32.grad).abs().max() / x32.grad.abs().max())
print(json.dumps(res))
EOF
# ordered by what matters most, each bounded (about 9.5 minutes at most in all on the GPU; a smoke
# run on a shared CPU may need far longer: SMOKE=1 multiplies the bounds by 4)
M=1; [ "${SMOKE:-0}" = 1 ] && M=4
timeout $((240 * M)) $PY benchmarks/step.py --device $DEV $STEP > "$OUT/step.txt" 2> "$OUT/step.err"; echo "step rc=$?"
timeout $((150 * M)) $PY benchmarks/cohort.py $COHORT > "$OUT/cohort.txt" 2> "$OUT/cohort.err"; echo "cohort rc=$?"
timeout $((60 * M)) $PY benchmarks/loader.py $LOADER > "$OUT/loader_synthetic.txt" 2> "$OUT/loader.err"; echo "loader synthetic rc=$?"
timeout $((60 * M)) $PY benchmarks/loader.py --dataset ade20k $LOADER > "$OUT/loader_ade20k.txt" 2>> "$OUT/loader.err"; echo "loader ade20k rc=$?"
tail -3 "$OUT"/*.err 2>/dev/null | tail -12
cat "$OUT/ce_check.json"; grep -v '^{' "$OUT/step.txt"; tail -1 "$OUT/step.txt" | cut -c1-600
grep -h "images/s" "$OUT"/loader_*.txt; grep -v '^{' "$OUT/cohort.txt"; tail -1 "$OUT/cohort.txt"
