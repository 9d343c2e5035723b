#!/usr/bin/env bash
# The Phi-4 recipe at toy scale, end to end on a laptop CPU, ending in out/report.md (~19 min on 2 cores).
#
#   data      the synthetic world -> BPE tokenizer -> uint32 shards, 13-gram-decontaminated eval split
#   pretrain  the toy Phi-4 (GQA, RoPE, SwiGLU) learns worked solutions             -> out/pretrain
#   midtrain  4x context, RoPE base 10K -> 250K, LR/10, 30% long documents         -> out/midtrain
#   sft       chat format, loss on assistant tokens only                            -> out/sft
#   rs        8 answers per problem graded by the oracle: best-of-n data + pairs    -> out/rs
#   rs_sft    a second SFT round on the accepted answers                            -> out/rs_sft
#   dpo       DPO on full-length correct-vs-incorrect pairs                         -> out/dpo
#   pts       Pivotal Token Search on the SFT model: single-token pairs             -> out/pts
#   table 9   SFT + PTS-DPO, SFT + full-length DPO, and both in sequence            -> out/pts_dpo, ...
#   eval      held-out greedy pass@1 and maj@8 after every stage                    -> out/STAGE/eval.json
#   report    what every stage measured                                             -> out/report.md
# Every stage prints its wall time; the total comes last.
set -euo pipefail
cd "$(dirname "$0")"

run_start=$SECONDS
stage() {  # stage NAME COMMAND...: run one step of the recipe and say how long it took
    local name=$1 start=$SECONDS
    shift
    "$@"
    echo "[speedrun] $name: $((SECONDS - start)) s"
}

stage data python data.py
stage pretrain python train.py --stage pretrain --out out/pretrain
stage eval python eval.py --init out/pretrain
stage midtrain python train.py --stage midtrain --init out/pretrain --out out/midtrain
stage midtrain_base10k python train.py --stage midtrain --init out/pretrain --rope-theta 10000 --out out/midtrain_base10k
stage eval python eval.py --init out/midtrain
stage eval python eval.py --init out/midtrain_base10k
for name in pretrain midtrain midtrain_base10k; do stage eval_long python eval.py --init out/$name --long; done

stage sft python train.py --stage sft --init out/midtrain --out out/sft
stage eval python eval.py --init out/sft --chat

stage rs python rejection_sampling.py --init out/sft --problems 3000 --out out/rs
stage rs_sft python train.py --stage sft --init out/sft --sft-data out/rs/sft.jsonl --out out/rs_sft
stage eval python eval.py --init out/rs_sft --chat
stage dpo python dpo.py --init out/rs_sft --pairs out/rs/pairs.jsonl --out out/dpo
stage eval python eval.py --init out/dpo --chat

# A toy Table 9 (report section 4.3): the same DPO steps on PTS pairs, on full-length pairs, and both.
stage pts python pts.py --init out/sft --out out/pts/pairs.jsonl --questions 1000 --rollouts 32
stage pts_dpo python dpo.py --init out/sft --pairs out/pts/pairs.jsonl --out out/pts_dpo --steps 40
stage eval python eval.py --init out/pts_dpo --chat
stage sft_dpo python dpo.py --init out/sft --pairs out/rs/pairs.jsonl --out out/sft_dpo --steps 40
stage eval python eval.py --init out/sft_dpo --chat
stage pts_dpo_dpo python dpo.py --init out/pts_dpo --pairs out/rs/pairs.jsonl --out out/pts_dpo_dpo --steps 40
stage eval python eval.py --init out/pts_dpo_dpo --chat

python sample.py --init out/dpo --chat --num-samples 2
python eval.py --report out/report.md
echo "[speedrun] total: $((SECONDS - run_start)) s"
