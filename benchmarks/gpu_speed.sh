#!/usr/bin/env bash
# One prepared GPU session for issue 15 (at most 7.5 minutes of commands on an H100/H200, each part
# bounded; step.py prints each setup's line as it finishes, so a timeout keeps what ran):
#   1. the step: the reference and ours with the trainer's GPU default (compiled CE) and each lever
#      the profile points at -- fused SGD, the teacher's weights in bf16, the teacher compiled with
#      CUDA graphs (static shapes), the student compiled -- alone and together, same run, same GPU:
#      images/s, ratio to the reference's HWD step (goal >= 2x), HWD over CWD (goal <= 1%), peak
#      memory vs the reference's, and each setup's HWD loss after the same steps (a lever must not
#      change it beyond rounding);
#   2. cohorts in steady state (benchmarks/cohort.py): per-student images/s of K = 2/4/8 cohorts vs
#      separate runs after 5 warm-up iterations, start-up reported apart, with the paper models.
# Writes JSON and logs to $OUT (default ./gpu_out). SMOKE=1 runs tiny sizes on the CPU (to test this script).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=platform
PY=${PY:-python3}
if [ "${SMOKE:-0}" = 1 ]; then
  STEP="--device cpu --size 48 --classes 5 --batch 2 --iters 1 --warm 1 --teacher deeplabv3_tiny_r101 --student deeplabv3_tiny_r18"
  VARIANTS="literal,literal+fused,literal+tbf16,literal+tgraph+tbf16+fused"
  COHORT="--device cpu --k 2,3 --separate 2 --size 40 --classes 5 --batch 2 --warmup 1 --iterations 1 --train-images 6 --modes separate,cohort"
else
  STEP="--device cuda --iters 15 --warm 5"
  VARIANTS="compiled,compiled+fused,compiled+tbf16,compiled+tgraph+tbf16,compiled+student+tgraph+tbf16+fused"
  COHORT="--device cuda --k 2,4,8 --separate 2 --size 512 --classes 150 --batch 16 --teacher deeplabv3_r101 --student deeplabv3_r18 --warmup 5 --iterations 15 --train-images 64 --modes separate,cohort"
  nvidia-smi -L | tee "$OUT/gpu.txt"
fi
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
T1=300; T2=150; [ "${SMOKE:-0}" = 1 ] && T1=900 && T2=900  # a smoke run on a shared CPU may need far longer
timeout $T1 $PY benchmarks/step.py $STEP --variants "$VARIANTS" > "$OUT/step.txt" 2> "$OUT/step.err"; echo "step rc=$?"
timeout $T2 $PY benchmarks/cohort.py $COHORT > "$OUT/cohort.txt" 2> "$OUT/cohort.err"; echo "cohort rc=$?"
tail -3 "$OUT"/*.err 2>/dev/null | tail -12
grep -v '^{' "$OUT/step.txt"; tail -1 "$OUT/step.txt" | cut -c1-900
grep -v '^{' "$OUT/cohort.txt"
