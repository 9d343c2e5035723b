#!/usr/bin/env bash
# The Phi-4 recipe at toy scale, end to end on a laptop CPU, ending in out/report.md.
#
#   data     the synthetic world -> BPE tokenizer -> uint32 shards, 13-gram-decontaminated eval split
#   pretrain the toy Phi-4 (GQA, RoPE, SwiGLU) learns worked solutions          -> out/pretrain
#   eval     greedy pass@1 on held-out problems, graded by the world's oracle     -> out/pretrain/eval.json
#   report   what every stage measured                                            -> out/report.md
#
# Later stages of the recipe (midtraining, SFT, rejection sampling, PTS, DPO) join here as they land.
set -euo pipefail
cd "$(dirname "$0")"

python data.py
python train.py --stage pretrain --out out/pretrain
python sample.py --init out/pretrain --eval
python sample.py --init out/pretrain --num-samples 2
python sample.py --report out/report.md
