"""Data for the Phi-4 recipe: the corpus as token shards, the loaders every stage reads, and the
command that builds them.

Phi-4 (report sections 2-3) trains on a mixture of synthetic and web data, tokenized once and streamed
in fixed-length rows. At toy scale the corpus is the synthetic world of toyworld.py (word problems with
worked solutions, arithmetic drills), tokenized with a BPE trained on it (tokenization.py):

    pretraining  "textbook" documents, packed into rows of --seq-len tokens
    midtraining  long documents mixed 30/70 with replayed pretraining rows (report section 3)
    SFT          chat conversations in Phi-4's chat format, one per row, loss on the assistant only
    evaluation   a held-out split of problems, decontaminated from all training text (13-gram rule)

Sections, top to bottom:
  1. Shards         uint32 token files with a header, memory-mapped, and resumable batch loaders
                    (pretraining stream, chat rows, and the long/replay mixture of midtraining)
  2. Building       `python data.py` builds the toy data set; `--input-dir` shards a user's own text

Why decontamination happens here, at build time (report section 2): the held-out split is drawn first,
from its own seed, and every training problem sharing a 13-word stretch with a held-out question is
dropped before anything is tokenized. Every later file (shards, sft.jsonl, rl.jsonl, long documents) is
cut from what is left, so no stage can train on an evaluation question by accident.

Files this writes (out/data/toy): tokenizer.json, train_*.bin, val_*.bin, eval.jsonl (held-out problems),
sft.jsonl (chat problems), meta.json; midtraining adds long_*.bin on first use.

Commands:
    python data.py                                   # build out/data/toy (tokenizer + shards + eval set)
    python data.py --input-dir my_texts --tokenizer phi4 --out out/data/mine   # shard your own text
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from fractions import Fraction

import numpy as np
from tqdm import tqdm

import cli
import files
import toyworld
from tokenization import TOY_PATTERN, Tokenizer  # noqa: F401  (re-exported: data.Tokenizer is the public name)

# ----------------------------------------------------------------------------------------------------
# 1. Token shards and the loaders
#
# A shard is a flat uint32 array of token ids (uint16 cannot hold Phi-4's 100,352 ids) after a 16-byte
# header: 8 magic bytes and the token count. Documents are separated by <|endoftext|>. Memory-mapping
# lets a loader read any window without loading the file, so shards can be far larger than RAM.

SHARD_MAGIC = b"PHI4TOK1"  # a file that is not a shard (or an older format) fails at once, not as noise
HEADER_BYTES = 16  # 8 magic + 8 for the uint64 token count; a multiple of 4, so the uint32 body stays aligned


def write_shard(path: str, tokens) -> None:
    """Write tokens as a shard: the header, then the raw uint32 ids (native byte order, as memmap reads)."""
    tokens = np.asarray(tokens, dtype=np.uint32)
    # Atomic: a crash mid-write leaves the old shard or none, never a truncated one (read_shard's size
    # check would catch it, but only at training time).
    def write(f):
        f.write(SHARD_MAGIC + np.uint64(len(tokens)).tobytes())
        f.write(tokens.tobytes())

    files.atomic_write(path, write, binary=True)


def read_shard(path: str) -> np.ndarray:
    """Memory-map a shard (no copy); checks the header so a truncated or foreign file fails clearly."""
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[:8] != SHARD_MAGIC:
        raise ValueError(f"{path} is not a token shard (bad header); rebuild it with `python data.py`")
    n_tokens = int(np.frombuffer(header[8:], dtype=np.uint64)[0])
    expected = HEADER_BYTES + 4 * n_tokens  # 4 bytes per uint32 token
    if os.path.getsize(path) != expected:
        raise ValueError(f"{path} is truncated or corrupt ({os.path.getsize(path)} bytes, expected {expected})")
    return np.memmap(path, dtype=np.uint32, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


class TokenLoader:
    """Batches of (inputs, targets), each (B, T), read in order from a stream of shards.

    Every step consumes one global batch of world_size * B rows of T+1 tokens (targets are the inputs
    shifted by one); rank r takes rows r*B .. r*B+B-1, so ranks never see the same tokens and the
    union over ranks does not depend on how many there are. The position is one integer, so resuming
    is exact: `state_dict()` goes into the checkpoint and `load_state_dict()` continues from it.
    """

    def __init__(self, paths: list[str], batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1):
        """Map the shards (in the given order: they form one stream) and start at its first token."""
        if not paths:
            raise ValueError("no token shards given; build them with `python data.py` (or pass --data)")
        self.shards = [read_shard(p) for p in paths]
        self.total = sum(len(s) for s in self.shards)  # tokens in the whole stream, over all shards
        self.B, self.T, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.row = seq_len + 1  # T inputs and, shifted by one, T targets come from T + 1 tokens
        if self.total < world_size * batch_size * self.row:
            raise ValueError(
                f"shards hold {self.total} tokens, fewer than one batch ({world_size}x{batch_size}x{self.row}); "
                "lower --batch-size / --seq-len or add data"
            )
        self.position = 0  # token offset of the next global batch in the concatenated stream
        self.epoch = 0  # passes over the stream completed; rows depend on position alone, this is a record

    def _read(self, start: int, n: int) -> np.ndarray:
        """n tokens from the concatenated stream starting at `start` (may span shards)."""
        out, offset = [], start
        for shard in self.shards:
            if offset >= len(shard):
                offset -= len(shard)
                continue
            piece = shard[offset : offset + n - sum(len(p) for p in out)]  # what is still missing
            out.append(np.asarray(piece))  # copies just this window out of the memory map
            offset = 0  # a read that spills into the next shard continues at its start
            if sum(len(p) for p in out) == n:
                break
        return np.concatenate(out)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's (inputs, targets) of the next global batch; every rank advances by the whole batch."""
        global_tokens = self.world_size * self.B * self.row
        # A batch never wraps around the end: the tail shorter than a global batch is skipped each epoch.
        if self.position + global_tokens > self.total:
            # Start the next epoch from the top: the synthetic data is repeated, as Phi-4 did (~14 epochs).
            self.position, self.epoch = 0, self.epoch + 1
        start = self.position + self.rank * self.B * self.row  # rank r's slice of the global batch
        rows = self._read(start, self.B * self.row).astype(np.int64).reshape(self.B, self.row)  # (B, T+1)
        self.position += global_tokens
        return rows[:, :-1], rows[:, 1:]  # inputs (B, T), targets (B, T)

    def state_dict(self) -> dict:
        """Where the stream stands: saved in every checkpoint so a resumed run reads the next batch."""
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict):
        """Continue from a state_dict() read back from a checkpoint."""
        self.position, self.epoch = int(state["position"]), int(state["epoch"])


