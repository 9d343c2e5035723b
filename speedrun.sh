#!/usr/bin/env bash
# The Phi-4 recipe at toy scale, end to end on a laptop CPU, ending in out/report.md (16-24 min on 2 cores).
#
#   data         the synthetic world -> BPE tokenizer -> two pretraining mixtures, test/dev/post-training splits
#   pretrain     synthetic-heavy mixture + 40% recall rows                                -> out/pretrain
#   pretrain_web the same tokens, web-heavy (report Table 2's synthetic-vs-web contrast)  -> out/pretrain_web
#   midtrain     4x context, RoPE base x25 (800 -> 20K), LR/3, 50% long recall documents -> out/midtrain
#                and the same run keeping base 800 (the ablation)                         -> out/midtrain_kept_base
#   sft          chat format, answers from an imperfect teacher                           -> out/sft
#   rs           8 samples per new problem graded by the oracle: distinct correct answers -> out/rs
#   rs_sft       a second SFT round: the teacher's data + the accepted answers            -> out/rs_sft
#   dpo          pairs sampled from rs_sft itself, DPO + NLL on the chosen answer, its
#                learning rate chosen on the dev split (1e-5 or 3e-5)                     -> out/dpo
#                and the control: its NLL term alone, to show what the preference adds    -> out/dpo_nll_only
#   table 9      from SFT, equal steps: DPO on PTS pairs vs on full-length pairs, then both -> out/pts_dpo, ...
#   eval         test pass@1 after every stage, recall at 1x/2x/4x, the knowledge quiz    -> out/STAGE/eval*.json
#   report       paired differences (McNemar) for every effect, figures                   -> out/report.md
# Stages that do not wait for each other run side by side, one thread each (the second lane's output goes
# to out/logs/); every stage prints its wall time, the total comes last.
#
#   bash speedrun.sh [--seeds N] [--resume]
#
# --seeds N (default 1) repeats the cheap comparisons of DPO (from RS-SFT, and its control; PTS pairs vs
# full-length from SFT) with seeds 2..N, each a new order of the pairs, into out/seedK/; the report
# gives every seed's paired difference, so one lucky order is not taken for an effect (~4 min for
# seeds 2 and 3).
# --resume continues a run that was stopped (Ctrl-C, a failure, a reboot; give it the same --seeds): the
# phases it finished (data, pretraining, midtraining, post_training, table9, seeds_N; out/.speedrun/ marks
# each) are skipped, and the first one it did not finish runs again from its start. Without it every
# phase runs.
set -euo pipefail
cd "$(dirname "$0")"

