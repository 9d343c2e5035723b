"""data.py: Phi-4's tokenizer against its known ids, the trained BPE against a naive merge oracle,
chat rendering masks, the world's oracle, 13-gram decontamination, shards and the resumable loader."""

import json
import os
import random
import runpy
import subprocess
import sys

import numpy as np
import regex
import pytest

import data
import files
import tokenization
import toyworld

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNICODE_SAMPLES = [
    "hello world",
    "Ünïcödé → ∑ 数学 😀 עברית\n\t  spaces   ",
    "<|im_end|> typed by a user",
    "".join(chr(c) for c in range(0x20, 0x2FF)),
    "",
]


@pytest.fixture(scope="module")
def phi4(cl100k_path):
    return data.Tokenizer.phi4(cl100k_path)


@pytest.fixture(scope="module")
def toy_tokenizer():
    rng = random.Random(0)
    text = "\n".join(toyworld.problem_document(toyworld.make_problem(rng, 3)) for _ in range(300))
    return data.Tokenizer.train(text, 512)


# -- Phi-4's tokenizer ----------------------------------------------------------------------------


def test_phi4_tokenizer_encodes_the_known_special_token_string(phi4):
    ids = phi4.encode("<|im_start|>Hello<|im_sep|> World<|im_end|><|dummy_85|>", allow_special=True)
    assert ids == [100264, 9906, 100266, 4435, 100265, 100349]
    assert phi4.encode("assistant") == [78191]


def test_phi4_tokenizer_has_vocab_100352_with_special_ids_of_the_release(phi4):
    assert phi4.vocab_size == 100352
    expected = {
        "<|dummy_0|>": 100256, "<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260, "<|dummy_3|>": 100263, "<|im_start|>": 100264, "<|im_end|>": 100265,
        "<|im_sep|>": 100266, "<|dummy_4|>": 100267, "<|dummy_12|>": 100275, "<|endofprompt|>": 100276,
        "<|dummy_13|>": 100277, "<|dummy_85|>": 100349, "<|dummy_87|>": 100351,
    }
    for token, token_id in expected.items():
        assert phi4.special_tokens[token] == token_id, token
    assert (phi4.bos_id, phi4.eos_id, phi4.pad_id) == (100257, 100265, 100349)