class ChatLoader:
    """Batches of chat conversations for SFT: (inputs, targets), targets -100 where there is no loss.

    One conversation per row, padded with <|dummy_85|> (Phi-4's pad, which is NOT its eos: if padding
    were <|im_end|>, masking the padding would also mask the very token that teaches the model to stop).
    Rows are padded to the longest conversation in the batch, not to a fixed length, so short chats cost
    little. Packing several conversations per row would save more, but would let one conversation
    attend to an unrelated one; at toy scale the simplicity wins. The order is a seeded shuffle per
    epoch, and the state is (epoch, position), so resuming is exact.
    """

    def __init__(self, examples: list[tuple[list[int], list[int]]], batch_size: int, seq_len: int, pad_id: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
        """examples: (ids, loss_mask) pairs from Tokenizer.render_chat, one per conversation."""
        # Conversations that do not fit are dropped, never truncated: a cut-off answer teaches the model
        # to stop mid-solution without <|im_end|>.
        self.examples = [(ids, mask) for ids, mask in examples if len(ids) <= seq_len + 1]
        self.n_dropped = len(examples) - len(self.examples)  # reported by train.py, so a drop is never silent
        if len(self.examples) < batch_size * world_size:
            raise ValueError(f"only {len(self.examples)} conversations fit --seq-len {seq_len}; need at least one batch")
        self.B, self.pad_id, self.rank, self.world_size, self.seed = batch_size, pad_id, rank, world_size, seed
        self.position, self.epoch = 0, 0

    def _order(self) -> list[int]:
        """This epoch's permutation of the examples: a pure function of (seed, epoch), never stored."""
        order = list(range(len(self.examples)))
        # Every rank computes the same order (same seed and epoch) and takes its own slice of it. The
        # large odd multiplier keeps (seed, epoch) pairs from colliding, as seed + epoch would.
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's (inputs, targets) of the next global batch, padded to its longest conversation."""
        global_rows = self.B * self.world_size
        if self.position + global_rows > len(self.examples):
            self.position, self.epoch = 0, self.epoch + 1  # the last few are skipped; the reshuffle moves them
        order = self._order()
        start = self.position + self.rank * self.B
        chosen = [self.examples[i] for i in order[start : start + self.B]]
        self.position += global_rows
        width = max(len(ids) for ids, _ in chosen) - 1  # T: the longest row, minus the shift by one
        inputs = np.full((self.B, width), self.pad_id, dtype=np.int64)  # (B, T)
        targets = np.full((self.B, width), -100, dtype=np.int64)  # (B, T)
        for row, (ids, mask) in enumerate(chosen):
            ids, mask = np.asarray(ids), np.asarray(mask)
            n = len(ids) - 1  # positions with a next token; the rest of the row stays padding
            inputs[row, :n] = ids[:-1]  # (n,)
            # Token t+1 is a target only where the loss mask marks it (assistant content and <|im_end|>).
            targets[row, :n] = np.where(mask[1:] == 1, ids[1:], -100)  # -100: cross_entropy's ignore_index
        return inputs, targets

    def state_dict(self) -> dict:
        """(epoch, position): with the seed, that fixes the order, so a resumed run continues exactly."""
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict):
        """Continue from a state_dict(); the epoch's order is recomputed from the seed, not saved."""
        self.position, self.epoch = int(state["position"]), int(state["epoch"])


