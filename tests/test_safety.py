"""Safe by default: bad input gets one line, files are never trusted, nothing non-finite is saved.

- Every float flag of train.py and dpo.py takes a fraction; a range check of the wrong kind is refused.
- A table of bad inputs to the scripts: each exits non-zero with one line `error: ...` that names the
  flag, file or line at fault, prints no traceback, and changes no file that existed before.
- A crafted checkpoint record carrying a pickle payload is refused without running it; a flipped bit in
  a shard is caught by its checksum; NaN weights are refused by name (our checkpoints and HF folders).
- --resume keeps the saved run's settings and refuses a different schedule; its log has one record
  per step.
- DPO never trusts reference log-probs written for another model: the first step's loss is ln 2.
- A non-finite loss stops training before the optimizer step, and nothing is saved.
- config.json's special-token ids come from the tokenizer, also when the vocabulary is padded.
"""

import concurrent.futures
import dataclasses
import json
import math
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

import checkpoint
import cli
import dpo
import files
import hf
import parallel
import train
import trainer
from model import Phi4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(folder) -> dict:
    """Every file under folder with its bytes: what a failed command must leave as it found it."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[path] = f.read()
    return found


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_checkpoint, toy_data_dir):
    """A folder holding a tiny checkpoint (ckpt/), an eval.json beside it, and malformed inputs."""
    root = tmp_path_factory.mktemp("bad_inputs")
    tiny_checkpoint(root / "ckpt")
    (root / "ckpt" / "eval.json").write_text('{"accuracy": 0.5}\n')  # a real score no failed run may replace
    lines = {
        "bad_json.jsonl": '{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [\n',
        "no_content.jsonl": '{"messages": [{"role": "user"}]}\n',
        "float_ids.jsonl": '{"prompt_ids": [1, 2], "chosen_ids": [3.0], "rejected_ids": [4]}\n',
        "huge_ids.jsonl": '{"prompt_ids": [1, 2], "chosen_ids": [99999999], "rejected_ids": [4]}\n',
        "not_object.jsonl": '[1, 2, 3]\n',
    }
    for name, text in lines.items():
        (root / name).write_text(text)
    (root / "texts").mkdir()
    (root / "texts" / "docs.jsonl").write_text('{"text": "fine"}\n{"text": 5}\n')
    (root / "corrupt").mkdir()
    (root / "corrupt" / "ckpt.pt").write_bytes(b"not a checkpoint at all")
    shutil.copytree(root / "ckpt", root / "no_shards")
    for shards in (root / "no_shards").glob("shards-*"):
        shutil.rmtree(shards)
    (root / "problems").mkdir()
    (root / "problems" / "eval.jsonl").write_text('{"question": "q", "solution": "s", "answer": "7", "level": 1}\n')
    (root / "no_data").mkdir()  # a data folder without its splits
    (root / "no_questions").mkdir()
    (root / "no_questions" / "rl.jsonl").write_text("")
    return root


# (name, argv, what the error line must contain). {ws} is the workspace, {data} the toy data folder.
BAD_INPUTS = [
    ("batch size 0", ["train.py", "--batch-size", "0"], "--batch-size"),
    ("no steps", ["train.py", "--steps", "0"], "--steps"),
    ("sequence length 0", ["train.py", "--seq-len", "0"], "--seq-len"),
    ("a NaN learning rate", ["train.py", "--lr", "nan"], "--lr"),
    ("negative world size", ["train.py", "--dry-run", "--world-size", "-2"], "--world-size"),
    ("dpo saving every -1 steps", ["dpo.py", "--save-every", "-1"], "--save-every"),
    ("dpo beta 0", ["dpo.py", "--beta", "0"], "--beta"),
    ("top-k 0", ["sample.py", "--top-k", "0"], "--top-k"),
    ("top-p 0", ["sample.py", "--top-p", "0"], "--top-p"),
    ("negative new tokens", ["sample.py", "--max-new-tokens", "-5"], "--max-new-tokens"),
    ("an empty prompt", ["sample.py", "--prompt", ""], "--prompt"),
    ("eval limit 0 (eval.json must survive)", ["eval.py", "--init", "{ws}/ckpt", "--limit", "0"], "--limit"),
    ("one rejection sample", ["rejection_sampling.py", "--init", "{ws}/ckpt", "--samples", "1"], "--samples"),
    ("pts with one rollout", ["pts.py", "--rollouts", "1"], "--rollouts"),
    ("14b on this machine", ["train.py", "--size", "14b", "--data", "random", "--out", "{ws}/big"], "GB per rank"),
    ("SFT data that is not JSON", ["train.py", "--stage", "sft", "--init", "{ws}/ckpt", "--data", "{data}",
                                   "--sft-data", "{ws}/bad_json.jsonl", "--out", "{ws}/o"], "bad_json.jsonl, line 2"),
    ("a message without content", ["train.py", "--stage", "sft", "--init", "{ws}/ckpt", "--data", "{data}",
                                   "--sft-data", "{ws}/no_content.jsonl", "--out", "{ws}/o"], "no_content.jsonl, line 1"),
    ("float token ids", ["dpo.py", "--init", "{ws}/ckpt", "--pairs", "{ws}/float_ids.jsonl", "--out", "{ws}/d"],
     "float_ids.jsonl, line 1"),
    ("ids past the vocabulary", ["dpo.py", "--init", "{ws}/ckpt", "--pairs", "{ws}/huge_ids.jsonl", "--out", "{ws}/d"],
     "huge_ids.jsonl, line 1"),
    ("a pair that is not an object", ["dpo.py", "--init", "{ws}/ckpt", "--pairs", "{ws}/not_object.jsonl", "--out",
                                      "{ws}/d"], "not_object.jsonl, line 1"),
    ('{"text": 5}', ["data.py", "--input-dir", "{ws}/texts", "--out", "{ws}/shards"], "docs.jsonl, line 2"),
    ("a tokenizer flag without its folder", ["data.py", "--vocab-size", "512", "--out", "{ws}/toy"], "--vocab-size works with --input-dir only"),
    ("a system prompt without --hf", ["sample.py", "--init", "{ws}/ckpt", "--system", "Be brief."], "--system works with --hf only"),
    ("a weight dtype for our own checkpoint", ["benchmarks.py", "--task", "math", "--init", "{ws}/ckpt", "--dtype", "bfloat16"],
     "--dtype works with --hf only"),
    ("transformers' attention with transformers left out", ["bench.py", "--no-hf", "--hf-attn", "eager"], "--hf-attn"),
    ("chat data for pretraining", ["train.py", "--sft-data", "{ws}/no_content.jsonl", "--out", "{ws}/o"],
     "--sft-data is for --stage sft; this run is --stage pretrain"),
    ("a memory size without --dry-run", ["train.py", "--gpu-memory-gb", "40", "--out", "{ws}/o"], "--gpu-memory-gb works with --dry-run"),
    ("a world size without --dry-run", ["train.py", "--world-size", "8", "--data", "random", "--steps", "1", "--out", "{ws}/o"],
     "--world-size 8 is for --dry-run"),
    ("rows longer than the checkpoint's context", ["train.py", "--init", "{ws}/ckpt", "--data", "{data}", "--seq-len", "128",
                                                  "--out", "{ws}/o"], "--seq-len 128 exceeds the model's max_seq_len 64"),
    ("a recall flag without --long", ["eval.py", "--init", "{ws}/ckpt", "--long-docs", "50"], "--long-docs works with --long only"),
    ("an answer that is a string", ["eval.py", "--init", "{ws}/ckpt", "--data", "{ws}/problems"], "eval.jsonl, line 1"),
    ("sample from a corrupt checkpoint", ["sample.py", "--init", "{ws}/corrupt"], "corrupt"),
    ("evaluate a checkpoint without shards", ["eval.py", "--init", "{ws}/no_shards"], "missing"),
    ("PTS on a corrupt checkpoint", ["pts.py", "--init", "{ws}/corrupt", "--data", "{data}"], "corrupt"),
    ("DPO from a checkpoint without shards", ["dpo.py", "--init", "{ws}/no_shards", "--pairs", "{ws}/float_ids.jsonl",
                                              "--out", "{ws}/d"], "missing"),
    ("PTS without its questions", ["pts.py", "--init", "{ws}/ckpt", "--data", "{ws}/no_data"], "no_data/rl.jsonl not found"),
    ("PTS speed on no question", ["pts.py", "--init", "{ws}/ckpt", "--data", "{ws}/no_questions", "--bench"],
     "rl.jsonl holds no questions; --bench needs one"),
    ("held-out samples without the held-out file", ["sample.py", "--init", "{ws}/ckpt", "--data", "{ws}/no_data"],
     "no_data/eval.jsonl not found"),
    ("rejection sampling past the last problem", ["rejection_sampling.py", "--init", "{ws}/ckpt", "--data", "{data}",
                                                  "--skip", "1000000", "--out", "{ws}/rs"], "no problems after --skip 1000000"),
]


@pytest.fixture(scope="module")
def bad_input_runs(request, workspace, toy_data_dir):
    """The BAD_INPUTS cases this session selected, run two at a time (each is mostly imports, on one core)
    -> ({case name: its CompletedProcess}, the workspace's files before, the same after every run)."""
    chosen = {item.callspec.id for item in request.session.items
              if item.originalname == "test_bad_input_exits_with_one_error_line_naming_the_fault_and_changes_no_file"}
    commands = {name: [sys.executable, *(arg.format(ws=workspace, data=toy_data_dir) for arg in argv)]
                for name, argv, _ in BAD_INPUTS if name in chosen}

    def run(name):
        return name, subprocess.run(commands[name], cwd=ROOT, capture_output=True, text=True, timeout=300)

    before = snapshot(workspace)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(run, commands))
    return results, before, snapshot(workspace)


