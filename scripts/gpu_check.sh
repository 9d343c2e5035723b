#!/usr/bin/env bash
# Everything only a GPU can show, in one run of under 8 minutes on one H200, into one results file.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: out/gpu_check
#   PYTHON=/path/to/python bash scripts/gpu_check.sh   # another interpreter than python3 (the one with CUDA torch)
#
# Four parts, each timed and each with a time limit (together 420 s, so the whole run stays under 8 minutes
# with start-up); a part that fails or runs out of time is recorded and the next one runs anyway:
#   1. kernel_tests  the Triton kernel's bf16 tests:  python -m pytest -q -m gpu tests/test_flash_attention.py
#   2. kernel_bench  our FlashAttention-2 kernel against torch SDPA, bf16, causal, T = 1K..16K, head dim 128,
#                    GQA 4 (40 query heads on 10 KV heads), plus its bf16 accuracy check
#   3. train_mfu     training MFU at the 14b width with 4 blocks (the README's command); the summary is the
#                    median over steps 6-20, after torch.compile has finished compiling
#   4. decode        bf16 decode tokens/s, ours next to transformers' Phi3ForCausalLM with the same weights,
#                    14b width with 4 blocks (bench.py), and the measured bf16 matmul peak beside the datasheet's
# Output: OUT_DIR/results.txt (read this), OUT_DIR/results.json (the same numbers for programs) and one
# OUT_DIR/PART.log per part with its full output. Exit status 0 when every part passed, 1 otherwise.
# Without a CUDA GPU it exits 1 at once with one line saying so.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT_DIR="${1:-out/gpu_check}"
# The interpreter that holds the CUDA build of torch: $PYTHON if set, else python3 (GPU images often have no
# bare `python`), else python.
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"

# ---------------------------------------------------------------------------------------------------------
# A GPU, or one line and exit 1 (nvidia-smi first: it answers at once, before Python imports torch)
if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1; then
    echo "gpu_check.sh: no NVIDIA GPU on this machine (nvidia-smi finds none); run it on a CUDA machine" >&2
    exit 1
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" > /dev/null 2>&1; then
    echo "gpu_check.sh: $PYTHON's torch sees no CUDA GPU (a CPU build?); install a CUDA build of torch, or set PYTHON to the interpreter that has one" >&2
    exit 1
fi

mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.txt"
PARTS="$OUT_DIR/parts.jsonl"  # one JSON line per part, merged into results.json at the end
: > "$PARTS"
{
    echo "gpu_check.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PYTHON" -c "import torch, triton; print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}')"
} > "$RESULTS" 2>&1

# run_part NAME LIMIT_S COMMAND...: run COMMAND with a time limit, its output in OUT_DIR/NAME.log; record
# ok / FAILED / TIMEOUT and the seconds it took in results.txt and parts.jsonl. Never stops the script.
FAILED=0
run_part() {
    local name=$1 limit=$2
    shift 2
    local log="$OUT_DIR/$name.log" start=$SECONDS status rc
    echo "running $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    rc=$?
    case $rc in
        0) status="ok" ;;
        124 | 137) status="TIMEOUT after ${limit}s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || FAILED=1
    printf '\n== %s: %s in %ds (%s; full output in %s)\n' "$name" "$status" "$((SECONDS - start))" "$*" "$log" >> "$RESULTS"
    printf '{"part": "%s", "status": "%s", "exit": %d, "seconds": %d, "command": "%s", "log": "%s"}\n' \
        "$name" "$status" "$rc" "$((SECONDS - start))" "$*" "$log" >> "$PARTS"
}

# ---------------------------------------------------------------------------------------------------------
# 1. The kernel's bf16 tests (skipped on CPU, where the rest of tests/test_flash_attention.py runs under the interpreter)
run_part kernel_tests 60 "$PYTHON" -m pytest -q -m gpu tests/test_flash_attention.py
tail -n 3 "$OUT_DIR/kernel_tests.log" >> "$RESULTS"

# 2. Kernel against SDPA: Phi-4's heads (40 query, 10 KV: GQA 4) of dim 128, causal, 16K tokens per measurement
run_part kernel_bench 100 "$PYTHON" flash_attention.py --bench --causal yes --seq-lens 1024,2048,4096,8192,16384 \
    --n-head 40 --n-kv-head 10 --head-dim 128
grep -v '^\s*$' "$OUT_DIR/kernel_bench.log" | tail -n 40 >> "$RESULTS"

# 3. Training MFU, 14b width, 4 blocks, 2 x 4096 tokens per step (README, "Scale out"); MFU against the bf16
#    datasheet peak in parallel.PEAK_BF16_FLOPS, as train.py prints it
rm -rf "$OUT_DIR/train"
run_part train_mfu 170 "$PYTHON" train.py --size 14b --n-layer 4 --seq-len 4096 --batch-size 2 --data random --device cuda \
    --activation-checkpointing --compile --steps 20 --warmup-steps 1 --eval-every 0 --save-every 0 --out "$OUT_DIR/train"
"$PYTHON" scripts/gpu_check_results.py train "$OUT_DIR" >> "$RESULTS" 2>&1

# 4. bf16 decode tokens/s, batch 1 greedy and batch 64 sampling, ours and transformers, same weights; and the
#    measured matmul peak (8192 x 8192) to set the datasheet's 989 TFLOP/s against
run_part decode 90 "$PYTHON" bench.py --device cuda --size 14b --n-layer 4 --dtype bfloat16 --parts peak,decode \
    --repeats 3 --matmul-size 8192 --json "$OUT_DIR/decode.json"
grep -v '^\s*$' "$OUT_DIR/decode.log" | tail -n 6 >> "$RESULTS"

# ---------------------------------------------------------------------------------------------------------
# One JSON file with every part's status and the numbers, then the results for the reader
"$PYTHON" scripts/gpu_check_results.py merge "$OUT_DIR"
echo
cat "$RESULTS"
echo
echo "results: $RESULTS and $OUT_DIR/results.json"
exit "$FAILED"