def read_conversations(path: str) -> list[list[dict]]:
    """Chat data from JSONL: records with "messages", or world problems (rendered by problem_chat).

    Every record is checked here, so a malformed file fails with its name and line before training.
    """
    if not os.path.exists(path):
        raise files.DataError(f"chat data {path} not found; build it with `python data.py` or pass --sft-data")
    conversations = []
    for line_no, record in files.iter_jsonl(path):
        where = f"{path}, line {line_no}"  # every error below names the file and line to fix
        if "messages" in record:
            messages = record["messages"]
            if not isinstance(messages, list) or not messages:
                raise files.DataError(f"{where}: \"messages\" must be a non-empty list")
            for message in messages:
                if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                        and isinstance(message.get("content"), str)):
                    raise files.DataError(f"{where}: every message needs a string \"role\" and \"content\"")
                if message["role"] not in ("system", "user", "assistant"):
                    raise files.DataError(f"{where}: unknown role {message['role']!r} (system, user or assistant)")
            conversations.append(messages)
        elif isinstance(record.get("question"), str) and isinstance(record.get("solution"), str):
            try:
                conversations.append(toyworld.problem_chat(toyworld.Problem(**record)))
            except TypeError as error:
                raise files.DataError(f"{where}: not a world problem ({error})") from None
        else:
            raise files.DataError(f"{where}: a record needs \"messages\" or \"question\" + \"solution\"")
    if not conversations:
        raise files.DataError(f"chat data {path} is empty")
    return conversations


def shard_documents(path: str, bos_id: int) -> list[np.ndarray]:
    """The documents of a shard, as views into its memory map (each opens with <|endoftext|>)."""
    shard = read_shard(path)
    starts = np.flatnonzero(np.asarray(shard) == bos_id)  # each document opens with <|endoftext|>
    if len(shard) and (len(starts) == 0 or starts[0] != 0):
        raise ValueError(f"{path} does not start with <|endoftext|>; rebuild it with `python data.py`")
    ends = [*starts[1:], len(shard)]  # a document runs up to the next one's <|endoftext|>
    return [shard[start:end] for start, end in zip(starts, ends)]


def shard_paths(data_dir: str, split: str) -> list[str]:
    """The shards of one split (`train` or `val`) in a data directory, in order."""
    if not os.path.isdir(data_dir):
        return []  # the caller's "no shards" error names the flag to change; a missing folder is that case
    # Sorted: train_000, train_001, ... is the stream's order, which resuming by token offset relies on.
    return sorted(
        os.path.join(data_dir, f) for f in os.listdir(data_dir) if f.startswith(f"{split}_") and f.endswith(".bin")
    )


