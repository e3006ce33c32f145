#!/usr/bin/env bash
# One prepared GPU session: reference step, the project's step (eager / compiled CE / compiled
# student), and a short real fit() on CUDA. Writes JSON and logs to $OUT (or ./gpu_out).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=platform
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" | tee -a "$OUT/gpu.txt"
REF=${REF:-.benchref/plain_pytorch_step.py}
if [ -f "$REF" ]; then
  timeout 150 python3 "$REF" --cohort 1 --iters 15 --warm 5 > "$OUT/reference.json" 2> "$OUT/reference.err"; echo "reference rc=$?"
fi
timeout 150 python3 bench/bench_step.py --iters 15 --warm 5 --variants eager,compile_ce > "$OUT/ours_eager.json" 2> "$OUT/ours_eager.err"; echo "ours eager rc=$?"
timeout 90 python3 bench/bench_step.py --iters 15 --warm 5 --no-aux --variants eager > "$OUT/ours_noaux.json" 2> "$OUT/ours_noaux.err"; echo "ours noaux rc=$?"
timeout 120 python3 bench/bench_step.py --iters 15 --warm 5 --variants compile > "$OUT/ours_compile.json" 2> "$OUT/ours_compile.err"; echo "ours compile rc=$?"
timeout 120 python3 -m segdistill distill --out /tmp/gpu_distill --iterations 150 --teacher-iterations 200 \
  --set run.device=cuda run.progress=false > "$OUT/fit.log" 2>&1; echo "fit rc=$?"
tail -5 "$OUT"/*.err 2>/dev/null | tail -20
cat "$OUT"/*.json | grep -E '"(device|[a-z_]+/[a-z]+_img_per_s|[a-z_]+_img_per_s|hwd_vs_cwd_overhead|[a-z_]+/hwd_vs_cwd_overhead|peak_mem_gib)"'
tail -8 "$OUT/fit.log"