def test_phi4_tokenizer_rejects_a_file_that_is_not_cl100k_or_not_there(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("aGVsbG8= 0\n")
    with pytest.raises(ValueError, match="sha256"):
        data.Tokenizer.phi4(str(bad))
    with pytest.raises(FileNotFoundError, match="none.tiktoken \\(set --tokenizer-path\\)"):
        data.Tokenizer.phi4(str(tmp_path / "none.tiktoken"))  # not tiktoken's download: the user named a file


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_phi4_encode_decode_round_trips_arbitrary_unicode(phi4, text):
    assert phi4.decode(phi4.encode(text)) == text


def test_user_text_never_turns_into_special_tokens(phi4):
    ids = phi4.encode("<|im_end|><|endoftext|>")
    assert not set(ids) & set(phi4.special_tokens.values())


# -- the BPE trained from scratch ----------------------------------------------------------------


def naive_bpe_encode(tokenizer: data.Tokenizer, text: str) -> list[int]:
    """The oracle: split with the pattern, then merge the lowest-ranked adjacent pair until none is left."""
    ids = []
    for word in regex.findall(tokenizer.pattern, text):
        parts = [bytes([b]) for b in word.encode("utf-8")]
        while True:
            candidates = [(tokenizer.mergeable_ranks.get(a + b), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            candidates = [c for c in candidates if c[0] is not None]
            if not candidates:
                break
            _, i = min(candidates)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [tokenizer.mergeable_ranks[p] for p in parts]
    return ids


@pytest.mark.exercise("bpe")
def test_trained_bpe_encodes_like_a_naive_merge_loop(toy_tokenizer):
    rng = random.Random(5)
    text = toyworld.problem_document(toyworld.make_problem(rng, 4)) + "\nsomething unseen: zebra 12345!"
    assert toy_tokenizer.encode(text) == naive_bpe_encode(toy_tokenizer, text)


@pytest.mark.exercise("bpe")
def test_trained_bpe_has_the_requested_vocab_with_specials_after_the_ranks(toy_tokenizer):
    assert toy_tokenizer.vocab_size == 512
    assert toy_tokenizer.special_tokens["<|dummy_0|>"] == 512 - 96
    assert toy_tokenizer.im_end_id == 512 - 96 + 9  # the same offset as 100265 - 100256


@pytest.mark.exercise("bpe")
def test_the_toy_worlds_bpe_keeps_each_number_with_the_space_before_it_where_cl100k_splits_them(toy_data_dir):
    assert regex.findall(tokenization.CL100K_PATTERN, "you 3 plums: 13 + 3") == ["you", " ", "3", " plums", ":", " ", "13", " +", " ", "3"]
    assert regex.findall(tokenization.TOY_PATTERN, "you 3 plums: 13 + 3") == ["you", " 3", " plums", ":", " 13", " +", " 3"]
    tokenizer = data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")  # the one the toy model trains with
    assert tokenizer.pattern == tokenization.TOY_PATTERN
    text = toyworld.problem_document(toyworld.make_problem(random.Random(6), 4))
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(text)]
    assert " " not in pieces  # no bare space token before any number
    numbers = regex.findall(r" \d+", text)
    assert sum(piece in numbers for piece in pieces) == len(numbers)  # each number one token, space included


@pytest.mark.exercise("bpe")
def test_trained_bpe_compresses_its_training_text(toy_tokenizer):
    text = toyworld.problem_document(toyworld.make_problem(random.Random(1), 2))
    assert len(toy_tokenizer.encode(text)) < len(text.encode("utf-8")) / 2


@pytest.mark.exercise("bpe")
@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_trained_bpe_round_trips_arbitrary_unicode(toy_tokenizer, text):
    assert toy_tokenizer.decode(toy_tokenizer.encode(text)) == text


@pytest.mark.exercise("bpe")
def test_trained_bpe_saves_to_plain_json_and_loads_identically(toy_tokenizer, tmp_path):
    path = tmp_path / "tok.json"
    toy_tokenizer.save(str(path))
    json.loads(path.read_text())  # plain data, no pickled code
    loaded = data.Tokenizer.load(str(path))
    text = "Problem: Mia has 7 apples. ∑ 😀"
    assert loaded.encode(text) == toy_tokenizer.encode(text)
    assert loaded.special_tokens == toy_tokenizer.special_tokens


def test_training_on_empty_text_or_for_fewer_ids_than_bytes_and_specials_fails_clearly():
    with pytest.raises(ValueError, match="empty"):
        data.Tokenizer.train("", 512)
    with pytest.raises(ValueError, match="vocab_size must be at least 352, got 300"):
        data.Tokenizer.train("some text", 300)  # 256 bytes + 96 special tokens: no room, not -52 merges


# -- chat rendering -----------------------------------------------------------------------------


@pytest.mark.exercise("chat_mask")
def test_render_chat_uses_phi4_format_and_masks_only_assistant_content_and_im_end(phi4):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    ids, mask = phi4.render_chat(messages)
    expected_text = (
        "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
        "<|im_start|>assistant<|im_sep|>Hello<|im_end|>"
    )
    assert ids == phi4.encode(expected_text, allow_special=True)
    assert len(mask) == len(ids)
    hello = phi4.encode("Hello")
    # Position by position: loss exactly on the assistant's content tokens and its <|im_end|>.
    assert [i for i, m in enumerate(mask) if m] == list(range(len(ids) - len(hello) - 1, len(ids)))
    assert ids[-1] == phi4.im_end_id


@pytest.mark.exercise("chat_mask")
def test_render_chat_gives_the_phi4_format_and_loss_on_each_assistant_content_and_its_end_only(byte_tokenizer):
    tok = byte_tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
                {"role": "assistant", "content": "6."}]
    ids, mask = tok.render_chat(messages)
    # The oracle: the format written out as text with the special tokens allowed, turn by turn.
    expected_ids, expected_mask = [], []
    for m in messages:
        header = tok.encode(f"<|im_start|>{m['role']}<|im_sep|>", allow_special=True)
        body = tok.encode(f"{m['content']}<|im_end|>", allow_special=True)
        expected_ids += header + body
        expected_mask += [0] * len(header) + [int(m["role"] == "assistant")] * len(body)
    assert ids == expected_ids and mask == expected_mask
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "4<|im_end|>6.<|im_end|>"
    with pytest.raises(ValueError, match="role"):
        tok.render_chat([{"role": "tool", "content": "x"}])


@pytest.mark.exercise("bpe", "chat_mask")
def test_chat_batches_put_loss_exactly_on_assistant_tokens_and_pad_with_a_token_that_is_not_eos(toy_tokenizer):
    tok = toy_tokenizer
    chats = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Mia has 3 apples."},
         {"role": "assistant", "content": "Answer: 3"}, {"role": "user", "content": "And 4?"},
         {"role": "assistant", "content": "Answer: 4"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Answer: 12"}],
    ]
    examples = [tok.render_chat(c) for c in chats]
    loader = data.ChatLoader(examples, batch_size=2, seq_len=256, pad_id=tok.pad_id, seed=0)
    inputs, targets = loader.next_batch()
    assert tok.pad_id != tok.im_end_id
    rows = {tuple(inputs[r, : len(ids) - 1]): r for r, (ids, _) in enumerate(examples)}
    for ids, mask in examples:
        r = next(row for prefix, row in rows.items() if list(prefix) == ids[:-1] and len(prefix) == len(ids) - 1)
        # Position by position: token t+1 is the target exactly where the render mask marks it.
        for t in range(len(ids) - 1):
            assert targets[r, t] == (ids[t + 1] if mask[t + 1] else -100)
        assert (inputs[r, len(ids) - 1 :] == tok.pad_id).all() and (targets[r, len(ids) - 1 :] == -100).all()
        # The assistant turns' <|im_end|> tokens are targets: the model learns to stop.
        im_end_positions = [t for t in range(1, len(ids)) if ids[t] == tok.im_end_id and mask[t]]
        assert len(im_end_positions) == sum(m["role"] == "assistant" for m in chats[examples.index((ids, mask))])
        assert all(targets[r, t - 1] == tok.im_end_id for t in im_end_positions)


def test_chat_epochs_each_show_every_whole_batch_once_in_a_new_order_and_resume_exactly():
    # 7 conversations, global batches of 2 (two ranks of 1): three batches an epoch, the seventh waits for
    # a later epoch's shuffle. Conversation i is the row [i, i] (its first token names it).
    examples = [([i, i], [0, 1]) for i in range(7)]
    ranks = [data.ChatLoader(examples, batch_size=1, seq_len=8, pad_id=99, rank=r, world_size=2, seed=3) for r in (0, 1)]
    epochs = []
    for _ in range(3):
        seen = [int(loader.next_batch()[0][0, 0]) for _ in range(3) for loader in ranks]  # rank 0, rank 1, ...
        assert len(set(seen)) == 6  # six different conversations: none twice in an epoch
        epochs.append(seen)
    assert [loader.state_dict() for loader in ranks] == [{"position": 6, "epoch": 2}] * 2
    assert len({tuple(e) for e in epochs}) == 3  # each epoch its own order
    resumed = data.ChatLoader(examples, batch_size=1, seq_len=8, pad_id=99, rank=0, world_size=2, seed=3)
    resumed.load_state_dict({"position": 4, "epoch": 1})  # rank 0 after one epoch and two batches
    assert int(resumed.next_batch()[0][0, 0]) == epochs[1][4]


def test_a_chat_file_may_mix_world_problems_and_messages_records_and_keeps_their_order(tmp_path):
    # speedrun.sh's RS-SFT data is the teacher's problems followed by the accepted answers, one file.
    rng = random.Random(3)
    problems = [toyworld.make_problem(rng, 2) for _ in range(2)]
    accepted = [{"role": "user", "content": problems[0].question}, {"role": "assistant", "content": "Answer: 7"}]
    path = tmp_path / "mixture.jsonl"
    rows = [problems[0].to_dict(), {"messages": accepted, "source": "rejection_sampling"}, problems[1].to_dict()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert data.read_conversations(str(path)) == [
        [{"role": "user", "content": problems[0].question}, {"role": "assistant", "content": problems[0].solution}],
        accepted,
        [{"role": "user", "content": problems[1].question}, {"role": "assistant", "content": problems[1].solution}],
    ]


@pytest.mark.exercise("chat_mask")
def test_render_prompt_ends_with_an_open_assistant_header(phi4):
    ids = phi4.render_prompt([{"role": "user", "content": "Hi"}])
    assert ids[-3:] == [100264, 78191, 100266]


# -- shards and the loader ------------------------------------------------------------------------


def test_a_shard_round_trips_uint32_ids_above_65535(tmp_path):
    path = str(tmp_path / "s.bin")
    tokens = np.array([0, 100351, 70000, 5], dtype=np.uint32)
    data.write_shard(path, tokens)
    assert data.read_shard(path).tolist() == tokens.tolist()


def test_a_truncated_shard_fails_with_a_clear_error(tmp_path):
    path = str(tmp_path / "s.bin")
    data.write_shard(path, np.arange(100, dtype=np.uint32))
    with open(path, "r+b") as f:
        f.truncate(200)
    with pytest.raises(ValueError, match="truncated"):
        data.read_shard(path)


def write_chat(tmp_path, text: str) -> str:
    path = tmp_path / "chat.jsonl"
    path.write_text(text)
    return str(path)


def foreign_file(tmp_path) -> str:
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(64))  # as long as a header, without the magic
    return str(path)


def shard(tmp_path, tokens, name="s.bin") -> str:
    path = str(tmp_path / name)
    data.write_shard(path, np.asarray(tokens, dtype=np.uint32))
    return path


# (name, a call that must fail, what its message must say). Each reads a file or takes a setting a user
# gives, so each message names the file or the flag to change.
MALFORMED = [
    ("a file that is not a shard", lambda tmp: data.read_shard(foreign_file(tmp)), "x.bin is not a token shard"),
    ("no shards", lambda tmp: data.TokenLoader([], 2, 8), "no token shards given"),
    ("fewer tokens than one batch", lambda tmp: data.TokenLoader([shard(tmp, range(17))], 2, 8),
     "17 tokens, fewer than one batch"),
    ("no conversation fits the rows", lambda tmp: data.ChatLoader([([1] * 20, [0] * 20)], 1, 8, pad_id=0),
     "only 0 conversations fit --seq-len 8"),
    ("a chat file that is not there", lambda tmp: data.read_conversations(str(tmp / "none.jsonl")),
     "none.jsonl not found"),
    ("a conversation without messages", lambda tmp: data.read_conversations(write_chat(tmp, '{"messages": []}\n')),
     'chat.jsonl, line 1: "messages" must be a non-empty list'),
    ("a role that is not one of three", lambda tmp: data.read_conversations(
        write_chat(tmp, '{"messages": [{"role": "robot", "content": "hi"}]}\n')), "line 1: unknown role 'robot'"),
    ("an empty chat file", lambda tmp: data.read_conversations(write_chat(tmp, "")), "chat.jsonl is empty"),
    ("a record of neither kind", lambda tmp: data.read_conversations(write_chat(tmp, '{"text": "hi"}\n')),
     'line 1: a record needs "messages" or "question" + "solution"'),
    ("a long-document shard that does not open a document", lambda tmp: data.shard_documents(shard(tmp, [5, 0, 6]), 0),
     "does not start with <|endoftext|>"),
    ("a long-document share above 1", lambda tmp: data.MixtureLoader([shard(tmp, range(40))], [], 1, 8, 1.5, 0, 0),
     "--long-fraction must be between 0 and 1, got 1.5"),
    ("a long-document share without long documents",
     lambda tmp: data.MixtureLoader([shard(tmp, range(40))], [], 1, 8, 0.3, 0, 0), "no long-document shards"),
    ("a text folder that is a file", lambda tmp: data.read_text_folder(shard(tmp, [1])), "is not a folder"),
    ("a JSON Lines file that is not there", lambda tmp: files.read_jsonl(str(tmp / "none.jsonl")),
     "none.jsonl: no such file"),
]


@pytest.mark.parametrize("call, message", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_each_malformed_shard_chat_file_or_setting_is_refused_with_a_message_naming_it(tmp_path, call, message):
    with pytest.raises(ValueError) as error:  # files.DataError is a ValueError: cli.main prints it as one line
        call(tmp_path)
    assert message in str(error.value)


def test_rebuilding_the_toy_world_first_removes_long_documents_made_with_the_old_tokenizer(tmp_path, monkeypatch):
    for name in ("long_train_000.bin", "long_val_000.bin", data.LONG_META, "train_000.bin"):
        (tmp_path / name).write_bytes(b"from an earlier build")

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop  # the build goes no further than drawing its first split

    monkeypatch.setattr(data.toyworld, "make_split", stop)
    with pytest.raises(Stop):
        data.build_toy_dataset(str(tmp_path))
    assert os.listdir(tmp_path) == ["train_000.bin"]  # the rebuild overwrites the rest itself


def test_a_shard_written_by_two_processes_at_once_is_whole_and_leaves_no_temporary_file(tmp_path):
    # The second writer runs while the first is half-way through its file, as two midtrainings building
    # the same long documents do; each must rename a whole file of its own, and the last rename wins.
    path = str(tmp_path / "long_train_000.bin")
    second = f"import numpy, data; data.write_shard({path!r}, numpy.arange(7, dtype=numpy.uint32))"

    def write_with_a_second_writer_midway(f):
        f.write(data.SHARD_MAGIC + np.uint64(5).tobytes())
        subprocess.run([sys.executable, "-c", second], cwd=ROOT, check=True)
        f.write(np.arange(5, dtype=np.uint32).tobytes())

    files.atomic_write(path, write_with_a_second_writer_midway, binary=True)
    assert data.read_shard(path).tolist() == [0, 1, 2, 3, 4]
    assert os.listdir(tmp_path) == ["long_train_000.bin"]


def make_loader_shards(tmp_path, n=1000):
    paths = []
    for i, chunk in enumerate(np.array_split(np.arange(n, dtype=np.uint32), 3)):  # the stream spans 3 shards
        paths.append(str(tmp_path / f"train_{i:03d}.bin"))
        data.write_shard(paths[-1], chunk)
    return paths


def test_loader_targets_are_inputs_shifted_by_one_across_shard_boundaries(tmp_path):
    loader = data.TokenLoader(make_loader_shards(tmp_path), batch_size=2, seq_len=9)
    for _ in range(60):  # past the end: wraps into a new epoch
        inputs, targets = loader.next_batch()
        assert inputs.shape == (2, 9)
        assert (targets[:, :-1] == inputs[:, 1:]).all() and (targets[:, -1] == inputs[:, -1] + 1).all()
    assert loader.epoch >= 1


def test_loader_resumes_at_its_exact_position(tmp_path):
    paths = make_loader_shards(tmp_path)
    straight = data.TokenLoader(paths, 2, 7)
    batches = [straight.next_batch()[0] for _ in range(40)]
    first = data.TokenLoader(paths, 2, 7)
    for _ in range(25):
        first.next_batch()
    resumed = data.TokenLoader(paths, 2, 7)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # it survives serialisation
    for expected in batches[25:]:
        assert (resumed.next_batch()[0] == expected).all()


def test_loader_ranks_split_the_global_batch_of_a_single_process(tmp_path):
    paths = make_loader_shards(tmp_path)
    single = data.TokenLoader(paths, batch_size=4, seq_len=5)
    ranks = [data.TokenLoader(paths, batch_size=2, seq_len=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(10):
        whole = single.next_batch()[0]
        parts = np.concatenate([loader.next_batch()[0] for loader in ranks])
        assert (whole == parts).all()


# -- the command line -----------------------------------------------------------------------------


def run_data_cli(*args):
    return subprocess.run([sys.executable, "data.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_folder_of_text_without_an_output_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["data.py", "--input-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(os.path.join(ROOT, "data.py"), run_name="__main__")  # the script in this process
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: --input-dir needs --out")


def test_an_empty_corpus_folder_exits_with_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_data_cli("--input-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: --input-dir")


@pytest.mark.exercise("bpe")
def test_a_users_text_folder_becomes_shards_with_a_trained_bpe(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 50)
    (folder / "b.jsonl").write_text("\n".join(json.dumps({"text": f"Line {i} of a document."}) for i in range(30)))
    result = run_data_cli("--input-dir", str(folder), "--out", str(tmp_path / "o"), "--vocab-size", "400")
    assert result.returncode == 0, result.stderr
    tokenizer = data.Tokenizer.load(str(tmp_path / "o" / "tokenizer.json"))
    text = tokenizer.decode(data.read_shard(data.shard_paths(str(tmp_path / "o"), "train")[0]).tolist())
    assert "quick brown fox" in text or "of a document" in text


@pytest.mark.exercise("bpe")
def test_a_folder_of_one_document_puts_it_all_in_training_and_writes_no_validation_split(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "only.txt").write_text("The quick brown fox jumps over the lazy dog. " * 50)
    meta = data.build_from_folder(str(tmp_path / "texts"), str(tmp_path / "o"), "bpe", vocab_size=400)
    assert "val_tokens" not in meta and data.shard_paths(str(tmp_path / "o"), "val") == []
    assert meta["train_tokens"] == len(data.read_shard(data.shard_paths(str(tmp_path / "o"), "train")[0]))


def test_a_users_text_folder_sharded_with_phi4s_tokenizer_holds_its_ids_document_by_document(tmp_path, phi4, cl100k_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    documents = [f"Document {i}: Ünïcödé, 数学 and <|im_end|> typed as text." for i in range(3)]
    for i, text in enumerate(documents):
        (folder / f"{i}.txt").write_text(text)
    meta = data.build_from_folder(str(folder), str(tmp_path / "o"), "phi4", vocab_size=None, tokenizer_path=cl100k_path)
    assert meta["vocab_size"] == 100_352 and data.Tokenizer.load(str(tmp_path / "o" / "tokenizer.json")).name == "phi4"
    shards = data.shard_paths(str(tmp_path / "o"), "train") + data.shard_paths(str(tmp_path / "o"), "val")
    stored = sorted(doc.tolist() for path in shards for doc in data.shard_documents(path, phi4.bos_id))
    assert stored == sorted([phi4.bos_id] + phi4.encode(text) for text in documents)  # shuffled into the splits