class MixtureLoader:
    """Batches where a fixed share of rows holds one whole document each and the rest are packed rows.

    Midtraining: Phi-4 midtrained on 30% new long-context data and 70% replayed pretraining data (report
    section 3); the toy uses half and half. Pretraining of the toy world uses it too: 30% of its rows are
    first-line-recall documents, which must start at position 0 of their row so the key is always there.
    We mix by rows: global row g (counted over the whole run, across ranks) is a long document exactly
    when floor((g + 1) * f) > floor(g * f), so any window of N rows holds f * N of them, give or take
    one, and the long rows are spread evenly instead of arriving in clumps. Long documents are built to
    fill most of a row (toyworld.recall_document), so the share of tokens follows the share of rows.

    How each kind of row is packed, and why:
    - A long document gets a row of its own, starting at position 0 with its <|endoftext|>, padded at
      the end (pad targets are -100, and causal attention never looks forward at the padding). It is
      never cut and never shares a row: the key its last line asks for is always in the row, no other
      document's key is visible to be copied by mistake, and token i sits at its true position i in the document,
      which is exactly what the new RoPE positions have to learn.
    - Replay rows are packed exactly as in pretraining: short documents back to back, separated by
      <|endoftext|>, and attention does cross those boundaries. That is harmless here, because the
      documents are independent and the model learned in pretraining that <|endoftext|> starts afresh,
      but it also teaches nothing long-range (the report's finding that concatenated short documents
      are a poor substitute for long ones), which is why the long rows exist.
    Masking attention at document boundaries (a block-diagonal mask) would be the alternative; it needs
    a second mask kind in every attention implementation, and the rows above make it unnecessary.

    The state is one integer, the next global row, so resuming is exact on any number of ranks.
    """

    def __init__(self, replay_paths: list[str], long_paths: list[str], batch_size: int, seq_len: int,
                 long_fraction: float, bos_id: int, pad_id: int, rank: int = 0, world_size: int = 1):
        """Map both kinds of shard, split the long ones into documents, and check each fits a row."""
        if not 0.0 <= long_fraction <= 1.0:
            raise ValueError(f"--long-fraction must be between 0 and 1, got {long_fraction}")
        if not long_paths and long_fraction > 0:
            raise ValueError("no long-document shards (long_train_*.bin) found; build them or pass --long-data")
        # The fraction as an exact ratio, so row g's kind does not depend on float rounding.
        ratio = Fraction(long_fraction).limit_denominator(1000)  # 0.3 -> 3/10
        self.numerator, self.denominator = ratio.numerator, ratio.denominator
        self.replay = TokenLoader(replay_paths, 1, seq_len)  # read through its concatenated stream only
        self.n_replay_rows = self.replay.total // (seq_len + 1)  # whole rows only: the tail is never read
        self.documents: list[np.ndarray] = []  # views into the memory-mapped shards, one per document
        for path in long_paths:
            self.documents += shard_documents(path, bos_id)
        longest = max((len(doc) for doc in self.documents), default=0)
        if longest > seq_len + 1:
            raise ValueError(
                f"long documents of up to {longest} tokens do not fit --seq-len {seq_len}: rebuild them for this "
                "length (remove DATA/long_meta.json) or raise --seq-len"
            )
        self.B, self.T, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.bos_id, self.pad_id = bos_id, pad_id
        self.position = 0  # the next global row

    def is_long(self, row: int) -> bool:
        """Whether global row `row` holds a long document (the even spread described above)."""
        return (row + 1) * self.numerator // self.denominator > row * self.numerator // self.denominator

    def row(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """Global row g -> (inputs (T,), targets (T,)), with -100 targets on padding."""
        # Computed, not counted, so any row can be built without walking the ones before it: resuming
        # and every rank's share of a batch need only g.
        n_long_before = g * self.numerator // self.denominator  # long rows among rows 0 .. g-1
        tokens = np.full(self.T + 1, self.pad_id, dtype=np.int64)  # (T+1,)
        if self.is_long(g):
            document = self.documents[n_long_before % len(self.documents)]  # in order, cycling
            tokens[: len(document)] = document  # at position 0, padded after its end
            n_real = len(document)
        else:
            # Replay rows walk through the pretraining stream in order and start over at its end.
            replay_row = (g - n_long_before) % self.n_replay_rows  # g minus the long rows: replay rows so far
            tokens[:] = self.replay._read(replay_row * (self.T + 1), self.T + 1)
            n_real = self.T + 1
        targets = tokens[1:].copy()  # (T,); a copy: the -100s below must not reach the inputs' buffer
        targets[n_real - 1 :] = -100  # target t is token t+1: none past the document's last token
        return tokens[:-1], targets

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's B rows of the next global batch; long rows are spread over ranks by their g."""
        first = self.position + self.rank * self.B  # this rank's rows of the global batch
        rows = [self.row(g) for g in range(first, first + self.B)]
        self.position += self.world_size * self.B
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])  # (B, T) each

    def long_token_share(self) -> float:
        """The share of target tokens that come from long documents (what "30% long" means in tokens)."""
        if not self.documents:
            return 0.0
        fraction = self.numerator / self.denominator
        # Per row on average: a long row has len - 1 targets (its padding has none), a replay row T.
        long_tokens = fraction * float(np.mean([len(doc) - 1 for doc in self.documents]))
        return long_tokens / (long_tokens + (1 - fraction) * self.T)

    def state_dict(self) -> dict:
        """The next global row: every row's content is a function of its index, so this is all the state."""
        return {"position": self.position}

    def load_state_dict(self, state: dict):
        """Continue from a state_dict(), on any number of ranks (rows are counted globally)."""
        self.position = int(state["position"])


