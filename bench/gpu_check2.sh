#!/usr/bin/env bash
# Second GPU pass: the trainer end to end on CUDA (tiny models, synthetic data), and the compiled-CE
# variants of the step benchmark.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=platform
timeout 170 python3 -m segdistill distill --out /tmp/gpu_distill --iterations 150 --teacher-iterations 200 \
  --set run.device=cuda run.progress=false data.num_workers=6 > "$OUT/fit.log" 2>&1; echo "fit rc=$?"
tail -12 "$OUT/fit.log"
timeout 150 python3 bench/bench_step.py --iters 15 --warm 5 --variants compile_both > "$OUT/ours_both.json" 2> "$OUT/ours_both.err"; echo "both rc=$?"
timeout 100 python3 bench/bench_step.py --iters 15 --warm 5 --no-aux --variants compile_ce > "$OUT/ours_noaux_ce.json" 2> "$OUT/ours_noaux_ce.err"; echo "noaux ce rc=$?"
tail -3 "$OUT"/*.err
cat "$OUT"/*.json | grep -E '"([a-z_]+/[a-z]+_img_per_s|peak_mem_gib)"'