@pytest.mark.exercise("bpe", "rope")
@pytest.mark.parametrize("expected", [case[2] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_exits_with_one_error_line_naming_the_fault_and_changes_no_file(request, bad_input_runs, expected):
    results, before, after = bad_input_runs
    result = results[request.node.callspec.id]
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected in lines[0]
    # No run overwrote a file that was there before any of them (a broken guard shows its own --out path here).
    assert {path: data for path, data in after.items() if path in before} == before


@pytest.mark.parametrize("script", ["sample.py", "eval.py"])
def test_without_init_and_without_any_checkpoint_under_out_the_error_says_how_to_make_one(tmp_path, script):
    result = subprocess.run([sys.executable, os.path.join(ROOT, script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)  # a folder without out/: the newest checkpoint is none
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: no checkpoint under out/; train one with `python train.py` or pass --init DIR"

# train.py's --dry-run: --gpu-memory-gb works with it only.
@pytest.mark.parametrize("script, config, base", [(train, train.TrainConfig, ["--dry-run"]), (dpo, dpo.DPOConfig, [])],
                         ids=["train.py", "dpo.py"])
def test_every_float_flag_of_a_config_script_takes_a_fraction(script, config, base):
    # A range check written for ints on a float field refuses "0.5" with "expected an integer".
    floats = [field.name for field in dataclasses.fields(config) if field.type in ("float", "float | None")]
    assert "lr" in floats  # the fields are found (their annotations are strings, as the parser reads them)
    for name in floats:
        cfg = script.parse_args([*base, "--" + name.replace("_", "-"), "0.5"])
        assert getattr(cfg, name) == 0.5, name


def test_a_range_check_of_the_wrong_kind_is_refused_when_the_parser_is_built():
    @dataclasses.dataclass
    class Config:
        weight: "float" = 1.0  # a string, as in a module with `from __future__ import annotations`
        HELP = {"weight": "a weight"}
        LIMITS = {"weight": cli.at_least(0.0)}  # parses ints: "0.5" would be refused

    with pytest.raises(TypeError, match="LIMITS\\['weight'\\] parses int, the field is float"):
        cli.config_parser(Config, "a script")


def test_a_flag_is_never_guessed_from_its_prefix(capsys):
    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--step", "5"])  # a typo of --steps (or of --stage) must not run as either
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: unrecognized arguments: --step 5")


def test_ctrl_c_in_a_script_prints_one_line_and_exits_130(capsys):
    def body():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        cli.main(body)
    assert stop.value.code == 130  # 128 + SIGINT, as the shell reports a program Ctrl-C stopped
    assert capsys.readouterr().err == "interrupted (the last checkpoint, if any, is intact)\n"


def test_a_json_file_not_written_yet_reads_as_none_and_a_broken_one_names_its_line(tmp_path):
    assert files.read_json(str(tmp_path / "eval.json")) is None  # a stage that has not run: the report skips it
    (tmp_path / "eval.json").write_text('{\n  "pass_at_1": 0.5,\n}\n')
    with pytest.raises(files.DataError, match=r"eval.json, line 3: not valid JSON"):
        files.read_json(str(tmp_path / "eval.json"))


# -- checkpoints are data, not code ---------------------------------------------------------------


class Payload:
    """Unpickling this runs os.system: what a crafted ckpt.pt would do to whoever opens it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.exercise("bpe", "rope")
def test_a_checkpoint_record_carrying_a_pickle_payload_is_refused_without_running_it(tmp_path, tiny_checkpoint):
    tiny_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "payload-ran"
    record = torch.load(tmp_path / "ckpt" / "ckpt.pt", weights_only=True)
    record["step"] = Payload(marker)  # smuggled inside an otherwise valid record
    with open(tmp_path / "ckpt" / "ckpt.pt", "wb") as f:
        pickle.dump(record, f)  # a plain pickle, as torch.save(weights_only=False) would read it
    with pytest.raises(ValueError, match="corrupt or not ours"):
        checkpoint.read_checkpoint(str(tmp_path / "ckpt"))
    assert not marker.exists()


@pytest.mark.exercise("bpe", "rope")
def test_a_flipped_bit_in_a_shard_is_caught_by_its_checksum(tmp_path, tiny_checkpoint):
    tiny_checkpoint(tmp_path / "ckpt")
    record = checkpoint.read_checkpoint(str(tmp_path / "ckpt"))
    data_file = next(name for name in sorted(os.listdir(record["shard_dir"])) if name.endswith(".distcp"))
    path = os.path.join(record["shard_dir"], data_file)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x04]))  # one bit: the weights would still be finite numbers
    with pytest.raises(ValueError, match=f"{data_file} is corrupt"):
        checkpoint.load_model(str(tmp_path / "ckpt"))


@pytest.mark.exercise("bpe", "rope")
def test_a_record_from_elsewhere_a_missing_shard_file_or_tokenizer_is_refused_naming_it(tmp_path, tiny_checkpoint):
    for name in ("foreign", "no_shard_file", "no_tokenizer"):
        tiny_checkpoint(tmp_path / name)
    torch.save({"epoch": 3, "state_dict": {}}, tmp_path / "foreign" / "ckpt.pt")  # a torch file, not our record
    with pytest.raises(ValueError, match="is not from this project"):
        checkpoint.read_checkpoint(str(tmp_path / "foreign"))
    shard_dir = checkpoint.read_checkpoint(str(tmp_path / "no_shard_file"))["shard_dir"]
    data_file = next(name for name in sorted(os.listdir(shard_dir)) if name.endswith(".distcp"))
    os.remove(os.path.join(shard_dir, data_file))  # the folder stays, one rank's file is gone
    with pytest.raises(ValueError, match=f"{data_file} is missing"):
        checkpoint.load_model(str(tmp_path / "no_shard_file"))
    os.remove(tmp_path / "no_tokenizer" / "tokenizer.json")
    with pytest.raises(ValueError, match="tokenizer.json is missing"):
        checkpoint.load_model(str(tmp_path / "no_tokenizer"))


@pytest.mark.exercise("bpe", "rope")
def test_a_checkpoint_too_large_for_memory_is_refused_before_its_weights_are_read(tmp_path, tiny_checkpoint, monkeypatch):
    tiny_checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr(parallel, "available_bytes", lambda device: 1000.0)  # a machine with 1 KB free
    monkeypatch.setattr(checkpoint, "load_weights", lambda record, model: pytest.fail("weights read"))
    with pytest.raises(ValueError, match="float32.* needs .* GB per rank .*use a machine with more memory"):
        checkpoint.load_model(str(tmp_path / "ckpt"))


@pytest.mark.exercise("rope")
def test_a_new_checkpoint_in_a_folder_removes_the_shards_of_the_one_it_replaces(tmp_path, tiny_model):
    model = tiny_model()
    for step in (1, 2):
        checkpoint.save_checkpoint(str(tmp_path), model, None, step, None, None)
    shard_folders = [name for name in os.listdir(tmp_path) if name.startswith("shards-")]
    assert shard_folders == [checkpoint.read_checkpoint(str(tmp_path))["shards"]]  # step 2's, and only it
    assert shard_folders[0].startswith("shards-0000002-")


@pytest.mark.exercise("bpe", "rope")
def test_weights_for_another_shape_or_a_missing_optimizer_state_become_one_error_line(tmp_path, tiny_checkpoint):
    # DCP reports both as a CheckpointException, which derives from BaseException, not Exception: the
    # loaders must still turn it into the ValueError the scripts print as one line.
    tiny_checkpoint(tmp_path / "ckpt")  # saved without optimizer state, as a finished stage's --init is
    model, _ = checkpoint.load_model(str(tmp_path / "ckpt"))
    record = checkpoint.read_checkpoint(str(tmp_path / "ckpt"))
    deeper = Phi4(dataclasses.replace(model.config, n_layer=model.config.n_layer + 1))
    with pytest.raises(ValueError, match="cannot load weights from .*blocks.2"):
        checkpoint.load_weights(record, deeper)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match=r"no optimizer state\?.*use --init"):
        checkpoint.load_optimizer(record, model, optimizer)


@pytest.mark.exercise("bpe", "rope")
def test_a_loaded_checkpoint_generates_with_the_default_attention_whatever_its_training_run_used(tmp_path, tiny_checkpoint):
    tiny_checkpoint(tmp_path / "ckpt", attn_impl="triton")  # a GPU run's choice; its kernel takes no per-row mask
    model, _ = checkpoint.load_model(str(tmp_path / "ckpt"))
    assert model.config.attn_impl == "sdpa" and all(block.attn.config.attn_impl == "sdpa" for block in model.blocks)


@pytest.mark.exercise("rope")
def test_nan_weights_are_refused_naming_the_tensor(tmp_path, tiny_model):
    model = tiny_model()
    with torch.no_grad():
        model.blocks[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.up_proj\.weight"):
        checkpoint.check_finite(model.named_parameters(), "here")
    model.save_pretrained(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        hf.load_phi4(str(tmp_path / "hf"))


@pytest.mark.exercise("bpe", "rope")
def test_config_json_takes_its_special_token_ids_from_the_tokenizer_on_a_padded_vocabulary(tmp_path, tiny_checkpoint):
    tokenizer = tiny_checkpoint(tmp_path / "ckpt")
    model, _ = checkpoint.load_model(str(tmp_path / "ckpt"))
    assert model.config.vocab_size > tokenizer.vocab_size  # padded to a multiple of 64
    model.save_pretrained(str(tmp_path / "hf"), tokenizer=tokenizer)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        tokenizer.special_tokens["<|endoftext|>"], tokenizer.special_tokens["<|im_end|>"], tokenizer.special_tokens["<|dummy_85|>"])
    model.save_pretrained(str(tmp_path / "hf2"))  # without the tokenizer: no guess from the padded size
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["eos_token_id"] is None


# -- resume continues the saved run ----------------------------------------------------------------


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_resume_with_a_changed_schedule_flag_is_refused_naming_it(toy_run, tmp_path):
    train.train(toy_run(tmp_path, steps=4, stop_at=2))
    cfg = trainer.with_given(toy_run(tmp_path, steps=6, resume=True), {"steps", "resume", "out"})
    with pytest.raises(ValueError, match=r"--steps 6 differs from the run being resumed \(--steps 4\)"):
        train.train(cfg)


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_resume_takes_the_saved_schedule_and_logs_each_step_once(toy_run, tmp_path):
    """The stage defaults (steps 1200, warm-up 50) must not replace the saved run's 4 and 1 on resume."""
    straight = train.train(toy_run(tmp_path / "a", steps=4, save_every=1))
    train.train(toy_run(tmp_path / "b", steps=4, save_every=1, stop_at=3))
    # The last save was at step 3; pretend the run died during step 4's log line, then resume bare.
    resumed = train.train(trainer.with_given(toy_run(tmp_path / "b", resume=True, steps=None, warmup_steps=None),
                                             {"resume", "out"}))
    assert [r["lr"] for r in resumed] == [r["lr"] for r in straight[3:]]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight[3:]]
    logged = [json.loads(line)["step"] for line in open(tmp_path / "b" / "log.jsonl")]
    assert logged == [1, 2, 3, 4]



@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_resuming_a_finished_run_trains_nothing_and_says_so(toy_run, tmp_path, capsys):
    train.train(toy_run(tmp_path, steps=2))
    log = (tmp_path / "log.jsonl").read_text()
    again = train.train(trainer.with_given(toy_run(tmp_path, resume=True, steps=None, warmup_steps=None), {"resume", "out"}))
    assert again == [] and "done: nothing to run (already at step 2)" in capsys.readouterr().out
    assert (tmp_path / "log.jsonl").read_text() == log

# -- DPO and non-finite values ------------------------------------------------------------------


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "sequence_logprobs", "dpo_loss")
@pytest.mark.parametrize("stale", ["another model", "NaN values"])
def test_dpo_with_untrustworthy_reference_logprobs_recomputes_them_and_starts_at_ln_2(tmp_path, tiny_checkpoint, stale):
    tokenizer = tiny_checkpoint(tmp_path / "a", seed=1)
    tiny_checkpoint(tmp_path / "b", seed=2)
    seven, three = tokenizer.encode("7"), tokenizer.encode("3")
    # Reference log-probs scored by model "a", or by "b" itself but NaN: neither may be used from "b".
    source = "a" if stale == "another model" else "b"
    value = float("nan") if stale == "NaN values" else -9.0
    pairs = [{"prompt_ids": [20 + i, 30, 40], "chosen_ids": seven, "rejected_ids": three,
              "ref_chosen_logp": -1.0 - i, "ref_rejected_logp": value,
              "ref_fingerprint": dpo.reference_fingerprint(str(tmp_path / source))} for i in range(8)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    records = dpo.train_dpo(dpo.DPOConfig(init=str(tmp_path / "b"), pairs=str(tmp_path / "pairs.jsonl"),
                                          out=str(tmp_path / "dpo"), steps=1, batch_size=8, device="cpu"))
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_a_non_finite_loss_stops_training_before_the_step_and_saves_nothing(toy_run, tmp_path, tiny_model):
    model = tiny_model()
    cfg = toy_run(tmp_path, steps=3, save_every=1, lr=1e-3, warmup_steps=1)
    world = parallel.Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), mesh=None, owns_group=False)
    optimizer = trainer.make_optimizer(model, cfg, world.device)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    def step():
        loss = model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)) * float("nan")
        loss.backward()
        return {"loss": loss.item(), "n_tokens": 4}

    with pytest.raises(ValueError, match="step 1: loss nan"):
        trainer.run_loop(cfg, world, model, optimizer, None, 0, "test", step, show={})
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert not os.path.exists(tmp_path / "ckpt.pt")


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache")
def test_generation_that_reaches_the_context_says_so(tiny_model, capsys):
    import sample

    model = tiny_model()  # context of 64 tokens
    answers = sample.sample_completions(model, [[1] * 60, [2] * 10], 1, max_new_tokens=8, stop_tokens=(), temperature=0)
    assert [len(a[0]) for a in answers] == [4, 8]  # the first prompt had room for 4 tokens only
    assert "1 of 2 prompts leave fewer than 8 new tokens in the model's context of 64" in capsys.readouterr().err