# ----------------------------------------------------------------------------------------------------
# 2. Building data sets

TOY_DATA_DIR = os.path.join("out", "data", "toy")
WEB_HEAVY_DIR = "web"  # subfolder of the toy data: the web-heavy pretraining mixture (the ablation)
TOY_VOCAB = 1152  # an upper bound: the toy world's words and numbers run out of merges at 1,029 ids
EVAL_SEED = 1_000_003  # the held-out test split comes from its own seed, never from the training stream
DEV_SEED = 1_500_007  # the dev split: every hyper-parameter is chosen on it, never on the test split
POST_SEED = 5_000_011  # post-training problems (SFT, rejection sampling, DPO, PTS): never in pretraining
# The two pretraining mixtures (report section 2, Table 2, in miniature): the share of problem documents
# written the synthetic way; the rest are web-like. Same stories, same number of documents, same rows.
MIXTURES = {"synthetic-heavy": 0.8, "web-heavy": 0.2}
# Share of pretraining rows that hold one first-line-recall document (train.py). At the toy's RoPE base
# (800) the recall forms in some runs and not others (4 of 6 at 30% and 40%, 2 of 3 seeds each; LAB.md,
# "The RoPE base at Phi-4's proportions"); at 40% it forms with the main seed.
RECALL_FRACTION = 0.4


def tokenize_documents(tokenizer: Tokenizer, documents: list[str], desc: str) -> np.ndarray:
    """Concatenate documents as ids, each preceded by <|endoftext|> (the document separator)."""
    ids = []
    for document in tqdm(documents, desc=desc, unit="doc", mininterval=1.0):
        # Before each document, not after: every document, the first included, opens with the same token.
        ids.append(tokenizer.bos_id)
        ids.extend(tokenizer.encode(document))
    return np.array(ids, dtype=np.uint32)


def write_split(tokenizer, documents, out_dir, split, shard_tokens=50_000_000) -> int:
    """Tokenize documents into {split}_000.bin, {split}_001.bin, ... and return the token count.

    50M tokens (200 MB) per shard: a document may straddle two shards, which the loaders allow.
    """
    tokens = tokenize_documents(tokenizer, documents, desc=f"tokenizing {split}")
    for i, start in enumerate(range(0, len(tokens), shard_tokens)):
        write_shard(os.path.join(out_dir, f"{split}_{i:03d}.bin"), tokens[start : start + shard_tokens])
    return len(tokens)


def question_ngrams(problems: list[toyworld.Problem]) -> set:
    """The 13-grams of the problems' questions: what a split drawn later must not share (clean_split)."""
    return set().union(*(toyworld.ngrams(p.question) for p in problems))


def clean_split(problems: list[toyworld.Problem], banned: set) -> tuple[list[toyworld.Problem], int]:
    """The problems whose question shares no 13-gram with `banned`, and how many were dropped.

    `banned` holds the 13-grams of the questions of every split drawn before (report section 2), one
    set, so each problem costs one hash lookup per n-gram instead of a comparison with every earlier
    question. Questions are indexed, not solutions: the worked solutions are formulaic lines ("You get
    3: 12 + 3 = 15.") shared by thousands of unrelated problems, so their n-grams say nothing about
    leakage, whereas a shared 13-word stretch of question text means the problem itself leaked.
    """
    kept = [p for p in problems if not (toyworld.ngrams(p.question) & banned)]
    return kept, len(problems) - len(kept)