seeds=1
resume=0
while [ $# -gt 0 ]; do
    case $1 in
        --seeds) seeds=${2:-}; shift; [ $# -gt 0 ] && shift ;;
        --resume) resume=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1 (bash speedrun.sh [--seeds N] [--resume]; see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ $seeds =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --seeds must be a whole number >= 1, got '$seeds'" >&2
    exit 2
fi

run_start=$SECONDS
exec 3>&1  # the terminal: every stage says its time here, also from a lane whose output goes to a log
stage() {  # stage NAME COMMAND...: run one step of the recipe and say how long it took
    local name=$1 start=$SECONDS
    shift
    "$@"
    echo "[speedrun] $name: $((SECONDS - start)) s" >&3
}

# A phase is a run of stages that later phases wait for. Each one that finishes leaves a mark in
# out/.speedrun/, which --resume reads; a fresh run clears them first, so the marks always name the
# phases this run, or the run it resumes, has finished.
finished=out/.speedrun
[ "$resume" = 1 ] || rm -rf "$finished"
phase() {  # phase NAME COMMAND...: run one phase, or under --resume skip it if it finished before
    local name=$1
    shift
    if [ -e "$finished/$name" ]; then
        echo "[speedrun] $name: finished before, skipped (--resume)"
        return
    fi
    "$@"
    mkdir -p "$finished"
    touch "$finished/$name"
}

# Two lanes at once, one thread each. The toy's matrices are too small to split well between two
# threads, so on this 2-core CPU two jobs side by side finish sooner than the same two in a row on both
# cores: 1.2-1.3x for pretraining, 1.5-1.6x for generation (README, "Performance"), ~1.0x for midtraining,
# whose 1,024-token rows two threads do share well. Every stage that does not wait for another runs
# beside one.
lane_pid=
done_all=0  # set at the very end; the trap cannot tell from $?, which a Ctrl-C can leave at 0
stopped() {  # on exit: a failure or an interruption stops both lanes and says how to go on
    [ -z "$lane_pid" ] || kill -- -"$lane_pid" 2>/dev/null || true
    [ "$done_all" = 1 ] || echo "[speedrun] stopped: bash speedrun.sh --resume goes on from the phase that did not finish" >&2
}
trap stopped EXIT
lanes() {  # lanes FIRST SECOND: run two functions side by side, SECOND's output in out/logs/SECOND.log
    local log=out/logs/$2.log start=$SECONDS
    mkdir -p out/logs
    echo "[speedrun] $1 beside $2 (its output: $log)"
    set -m  # the second lane gets a process group of its own, so the trap can stop all of it
    OMP_NUM_THREADS=1 "$2" > "$log" 2>&1 &
    lane_pid=$!
    set +m
    OMP_NUM_THREADS=1 "$1"
    if ! wait "$lane_pid"; then
        echo "error: a stage of $2 failed; its output is in $log" >&2
        exit 1
    fi
    lane_pid=
    echo "[speedrun] $1 beside $2: $((SECONDS - start)) s"
}

phase data stage data python data.py

# 1,600 steps with the matmuls in bf16 (1.45x faster on this CPU, so less time than 1,200 in fp32): at
# 1,200 fp32 steps this corpus gave no first-line recall to extend (LAB.md has both runs). Every training
# stage but DPO runs its matmuls in bf16 (--bf16-autocast; weights and AdamW stay fp32). Not --compile:
# on top of bf16 it buys 1.06-1.11x a toy step (`python bench.py --threads 1 --parts precision`), 35-55 s
# of a pretraining run, of which compiling takes 20-30 s back, and it needs a C++ compiler.
# --attn-impl blockwise (blockwise_attention.py): torch's fused attention is slow in bf16 on a CPU, above
# all its backward; query blocks that skip the masked triangle and a hand-written backward, all in fp32,
# make one layer's attention 1.67x faster at 256 tokens and 1.07x at 1,024 under bf16 autocast (`python
# bench.py --threads 1 --parts attention`), a pretraining run 1.16-1.17x side by side. (Not
# --attn-impl naive: under bf16 autocast its softmax runs in bf16, and the synthetic-heavy model came out
# worse in 2 of 3 training seeds; LAB.md, "Attention in bf16".)
synthetic_pretraining() {
    stage pretrain python train.py --stage pretrain --bf16-autocast --attn-impl blockwise --steps 1600 --out out/pretrain
    stage eval python eval.py --init out/pretrain
    stage eval_quiz python eval.py --init out/pretrain --quiz
}
web_pretraining() {  # the same tokens, web-heavy
    stage pretrain_web python train.py --stage pretrain --bf16-autocast --attn-impl blockwise --steps 1600 --data out/data/toy/web --out out/pretrain_web
    stage eval python eval.py --init out/pretrain_web
    stage eval_quiz python eval.py --init out/pretrain_web --quiz
}
phase pretraining lanes synthetic_pretraining web_pretraining

midtraining_and_sft() {  # the midtrained model is evaluated in the next phase, beside RS, where a lane has room
    stage midtrain python train.py --stage midtrain --init out/pretrain --batch-size 4 --bf16-autocast --attn-impl blockwise --out out/midtrain
    stage sft python train.py --stage sft --init out/midtrain --bf16-autocast --attn-impl blockwise --out out/sft
    stage eval python eval.py --init out/sft --chat
}
kept_base_ablation() {  # --rope-theta 800: the pretrained model's own base (model.py, the toy preset)
    stage midtrain_kept_base python train.py --stage midtrain --init out/pretrain --batch-size 4 --bf16-autocast --attn-impl blockwise --rope-theta 800 --out out/midtrain_kept_base
    stage eval_long python eval.py --init out/midtrain_kept_base --long
    stage eval python eval.py --init out/midtrain_kept_base
    # The pretrained model's recall: measured here, where this lane has ~30 s to spare, and not after
    # pretraining, where the other lane waited for it.
    stage eval_long python eval.py --init out/pretrain --long
}
phase midtraining lanes midtraining_and_sft kept_base_ablation

# DPO's beta: 1, not the common 0.1. At 0.1 the loss keeps pushing until the two answers' log-ratios part
# by ~30 nats, and on this world that push unlearns copying numbers (dev 86.8% from RS-SFT's 96.9%; 96.4%
# at beta 1; LAB.md, "Beta, and the NLL term alone").
beta=1
rejection_sampling_and_dpo_sweep() {
    stage rs python rejection_sampling.py --init out/sft --problems 3000 --out out/rs
    # The second SFT round trains on the teacher's data and the accepted answers together, one mixture of
    # sources as the report's SFT is. The accepted answers outvote the teacher's habit on most "takes"
    # problems but do not erase it, and that is what DPO's pairs, sampled from this model, find. On the
    # accepted answers alone RS-SFT solved 98.2% and left DPO nothing to fix (README, "DPO after RS-SFT").
    cat out/data/toy/sft.jsonl out/rs/sft.jsonl > out/rs/sft_mixture.jsonl
    stage rs_sft python train.py --stage sft --init out/sft --sft-data out/rs/sft_mixture.jsonl --bf16-autocast --attn-impl blockwise --out out/rs_sft
    stage eval python eval.py --init out/rs_sft --chat
    # On-policy pairs: sampled from the model DPO starts from, on problems rs did not use.
    stage rs_dpo python rejection_sampling.py --init out/rs_sft --skip 3000 --problems 1500 --out out/rs_dpo
    # The DPO learning rate is chosen on the dev split, never on the test split; the winner becomes out/dpo.
    # Two rates: 1e-4 came last on dev in all three runs that tried it at beta 1 (91.7%, 86.2% and 92.3%
    # against 96.4-96.8%, 95.0-95.6% and 93.4-94.2%; LAB.md), and its 50 s lie on the recipe's longest path.
    rm -rf out/dpo_sweep  # a rate left over from an earlier run must not be chosen
    for lr in 1e-5 3e-5; do
        stage dpo_lr$lr python dpo.py --init out/rs_sft --pairs out/rs_dpo/pairs.jsonl --beta $beta --lr $lr --out out/dpo_sweep/lr$lr
        stage eval_dev python eval.py --init out/dpo_sweep/lr$lr --chat --split dev
    done
}
midtraining_evals_and_pts() {
    stage eval_long python eval.py --init out/midtrain --long
    stage eval python eval.py --init out/midtrain
    # Pivotal Token Search on SFT, for a toy Table 9 (report section 4.3)
    stage pts python pts.py --init out/sft --out out/pts/pairs.jsonl --questions 600 --rollouts 32
}
phase post_training lanes rejection_sampling_and_dpo_sweep midtraining_evals_and_pts
best_lr=$(python report.py --best-dev out/dpo_sweep)
echo "[speedrun] DPO learning rate chosen on dev: $best_lr"
rm -rf out/dpo && cp -r out/dpo_sweep/lr$best_lr out/dpo

# Table 9: from SFT, the same DPO steps on PTS pairs and on full-length pairs, then both.
pts_arm() {
    stage eval python eval.py --init out/dpo --chat
    stage pts_dpo python dpo.py --init out/sft --pairs out/pts/pairs.jsonl --beta $beta --lr $best_lr --out out/pts_dpo --steps 60
    stage eval python eval.py --init out/pts_dpo --chat
    stage pts_dpo_dpo python dpo.py --init out/pts_dpo --pairs out/rs/pairs.jsonl --beta $beta --lr $best_lr --out out/pts_dpo_dpo --steps 60
    stage eval python eval.py --init out/pts_dpo_dpo --chat
}
control_and_full_length_arm() {
    # The control: DPO's NLL term alone on the same pairs, steps and LR (SFT on the chosen answers), so
    # the report can say what the preference itself adds.
    stage dpo_nll_only python dpo.py --init out/rs_sft --pairs out/rs_dpo/pairs.jsonl --beta $beta --lr $best_lr --preference-weight 0 --out out/dpo_nll_only
    stage eval python eval.py --init out/dpo_nll_only --chat
    stage sft_dpo python dpo.py --init out/sft --pairs out/rs/pairs.jsonl --beta $beta --lr $best_lr --out out/sft_dpo --steps 60
    stage eval python eval.py --init out/sft_dpo --chat
}
phase table9 lanes pts_arm control_and_full_length_arm

seeds_from() {  # seeds_from K: the --seeds comparisons for seeds K, K+2, K+4, ... up to N
    local seed
    for seed in $(seq "$1" 2 "$seeds"); do
        stage dpo_seed$seed python dpo.py --init out/rs_sft --pairs out/rs_dpo/pairs.jsonl --beta $beta --lr $best_lr --seed $seed --out out/seed$seed/dpo
        stage eval python eval.py --init out/seed$seed/dpo --chat
        stage dpo_nll_only_seed$seed python dpo.py --init out/rs_sft --pairs out/rs_dpo/pairs.jsonl --beta $beta --lr $best_lr --preference-weight 0 --seed $seed --out out/seed$seed/dpo_nll_only
        stage eval python eval.py --init out/seed$seed/dpo_nll_only --chat
        stage pts_dpo_seed$seed python dpo.py --init out/sft --pairs out/pts/pairs.jsonl --beta $beta --lr $best_lr --seed $seed --out out/seed$seed/pts_dpo --steps 60
        stage eval python eval.py --init out/seed$seed/pts_dpo --chat
        stage sft_dpo_seed$seed python dpo.py --init out/sft --pairs out/rs/pairs.jsonl --beta $beta --lr $best_lr --seed $seed --out out/seed$seed/sft_dpo --steps 60
        stage eval python eval.py --init out/seed$seed/sft_dpo --chat
    done
}
even_seeds() { seeds_from 2; }
odd_seeds() { seeds_from 3; }
if [ "$seeds" -gt 1 ]; then phase "seeds_$seeds" lanes even_seeds odd_seeds; fi

python sample.py --init out/dpo --chat --num-samples 2
python report.py
echo "[speedrun] total: $((SECONDS - run_start)) s"
done_all=1
