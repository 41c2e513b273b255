#!/usr/bin/env bash
# An older checkout against this one on a host with two GPUs: the old checkout's own bench/ab.py on
# one GPU and `python -m bench.ab` on the other, at the same time, then (ROUNDS="1 2") again with the
# GPUs swapped. T100, I100 cold and I100 warm p50, RANDOM weights of the 7B shape. For checkouts
# whose engine patches transformers process-wide (before the engine/ subpackages), which therefore
# cannot share a process with this one (`python -m bench.ab --b-checkout` needs the new layout).
#
#   OLD=351ea60 bash bench/ab_checkouts.sh      # run from the repo root; the device tool carries .ab-old
set -u
OLD=${OLD:-351ea60}
if [ ! -d .ab-old/lychee_grpc ]; then
  mkdir -p .ab-old && git archive "$OLD" lychee_grpc bench/ab.py bench/run.py bench/__init__.py | tar -x -C .ab-old
fi
export LYCHEE_TINY_MODEL=${LYCHEE_TINY_MODEL:-$PWD/.cache/tiny-model}
OUT=${OUT:-.ab-old/out}
mkdir -p "$OUT"
for round in ${ROUNDS:-1 2}; do
  if [ "$round" = 1 ]; then old=0; new=1; else old=1; new=0; fi
  CUDA_VISIBLE_DEVICES=$old PYTHONPATH=$PWD/.ab-old:${PYTHONPATH:-} python3 .ab-old/bench/ab.py \
    --label "old $OLD (gpu $old)" > "$OUT/ab_old_$round.txt" 2>&1 &
  CUDA_VISIBLE_DEVICES=$new python3 -m bench.ab --workloads T100,I100,I100_warm --rounds 8 \
    > "$OUT/ab_new_$round.txt" 2>&1 &
  wait
  echo "== round $round (old on gpu $old, new on gpu $new)"; tail -2 "$OUT/ab_old_$round.txt"; tail -6 "$OUT/ab_new_$round.txt"
done