def build_toy_dataset(out_dir: str = TOY_DATA_DIR, n_stories: int = 45_000, n_test: int = 2000, n_dev: int = 1000,
                      n_sft: int = 8000, n_rl: int = 5000, n_recall: int = 6000, seed: int = 1337) -> dict:
    """The synthetic world as two pretraining mixtures, post-training sets and decontaminated test/dev splits.

    Writes tokenizer.json; train_*.bin / val_*.bin (the synthetic-heavy mixture) and recall_*.bin
    (first-line-recall documents, one per row); web/ with the web-heavy mixture on the same tokenizer;
    eval.jsonl (the test split), dev.jsonl, sft.jsonl (teacher-answered chat problems), rl.jsonl
    (problems to sample on: rejection sampling, DPO pairs, PTS) and meta.json.

    Decontamination (report section 2), in the order the splits are drawn: test first, then dev, then
    post-training (SFT, then rl), then pretraining; each drops every problem sharing a 13-gram with a
    split before it, so no two of them share one.
    """
    os.makedirs(out_dir, exist_ok=True)
    # Long documents of an earlier build were tokenized with its tokenizer: a new one makes them wrong.
    for name in os.listdir(out_dir):
        if name == LONG_META or name.startswith("long_"):
            os.remove(os.path.join(out_dir, name))
    # The test split is drawn first and from its own seed, so it is the same whatever the training data
    # was built with: scores stay comparable across builds.
    test = toyworld.make_split(EVAL_SEED, n_test)
    banned = question_ngrams(test)
    dev, dropped_dev = clean_split(toyworld.make_split(DEV_SEED, n_dev), banned)
    banned |= question_ngrams(dev)

    # Post-training problems, never seen in pretraining: SFT answers come from the imperfect teacher
    # (toyworld section 3); rl.jsonl keeps the reference solutions, though only the oracle reads them.
    post_rng = random.Random(POST_SEED)
    teacher = [toyworld.teacher_problem(post_rng, post_rng.randint(1, 4)) for _ in range(n_sft)]
    sft, dropped_sft = clean_split([p for p, _ in teacher], banned)
    teacher_right = sum(toyworld.check(p, p.solution) for p in sft)
    banned |= question_ngrams(sft)  # problems to sample on are new to SFT too: what rejection sampling finds is new
    rl, dropped_rl = clean_split([toyworld.make_problem(post_rng, post_rng.randint(1, 4)) for _ in range(n_rl)], banned)
    banned |= question_ngrams(rl)

    # Pretraining stories, rendered twice: synthetic-heavy and web-heavy, document by document.
    rng = random.Random(seed)
    stories = [toyworld.make_story(rng, rng.randint(1, 4)) for _ in tqdm(range(n_stories), desc="world", unit="story")]
    stories = [s for s in stories if not (toyworld.ngrams(s.question()) & banned)]
    n_drills = len(stories) // 6  # drills: the arithmetic facts every step relies on
    mixtures = {}
    for name, synthetic_share in MIXTURES.items():
        mix_rng = random.Random(f"{seed}-{name}")  # each mixture its own stream, the same on every build
        documents, kinds = [], Counter()
        for story in stories:
            if mix_rng.random() < synthetic_share:
                documents.append(toyworld.synthetic_document(mix_rng, story))
                kinds["synthetic"] += 1
            else:
                text, corruptions = toyworld.web_document(mix_rng, story)
                documents.append(text)
                kinds.update(["web"] + sorted(corruptions))
        documents += [toyworld.drill_document(mix_rng) for _ in range(n_drills)]
        # Textbook drills, in each mixture's synthetic share: arithmetic, and now and then a reading drill
        # (toyworld.READING_DRILL_RATE says why so rarely).
        for _ in range(round(n_drills * synthetic_share)):
            reading = mix_rng.random() < toyworld.READING_DRILL_RATE
            documents.append(toyworld.copy_drill(mix_rng, mix_rng.randint(2, 4)) if reading else toyworld.drill_document(mix_rng))
        mix_rng.shuffle(documents)  # problems and drills interleaved, so no shard is all of one kind
        mixtures[name] = (documents, dict(kinds))

    # The tokenizer learns from (a sample of) both mixtures, so web words have ids in either run.
    # The recall documents' own words ("Key: 47 ... The key was 47.") join the sample: they are built
    # after the tokenizer (they are cut to a token budget) but must not cost three tokens a word.
    recall_words = [f"Key: {v}\nPractice:\nThe key was {v}.\n" for v in toyworld.RECALL_VALUES] * 40
    sample_text = "\n".join(mixtures["synthetic-heavy"][0][:10_000] + mixtures["web-heavy"][0][:10_000] + recall_words)
    tokenizer = Tokenizer.train(sample_text, TOY_VOCAB, verbose=True, pattern=TOY_PATTERN)
    recall_rng = random.Random(toyworld.RECALL_PRETRAIN_SEED)
    seq_len = 256  # the toy preset's context: recall documents fill up to one pretraining row
    recall = {split: [toyworld.long_training_document(recall_rng, tokenizer, seq_len + 1).ids
                      for _ in tqdm(range(n), desc=f"recall {split}", unit="doc", mininterval=1.0)]
              for split, n in (("train", n_recall), ("val", 64))}
    meta = {"seed": seed, "vocab_size": 0, "test_problems": len(test), "dev_problems": len(dev),
            "sft_problems": len(sft), "sft_teacher_right": teacher_right, "rl_problems": len(rl),
            "dropped_by_13gram": {"dev": dropped_dev, "sft": dropped_sft, "rl": dropped_rl,
                                  "pretraining": n_stories - len(stories)}, "mixtures": {}}
    for name, folder in (("synthetic-heavy", out_dir), ("web-heavy", os.path.join(out_dir, WEB_HEAVY_DIR))):
        os.makedirs(folder, exist_ok=True)
        documents, kinds = mixtures[name]
        n_val = max(1, len(documents) // 50)  # 2% for held-out loss (a different thing from eval.jsonl)
        tokenizer.save(os.path.join(folder, "tokenizer.json"))
        n_train = write_split(tokenizer, documents[n_val:], folder, "train")
        write_split(tokenizer, documents[:n_val], folder, "val")
        for split, docs in recall.items():
            write_shard(os.path.join(folder, f"recall_{split}_000.bin"), np.concatenate([np.asarray(d, dtype=np.uint32) for d in docs]))
        meta["mixtures"][name] = {"folder": folder, "train_tokens": n_train, "documents": kinds}
    files.write_jsonl(os.path.join(out_dir, "eval.jsonl"), [p.to_dict() for p in test])
    files.write_jsonl(os.path.join(out_dir, "dev.jsonl"), [p.to_dict() for p in dev])
    files.write_jsonl(os.path.join(out_dir, "sft.jsonl"), [p.to_dict() for p in sft])
    files.write_jsonl(os.path.join(out_dir, "rl.jsonl"), [p.to_dict() for p in rl])
    meta["vocab_size"] = tokenizer.vocab_size
    files.atomic_write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2))
    return meta


