"""bench.py measures what it says, checked against oracles that do not share its code. No timing is asserted.

- The comparison is fair: the transformers model bench.py builds holds exactly our weights (bf16, tensor by
  tensor against the fused HF layout), gives our logits, and with bench.py's generation settings decodes
  the same greedy tokens as our generate.
- The FLOPs credited are the textbook counts, with N counted on the transformers model: 6N + 12 L C T per
  trained token (model.flops_per_token) and 2N per decoded token.
- The matmul peak is positive and reports bf16 exactly when the hardware has it.
- The recommendation follows the numbers (known answers on made-up measurements); compilation is timed into
  an empty kernel cache.
- A short run prints every row of both tables; `python bench.py --help` works; without transformers one
  line says so; scripts/gpu_check.sh exits 1 with one line on a machine without a GPU.
- scripts/gpu_check.sh, which only a GPU runs, is rehearsed here: every command it runs is accepted by its
  own script's parser, and its summaries read what train.py and bench.py write (their CPU runs, same keys).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import bench
from sample import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A short run of every part on a toy-width model of 2 layers (seconds); compilation is left out (it takes
# tens of seconds on 2 cores) and tested through `recommend` instead.
SHORT_RUN = ["--repeats", "2", "--n-layer", "2", "--batch-size", "2", "--seq-len", "32", "--prompt-len", "8",
             "--new-tokens", "4", "--sample-batch", "3", "--matmul-size", "64", "--no-compile"]


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair(transformers):
    """Ours (toy width, vocab 832, 2 layers) and the transformers model bench.py builds from it."""
    ours = bench.build_ours(bench.bench_config("toy", None, 2), torch.device("cpu"), torch.float32, seed=0).eval()
    return ours, bench.build_theirs(ours, transformers).eval()


def test_the_default_shape_is_the_toy_model_train_py_builds():
    config = bench.bench_config("toy", None, None)
    assert (config.vocab_size, config.n_layer, config.d_model, config.max_seq_len) == (1088, 4, 128, 256)


@pytest.mark.exercise("rope")
def test_the_transformers_copy_holds_our_weights_exactly_in_bf16(transformers):
    ours = bench.build_ours(bench.bench_config("toy", None, 2), torch.device("cpu"), torch.bfloat16, seed=1)
    theirs = bench.build_theirs(ours, transformers).state_dict()
    assert theirs["model.embed_tokens.weight"].dtype == torch.bfloat16
    for i, block in enumerate(ours.blocks):
        attn, mlp = block.attn, block.mlp
        # HF fuses q, k, v (rows in that order) and gate, up: the oracle is the concatenation.
        qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        assert torch.equal(theirs[f"model.layers.{i}.self_attn.qkv_proj.weight"], qkv)
        assert torch.equal(theirs[f"model.layers.{i}.mlp.gate_up_proj.weight"],
                           torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        assert torch.equal(theirs[f"model.layers.{i}.mlp.down_proj.weight"], mlp.down_proj.weight)
    assert torch.equal(theirs["lm_head.weight"], ours.lm_head.weight)


@pytest.mark.exercise("rmsnorm_swiglu", "rope")
def test_both_models_give_the_same_logits_on_the_same_input(pair):
    ours, theirs = pair
    idx = torch.randint(0, 832, (3, 37), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache")
def test_with_bench_settings_transformers_decodes_our_greedy_tokens(transformers):
    # A wide init separates the logits, so greedy choices are not near-ties that rounding could flip.
    config = replace(bench.bench_config("toy", None, 2), init_std=0.2)
    ours = bench.build_ours(config, torch.device("cpu"), torch.float32, seed=2).eval()
    theirs = bench.build_theirs(ours, transformers).eval()
    prompt = torch.randint(0, 832, (2, 9), generator=torch.Generator().manual_seed(3))
    expected = generate(ours, prompt, 12, temperature=0)
    with torch.no_grad():
        got = theirs.generate(prompt, generation_config=bench.hf_generation_config(transformers, 12, 0.0))
    assert torch.equal(got, expected)


def test_sampling_settings_turn_off_transformers_top_k_and_top_p(transformers):
    config = bench.hf_generation_config(transformers, 5, 1.0)
    assert config.do_sample and config.temperature == 1.0 and not config.top_k and config.top_p == 1.0
    assert config.min_new_tokens == config.max_new_tokens == 5 and config.eos_token_id is None


def transformers_n(theirs) -> int:
    """N counted on the transformers model: every parameter except the input embedding."""
    return sum(p.numel() for name, p in theirs.named_parameters() if "embed_tokens" not in name)


@pytest.mark.exercise("rope")
def test_the_train_flops_are_6n_plus_attention_counted_on_the_transformers_model(pair):
    ours, theirs = pair
    config, T = theirs.config, 256
    expected = 6 * transformers_n(theirs) + 12 * config.num_hidden_layers * config.hidden_size * T
    assert bench.train_flops_per_token(ours, T) == expected == ours.flops_per_token(T)


@pytest.mark.exercise("rope")
def test_the_decode_flops_are_two_per_weight_outside_the_embedding(pair):
    ours, theirs = pair
    assert bench.decode_flops_per_token(ours) == 2 * transformers_n(theirs)


def test_the_matmul_peak_is_positive_and_has_bf16_exactly_when_the_cpu_does():
    peak = bench.measure_peak(64, 2, torch.device("cpu"))
    assert peak["fp32"] > 0 and peak["peak"] >= peak["fp32"]
    assert (peak["bf16"] is not None) == bench.has_fast_bf16(torch.device("cpu"))
    if peak["bf16"] is not None:
        assert peak["bf16"] > 0 and peak["peak"] == max(peak["fp32"], peak["bf16"])


def made_up(fp32, bf16, compiled):
    """Measurements in the shape `interleaved` returns (tokens/s per call); below, 1,000 tokens per step."""
    return {bench.FP32_ROW: fp32, bench.BF16_ROW: bf16, bench.COMPILE_ROW: compiled}


def test_an_option_that_wins_every_repeat_is_recommended():
    rates = made_up([100, 50, 100], [200, 100, 200], [100, 50, 100])
    lines = bench.recommend(rates, {bench.COMPILE_ROW: 1.0}, 1000, 1, run_steps=1200)
    assert lines[-1].startswith(f"recommendation: use {bench.BF16_ROW}") and "2.00x" in lines[-1]


def test_compilation_is_recommended_only_if_it_pays_back_within_the_run():
    # Compiled steps take 5 s instead of 10 s. The first call of 2 steps took 1,010 s: 1,000 s of compiling,
    # paid back after 200 steps.
    rates = made_up([100, 100, 100], [100, 100, 100], [200, 200, 200])
    assert bench.COMPILE_ROW in bench.recommend(rates, {bench.COMPILE_ROW: 1010.0}, 1000, 2, run_steps=1200)[-1]
    lines = bench.recommend(rates, {bench.COMPILE_ROW: 1010.0}, 1000, 2, run_steps=100)
    assert any("paid back after 200 " in line for line in lines)
    assert lines[-1].startswith("recommendation: keep fp32 eager")


def test_bf16_with_compile_is_recommended_when_fastest_and_pays_back_its_compile_time():
    # Compiled bf16 steps take 2.5 s instead of 10 s; its first call of 1 step took 22.5 s: 20 s of compiling,
    # paid back after 3 steps. bf16 eager (5 s a step) is faster than fp32 too, but not the fastest.
    rates = made_up([100, 100, 100], [200, 200, 200], [100, 100, 100])
    rates[bench.BF16_COMPILE_ROW] = [400, 400, 400]
    lines = bench.recommend(rates, {bench.COMPILE_ROW: 1.0, bench.BF16_COMPILE_ROW: 22.5}, 1000, 1, run_steps=1200)
    assert any(line.startswith(f"{bench.BF16_COMPILE_ROW}: 20 s to compile, paid back after 3 ") for line in lines)
    assert lines[-1].startswith(f"recommendation: use {bench.BF16_COMPILE_ROW}") and "4.00x" in lines[-1]
    lines = bench.recommend(rates, {bench.COMPILE_ROW: 1.0, bench.BF16_COMPILE_ROW: 22.5}, 1000, 1, run_steps=2)
    assert lines[-1].startswith(f"recommendation: use {bench.BF16_ROW}")


def test_a_difference_within_the_noise_keeps_fp32():
    rates = made_up([100, 100, 100], [150, 90, 150], [95, 105, 100])
    lines = bench.recommend(rates, {bench.COMPILE_ROW: 1.0}, 1000, 1, run_steps=1200)
    assert "no clear difference" in lines[0] and lines[-1].startswith("recommendation: keep fp32 eager")


def test_only_runs_that_disagree_by_more_than_30_percent_get_a_note():
    assert bench.noise_note({"ours": [100, 110, 90], "hf": [50, 51, 49]}) is None
    assert "--threads 1" in bench.noise_note({"ours": [100, 110, 90], "hf": [50, 5, 49]})


@pytest.mark.skipif(bench.USER_COMPILE_CACHE, reason="TORCHINDUCTOR_CACHE_DIR is set: bench.py keeps the user's cache")
def test_compilation_is_timed_into_an_empty_cache_and_the_setting_restored():
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with bench.fresh_compile_cache():
        folder = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        assert folder != before and os.listdir(folder) == []
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == before and not os.path.exists(folder)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_a_short_run_prints_every_row_of_both_tables(transformers, capsys, tmp_path):
    results = bench.run(bench.parse_args(SHORT_RUN + ["--json", str(tmp_path / "bench.json")]))
    lines = capsys.readouterr().out.splitlines()
    for row in [bench.TRAIN_ROW, bench.GREEDY_ROW, bench.SAMPLING_ROW.format(n=3), bench.FP32_ROW, bench.BF16_ROW,
                "matmul peak", "recommendation:"]:
        assert any(line.startswith(row) for line in lines), row
    bf16 = [f"{bench.TRAIN_ROW} bf16 autocast"] if bench.has_fast_bf16(torch.device("cpu")) else []
    assert [row["name"].split(",")[0] for row in results["rows"]] == [
        bench.TRAIN_ROW, *bf16, bench.GREEDY_ROW, bench.SAMPLING_ROW.format(n=3)]
    for row in results["rows"]:
        assert row["ours_tok_s"] > 0 and row["hf_tok_s"] > 0 and len(row["samples"]["ours"]) == 2
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["flops_per_token"] == \
        results["rows"][0]["flops_per_token"]
    assert any(line.startswith("one layer's attention") for line in lines)
    # The attention part: the train step's shape and midtraining's (4x the context, a quarter of the rows),
    # each implementation timed at each, in fp32 and (with bf16 instructions) bf16.
    dtypes = ["float32"] + (["bfloat16"] if bf16 else [])
    assert [(row["batch"], row["seq_len"], row["dtype"]) for row in results["attention"]] == \
        [(2, 32, d) for d in dtypes] + [(1, 128, d) for d in dtypes]
    for row in results["attention"]:
        assert set(row["ms"]) == {"naive", "sdpa", "blockwise"} and min(row["ms"].values()) > 0


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_without_transformers_one_line_says_so_and_ours_still_runs(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    results = bench.run(bench.parse_args(SHORT_RUN + ["--parts", "decode"]))
    out = capsys.readouterr().out
    assert sum("transformers is not installed" in line for line in out.splitlines()) == 1
    assert all(row["hf_tok_s"] is None and row["ours_tok_s"] > 0 for row in results["rows"])


@pytest.mark.exercise("gqa_attention", "rmsnorm_swiglu", "rope")
def test_the_attention_flags_reach_both_models(transformers, capsys):
    results = bench.run(bench.parse_args(SHORT_RUN + ["--parts", "train", "--attn-impl", "naive", "--hf-attn", "eager"]))
    assert results["config"]["attn_impl"] == "naive"
    assert "attention: ours naive, transformers eager" in capsys.readouterr().out.splitlines()
    ours = bench.build_ours(bench.bench_config("toy", None, 2, "naive"), torch.device("cpu"), torch.float32)
    assert bench.build_theirs(ours, transformers, "eager").config._attn_implementation == "eager"


def test_bench_answers_help():
    result = subprocess.run([sys.executable, "bench.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout and "--repeats" in result.stdout


@pytest.mark.parametrize("flags, message", [
    (["--parts", "train", "--seq-len", "512"], "--seq-len 512 exceeds the toy context of 256"),
    (["--parts", "decode", "--prompt-len", "200", "--new-tokens", "100"],
     "--prompt-len 200 + --new-tokens 100 exceeds the toy context of 256"),
])
def test_a_length_past_the_models_context_is_refused_before_anything_is_built(flags, message):
    args = bench.parse_args(flags)
    config = bench.bench_config(args.size, args.vocab_size, args.n_layer)
    bench.check_lengths(bench.parse_args(["--parts", "train,decode"]), config)  # the defaults fit
    with pytest.raises(ValueError, match=re.escape(message)):
        bench.check_lengths(args, config)


def test_an_unknown_part_fails_in_one_line_naming_the_flag():
    result = subprocess.run([sys.executable, "bench.py", "--parts", "trian"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--parts trian" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_check_exits_1_in_one_line_without_a_gpu():
    result = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1 and "\n" not in output and "GPU" in output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine's torch sees a GPU")
def test_gpu_check_exits_1_in_one_line_when_nvidia_smi_finds_a_gpu_but_torch_does_not(tmp_path):
    # A CPU build of torch on a GPU machine: a stand-in nvidia-smi that finds a GPU, and this CPU torch.
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", PYTHON=sys.executable)
    result = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "out")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1 and "\n" not in output
    assert output.startswith(f"gpu_check.sh: {sys.executable}'s torch sees no CUDA GPU")
    assert not (tmp_path / "out").exists()  # nothing is run or written


def gpu_check_parts() -> list[tuple[str, int, list[str]]]:
    """(name, time limit in s, command) of every `run_part` line of scripts/gpu_check.sh, as bash would split it."""
    with open(os.path.join(ROOT, "scripts", "gpu_check.sh")) as f:
        script = f.read().replace("\\\n", " ")  # continuation lines joined
    parts = []
    for line in script.splitlines():
        if line.startswith("run_part "):
            line = line.replace('"$OUT_DIR"', "out/gpu_check").replace('"$PYTHON"', "python")
            _, name, limit, *command = shlex.split(line)
            parts.append((name, int(limit), command))
    return parts


def test_every_command_gpu_check_runs_is_accepted_by_its_own_scripts_parser():
    # A misspelt flag would cost a GPU run (minutes of a rare budget) to find; here it costs a second.
    parts = gpu_check_parts()
    assert [name for name, _, _ in parts] == ["kernel_tests", "kernel_bench", "train_mfu", "decode"]
    assert sum(limit for _, limit, _ in parts) <= 420  # the script's promise: under 8 minutes with start-up
    for name, _, command in parts:
        assert command[0] == "python", name
        script, flags = command[1], command[2:]
        if command[1:3] == ["-m", "pytest"]:
            test_file = os.path.join(ROOT, command[-1])
            assert "-m" in flags and flags[flags.index("-m") + 1] == "gpu"
            assert "pytest.mark.gpu" in open(test_file).read()
        elif script == "train.py":
            import train

            config = train.parse_args(flags)
            assert config.device == "cuda" and config.compile
        elif script == "bench.py":
            assert bench.parse_args(flags).device == "cuda"
        elif script == "flash_attention.py":
            # Its parser lives under __main__: run it. Parsed flags reach the GPU check (exit 1), bad ones exit 2.
            result = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert result.returncode == 1 and "needs a CUDA GPU" in result.stderr, result.stderr
        else:
            pytest.fail(f"gpu_check.sh's part {name} runs {script}, which this test does not know how to check")


def run_gpu_check_results(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/gpu_check_results.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "lr_schedule", "kv_cache", "sampling")
def test_gpu_check_summaries_read_the_files_train_py_and_bench_py_write(tmp_path):
    """The two parts' commands at toy size on the CPU, then the script's summaries over their files."""
    for command in (["train.py", "--size", "toy", "--data", "random", "--device", "cpu", "--steps", "7", "--warmup-steps",
                     "1", "--eval-every", "0", "--save-every", "0", "--batch-size", "2", "--seq-len", "32",
                     "--out", str(tmp_path / "train")],
                    ["bench.py", *SHORT_RUN, "--parts", "peak,decode", "--no-hf", "--json", str(tmp_path / "decode.json")]):
        run = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr  # the stderr says which exercise is missing in a handout
    (tmp_path / "results.txt").write_text("gpu_check.sh, a date, commit abc\nGPU name\ntorch x\n\n== decode: ok\n")
    (tmp_path / "parts.jsonl").write_text('{"part": "train_mfu", "status": "ok"}\n{"part": "decode", "status": "ok"}\n')

    result = run_gpu_check_results("train", str(tmp_path))
    assert result.returncode == 0, result.stderr
    log = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    steady = [r["tok_s"] for r in log if r["step"] >= 6]
    assert len(steady) == 2
    median = sum(steady) / 2  # steps 6 and 7: the median of two is their mean
    assert result.stdout.startswith(f"train_mfu: steps 6-7: median {median:,.0f} tok/s, MFU n/a")
    assert json.loads((tmp_path / "train_mfu.json").read_text())["last_loss"] == log[-1]["loss"]

    assert run_gpu_check_results("merge", str(tmp_path)).returncode == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    decode = json.loads((tmp_path / "decode.json").read_text())
    assert merged["header"] == ["gpu_check.sh, a date, commit abc", "GPU name", "torch x"]
    assert [p["part"] for p in merged["parts"]] == ["train_mfu", "decode"]
    assert merged["decode_rows"] == decode["rows"] and merged["matmul_peak"] == decode["peak"]
    assert merged["train_mfu"]["median_tok_s"] == pytest.approx(median)


def test_the_mfu_summary_takes_medians_over_the_steady_steps_only(tmp_path):
    # A GPU's log, by hand: steps 1-5 (compiling) are slow and must not count; MFU and memory are present.
    (tmp_path / "train").mkdir()
    records = [{"step": s, "loss": 10.0 - s, "tok_s": 100.0 * s, "mfu": 0.01 * s, "peak_mem_gb": 20.0 + s}
               for s in range(1, 10)]
    (tmp_path / "train" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_gpu_check_results("train", str(tmp_path))
    # Steps 6-9: tok/s 600-900 (median 750), MFU 6-9% (median 7.5%), highest memory 29 GB, last loss 1.
    assert result.stdout.strip() == "train_mfu: steps 6-9: median 750 tok/s, MFU 7.5%, peak memory 29.0 GB, loss 1.000"
    assert run_gpu_check_results("--help").returncode == 0
    assert run_gpu_check_results("trian", str(tmp_path)).returncode == 2
