"""The figures of scripts/gpu_check.sh, read from what its parts wrote into OUT_DIR.

    python scripts/gpu_check_results.py train OUT_DIR    # one line on the MFU run; OUT_DIR/train_mfu.json
    python scripts/gpu_check_results.py merge OUT_DIR    # OUT_DIR/results.json: every part and its numbers

gpu_check.sh calls both; they are a file of their own so that the tests can run them on a CPU, on the
outputs of the same commands at toy size (tests/test_bench.py): a GPU run is too rare to find a misspelt
key in.
"""

import json
import os
import statistics
import sys

FIRST_STEADY_STEP = 6  # steps 1-5 include torch.compile's compilation and the first allocations


def train_summary(out_dir: str) -> dict:
    """Medians over the steady steps of OUT_DIR/train/log.jsonl (train.py's log); prints one line, writes train_mfu.json."""
    path = os.path.join(out_dir, "train", "log.jsonl")
    records = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    steady = [r for r in records if r["step"] >= FIRST_STEADY_STEP]
    summary = {"steps": len(records)}
    if steady:
        mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]  # None where the GPU's peak is unknown
        summary.update(median_tok_s=statistics.median(r["tok_s"] for r in steady),
                       median_mfu=statistics.median(mfus) if mfus else None,
                       peak_mem_gb=max(r.get("peak_mem_gb", 0.0) for r in records), last_loss=records[-1]["loss"])
        mfu = (f"{summary['median_mfu']:.1%}" if summary["median_mfu"] is not None
               else "n/a (GPU not in parallel.PEAK_BF16_FLOPS)")
        print(f"train_mfu: steps {FIRST_STEADY_STEP}-{records[-1]['step']}: median {summary['median_tok_s']:,.0f} tok/s, "
              f"MFU {mfu}, peak memory {summary['peak_mem_gb']:.1f} GB, loss {summary['last_loss']:.3f}")
    else:
        print(f"train_mfu: no steady-state steps in {path} ({len(records)} steps logged)")
    with open(os.path.join(out_dir, "train_mfu.json"), "w") as f:
        json.dump(summary, f)
    return summary


def merge(out_dir: str) -> dict:
    """OUT_DIR/results.json: results.txt's header, every part's status (parts.jsonl), the MFU summary and bench.py's rows."""
    def load(name):
        try:
            with open(os.path.join(out_dir, name)) as f:
                return json.load(f)
        except (OSError, ValueError):  # a part that failed left no file, or half of one
            return None

    with open(os.path.join(out_dir, "parts.jsonl")) as f:
        parts = [json.loads(line) for line in f]
    with open(os.path.join(out_dir, "results.txt")) as f:
        header = f.read().splitlines()[:3]
    decode = load("decode.json") or {}
    results = {"header": header, "parts": parts, "train_mfu": load("train_mfu.json"),
               "decode_rows": decode.get("rows"), "matmul_peak": decode.get("peak")}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("train", "merge") or sys.argv[2].startswith("-"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help") else 2)
    {"train": train_summary, "merge": merge}[sys.argv[1]](sys.argv[2])