LONG_META = "long_meta.json"


def build_long_documents(data_dir: str, doc_tokens: int, n_train: int = 4000, n_val: int = 64, seed: int = toyworld.LONG_SEED) -> dict:
    """Midtraining documents of at most doc_tokens ids -> long_train_000.bin, long_val_000.bin, long_meta.json.

    Tokenized with the folder's own tokenizer.json (the pretraining tokenizer: nothing is retrained, and
    the pretraining shards are left as they are). They are recall documents (toyworld section 4) of
    random length: key, drills, question; no problem text, so there is nothing to decontaminate.
    Each document starts with <|endoftext|>, as in every shard.
    """
    tokenizer = Tokenizer.load(os.path.join(data_dir, "tokenizer.json"))
    meta = {"doc_tokens": doc_tokens, "seed": seed}
    for split, n, split_seed in (("long_train", n_train, seed), ("long_val", n_val, seed + 1)):
        rng = random.Random(split_seed)  # a seed per split, so validation documents differ from training ones
        documents = [
            toyworld.long_training_document(rng, tokenizer, doc_tokens)
            for _ in tqdm(range(n), desc=f"building {split}", unit="doc", mininterval=1.0)
        ]
        tokens = np.concatenate([np.asarray(doc.ids, dtype=np.uint32) for doc in documents])
        write_shard(os.path.join(data_dir, f"{split}_000.bin"), tokens)
        meta.update({f"{split}_documents": len(documents), f"{split}_tokens": len(tokens)})
    # Written last: a meta file means a complete set for this length.
    files.atomic_write_text(os.path.join(data_dir, LONG_META), json.dumps(meta, indent=2))
    return meta


def ensure_long_documents(data_dir: str, doc_tokens: int, **kwargs) -> dict:
    """The long documents of data_dir for rows of doc_tokens ids: built on first use, or again for a new length."""
    meta_path = os.path.join(data_dir, LONG_META)
    if os.path.exists(meta_path) and shard_paths(data_dir, "long_train"):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("doc_tokens") == doc_tokens:
            return meta  # built for this row length already; a different --seq-len rebuilds them
    print(f"building long documents of up to {doc_tokens} tokens in {data_dir} (the midtraining data)")
    return build_long_documents(data_dir, doc_tokens, **kwargs)


