#!/usr/bin/env bash
# Is a cohort member's result the same as its separate run on the GPU? Compares the final losses
# of cohort members with a separate run AND with a second separate run (the GPU's run-to-run noise
# floor: cuDNN autotuning, atomics in bilinear upsampling's backward), with and without
# run.deterministic. SMOKE=1: tiny sizes on the CPU (to test this script). About 3 minutes on an H100.
set -u
PY=${PY:-python3}; export PYTHONUNBUFFERED=1 PYTHONPATH=platform
if [ "${SMOKE:-0}" = 1 ]; then
  ARGS="--device cpu --k 2 --size 40 --classes 5 --batch 2 --warmup 1 --iterations 2 --train-images 6"
else
  ARGS="--device cuda --k 2 --size 512 --classes 150 --batch 16 --teacher deeplabv3_r101 --student deeplabv3_r18 --warmup 5 --iterations 15 --train-images 64"
fi
# the bounds are the GPU session's; a smoke run on a shared CPU may need far longer
T1=150; T2=200; [ "${SMOKE:-0}" = 1 ] && T1=900 && T2=900
timeout $T1 $PY benchmarks/cohort.py $ARGS --modes separate,separate2,cohort,cohort_cached; echo "default rc=$?"
timeout $T2 $PY benchmarks/cohort.py $ARGS --modes separate,separate2,cohort --deterministic; echo "deterministic rc=$?"
