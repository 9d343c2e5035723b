"""How long loading a Hugging Face Phi-4 folder takes, and how much host memory it peaks at.

    python scripts/measure_hf_load.py 1b        # 2.6 GB in bf16; `14b` needs ~30 GB of disk and RAM

Saves a random model of the preset in bfloat16 (the release's dtype), then times hf.load_phi4 in fresh
processes. Random weights are enough: loading cost depends on sizes and dtypes, not on the values.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from anywhere: the project's files are plain modules at the repository root

import torch  # noqa: E402

import cli  # noqa: E402
from model import PRESETS, Phi4, get_config  # noqa: E402


def measure_load(size: str = "1b", folder: str = "/tmp/phi4_hf_measure", keep: bool = False):
    """Save a random `size` model in bfloat16 (like the release), then time from_pretrained in fresh
    processes, loading as bfloat16 and as float32, and print time and peak host memory vs size on disk.

    A fresh process per load, so its peak resident set (VmHWM, Linux) belongs to that load alone; the
    baseline line is a process that only imports torch and this file. The files were just written, so
    they are in the OS page cache: these are warm-cache figures (a cold disk adds its read time).
    """
    import shutil  # imported here: only this measurement needs them
    import subprocess

    # Random weights are enough: loading cost depends on sizes and dtypes, not on the values.
    with torch.device("meta"):
        model = Phi4(get_config(size))
    model.to(torch.bfloat16).to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(0))
    model.save_pretrained(folder)
    del model
    disk = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    n_shards = sum(name.endswith(".safetensors") for name in os.listdir(folder))
    print(f"{size}: {disk / 1e9:.2f} GB on disk in {n_shards} safetensors shards under {folder}")
    here = ROOT
    # Peak resident memory of the child: VmHWM, its own high-water mark. Not ru_maxrss: Linux carries
    # that across fork and exec, so a child of this (by now large) process would report our peak.
    report = (
        "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0].split()[1]; "
        "print(f'{time.perf_counter() - start:.1f} s, peak RSS {int(hwm) / 1e6:.2f} GB')"
    )
    runs = {
        "baseline (import only)": "start = time.perf_counter()",
        "from_pretrained bfloat16": f"start = time.perf_counter(); Phi4.from_pretrained({folder!r}, dtype='bfloat16')",
        "from_pretrained float32": f"start = time.perf_counter(); Phi4.from_pretrained({folder!r}, dtype='float32')",
    }
    for label, code in runs.items():
        program = f"import time, torch; from model import Phi4; {code}; {report}"
        result = subprocess.run([sys.executable, "-c", program], cwd=here, capture_output=True, text=True, check=True)
        print(f"  {label}: {result.stdout.strip()}")
    if not keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    parser = cli.Parser(description="Time loading a random model of a preset from a Hugging Face folder.")
    parser.add_argument("size", nargs="?", default="1b", choices=list(PRESETS), help="model preset")
    parser.add_argument("--folder", default="/tmp/phi4_hf_measure", help="where the random model is written")
    parser.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    args = parser.parse_args()
    measure_load(args.size, args.folder, args.keep)