def read_text_folder(folder: str) -> list[str]:
    """Documents from a folder: each .txt file is one document; each .jsonl line with a "text" field is one."""
    if not os.path.isdir(folder):
        raise ValueError(f"--input-dir {folder} is not a folder")
    documents = []
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            if name.endswith(".txt"):
                try:
                    with open(path, encoding="utf-8") as f:
                        documents.append(f.read())
                except (OSError, UnicodeDecodeError) as error:
                    raise files.DataError(f"{path}: cannot read it as UTF-8 text ({error})") from None
            elif name.endswith(".jsonl"):
                for line_no, record in files.iter_jsonl(path):
                    if not isinstance(record.get("text"), str):
                        raise files.DataError(f"{path}, line {line_no}: needs a \"text\" field holding a string")
                    documents.append(record["text"])
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ValueError(f"--input-dir {folder} holds no non-empty .txt or .jsonl documents")
    return documents


def build_from_folder(input_dir, out_dir, tokenizer_kind, vocab_size, tokenizer_path=None) -> dict:
    """Shard a user's own documents with Phi-4's tokenizer or a BPE trained on them."""
    documents = read_text_folder(input_dir)
    os.makedirs(out_dir, exist_ok=True)
    if tokenizer_kind == "phi4":
        tokenizer = Tokenizer.phi4(tokenizer_path)
    else:
        tokenizer = Tokenizer.train("\n".join(documents)[:20_000_000], vocab_size, verbose=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    random.Random(0).shuffle(documents)  # a fixed seed: the same folder always gives the same split
    # 1% validation, at least one document, none when there is only one (all of it goes to training).
    n_val = max(1, len(documents) // 100) if len(documents) > 1 else 0
    meta = {"train_tokens": write_split(tokenizer, documents[n_val:], out_dir, "train"), "vocab_size": tokenizer.vocab_size}
    if n_val:
        meta["val_tokens"] = write_split(tokenizer, documents[:n_val], out_dir, "val")
    files.atomic_write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2))
    return meta


if __name__ == "__main__":
    parser = cli.Parser(
        description="Build token shards. With no flags: the toy synthetic world into out/data/toy.",
        epilog=(
            "Your own data: put .txt files (one document each) and/or .jsonl files (one {'text': ...} per "
            "line) in a folder, then run `python data.py --input-dir FOLDER --out out/data/mine "
            "--tokenizer phi4 --tokenizer-path cl100k_base.tiktoken` (Phi-4's tokenizer) or "
            "`--tokenizer bpe --vocab-size 8192` (a BPE trained on your text). Train on it with "
            "`python train.py --data out/data/mine`."
        ),
    )
    parser.add_argument("--out", default=None, help="output folder (default out/data/toy, or required with --input-dir)")
    parser.add_argument("--input-dir", default=None, help="folder of .txt/.jsonl documents to shard instead of the toy world")
    parser.add_argument("--tokenizer", choices=("phi4", "bpe"), default="bpe", help="with --input-dir: which tokenizer")
    parser.add_argument("--tokenizer-path", default=None, help="local cl100k_base.tiktoken for --tokenizer phi4")
    parser.add_argument("--vocab-size", type=int, default=TOY_VOCAB, help="with --tokenizer bpe: total vocabulary")
    parser.add_argument("--n-stories", type=cli.at_least(100), default=45_000, help="toy world: pretraining problems (each rendered in both mixtures)")
    parser.add_argument("--seed", type=int, default=1337, help="toy world: generator seed")
    args = parser.parse_args()
    # The toy world brings its own tokenizer: the tokenizer flags are for your own folder of text.
    cli.refuse_unused(parser, args, {"tokenizer": "input_dir", "tokenizer_path": "input_dir", "vocab_size": "input_dir"})
    try:
        if args.input_dir:
            if not args.out:
                parser.error("--input-dir needs --out (where to write the shards)")
            meta = build_from_folder(args.input_dir, args.out, args.tokenizer, args.vocab_size, args.tokenizer_path)
        else:
            meta = build_toy_dataset(args.out or TOY_DATA_DIR, n_stories=args.n_stories, seed=args.seed)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(json.dumps(meta, indent=2))
