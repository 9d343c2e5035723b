"""Data for the Phi-4 recipe: tokenizers, chat rendering, the synthetic world, decontamination, shards.

Phi-4's central idea (report section 2) is that carefully generated synthetic "textbook" data teaches
reasoning better than web text. At toy scale we cannot call a teacher LLM, so this file embeds a small
synthetic world instead: a deterministic generator of multi-step arithmetic word problems, each with a
worked step-by-step solution and a checkable final answer. The same world feeds every stage:

    pretraining  "textbook" documents: problems with worked solutions, plus arithmetic drills
    SFT          chat conversations (user asks, assistant solves) in Phi-4's chat format
    evaluation   a held-out split, decontaminated from all training text by the 13-gram rule (section 2)
    RL-ish       the oracle `check(problem, completion)` grades samples for rejection sampling and PTS

Sections, top to bottom:
  1. Tokenizer      Phi-4's tokenizer (cl100k_base + 96 special tokens, vocab 100,352) and a byte-level
                    BPE trained from scratch on our corpus, both on top of tiktoken; chat rendering
  2. The world      problems, solutions, the answer extractor and the oracle
  2b. Long documents  facts stated early and asked about much later, for midtraining (context extension)
  3. Decontamination  13-gram overlap between training text and held-out questions
  4. Shards         uint32 token files with a header, memory-mapped, and resumable batch loaders
                    (pretraining stream, chat rows, and the 30/70 long/replay mixture of midtraining)
  5. Building       `python data.py` builds the toy data set; `--input-dir` shards a user's own text

Simplified: the world is arithmetic only (addition, subtraction, doubling), which is what a 1M-parameter
model can learn on a CPU in minutes; the real Phi-4 pipelines (teacher LLMs) live in synth.py.

Commands:
    python data.py                                   # build out/data/toy (tokenizer + shards + eval set)
    python data.py --input-dir my_texts --tokenizer phi4 --out out/data/mine   # shard your own text
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
import regex
import tiktoken
import tiktoken.load
from tqdm import tqdm

# ----------------------------------------------------------------------------------------------------
# 1. Tokenizer

# cl100k_base's pre-tokenizer: text is first split into "words" by this pattern (contractions, runs of
# letters with one leading non-letter, numbers of at most 3 digits, punctuation runs, whitespace), and
# BPE merges never cross these boundaries. The toy BPE uses the same pattern, so the two tokenizers
# differ only in their learned merges.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_N_RANKS = 100256


def _phi4_special_names() -> list[str]:
    """Phi-4's 96 special tokens in id order (ids 100256..100351, PHI4.md section 2)."""
    names = ["<|dummy_0|>", "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
    names += [f"<|dummy_{k}|>" for k in range(1, 4)]
    names += ["<|im_start|>", "<|im_end|>", "<|im_sep|>"]
    names += [f"<|dummy_{k}|>" for k in range(4, 13)]
    names += ["<|endofprompt|>"]
    names += [f"<|dummy_{k}|>" for k in range(13, 88)]
    return names


PHI4_SPECIAL_NAMES = _phi4_special_names()
PAD_TOKEN = "<|dummy_85|>"  # Phi-4's pad (id 100349): distinct from eos, so the model learns to stop


class Tokenizer:
    """Byte-level BPE on top of tiktoken, with Phi-4's special tokens.

    Two flavours share this class: `Tokenizer.phi4(path)` (the real one, vocab 100,352) and
    `Tokenizer.train(text, vocab_size)` (learned from scratch on our corpus). Special tokens always
    follow the learned ranks in Phi-4's order, so `<|im_end|>` is rank_count + 9 in both.
    """

    def __init__(self, name: str, mergeable_ranks: dict[bytes, int], pattern: str = CL100K_PATTERN):
        self.name = name
        self.pattern = pattern
        self.mergeable_ranks = mergeable_ranks
        n_ranks = len(mergeable_ranks)
        self.special_tokens = {token: n_ranks + i for i, token in enumerate(PHI4_SPECIAL_NAMES)}
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=self.special_tokens
        )
        self.vocab_size = n_ranks + len(PHI4_SPECIAL_NAMES)
        # The ids the rest of the code needs by name.
        self.bos_id = self.special_tokens["<|endoftext|>"]  # also the document separator in shards
        self.im_start_id = self.special_tokens["<|im_start|>"]
        self.im_sep_id = self.special_tokens["<|im_sep|>"]
        self.im_end_id = self.special_tokens["<|im_end|>"]  # Phi-4's eos: generation stops here
        self.eos_id = self.im_end_id
        self.pad_id = self.special_tokens[PAD_TOKEN]

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def phi4(cls, path: str | None = None) -> "Tokenizer":
        """Phi-4's tokenizer: cl100k_base ranks plus the 96 special tokens, vocabulary 100,352.

        `path` is a local cl100k_base.tiktoken file (offline use, checked against its sha256); without
        one, $CL100K_PATH is tried, then tiktoken's own download (needs internet once, then cached).
        """
        path = path or os.environ.get("CL100K_PATH")
        if path is not None:
            if not os.path.exists(path):
                raise FileNotFoundError(f"tokenizer rank file not found: {path} (set --tokenizer-path)")
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            if digest != CL100K_SHA256:
                raise ValueError(f"{path} is not cl100k_base.tiktoken (sha256 {digest[:12]}... differs)")
            ranks = tiktoken.load.load_tiktoken_bpe(path)
        else:
            ranks = tiktoken.get_encoding("cl100k_base")._mergeable_ranks
        assert len(ranks) == CL100K_N_RANKS, "cl100k_base should have 100,256 ranks"
        return cls("phi4", ranks)

    @classmethod
    def from_hf(cls, hf_dir: str) -> "Tokenizer":
        """The tokenizer of a Hugging Face model folder: tokenizer.json, or vocab.json + merges.txt.

        A downloaded Phi-4 folder then needs no other file, and the ids agree with Tokenizer.phi4.
        HF stores a byte-level BPE as text: GPT-2's byte-to-unicode table maps each of the 256 byte
        values to a printable character (printable bytes map to themselves, the others to chr(256+n)),
        so the token " hello" is written "Ġhello". Undoing that table gives tiktoken's bytes. A token's
        id is its rank: tiktoken merges the adjacent pair whose joined bytes have the lowest rank, which
        is the order of HF's merge list when that list follows the ids; we check that it does, so the
        merges themselves are not needed. Special tokens are HF's "added tokens"; they must sit where
        this class puts them (right after the ranks, in PHI4_SPECIAL_NAMES order).
        """
        # GPT-2's table, inverted: printable character -> the byte it stands for.
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        char_to_byte = {chr(b): b for b in printable}
        for n, b in enumerate(b for b in range(256) if b not in printable):
            char_to_byte[chr(256 + n)] = b

        def read_json(path):
            try:
                with open(path, encoding="utf-8") as f:
                    return json.load(f)
            except (OSError, ValueError) as error:
                raise ValueError(f"cannot read {path}: {error}") from None

        tokenizer_json = os.path.join(hf_dir, "tokenizer.json")
        vocab_json, merges_txt = os.path.join(hf_dir, "vocab.json"), os.path.join(hf_dir, "merges.txt")
        if os.path.exists(tokenizer_json):
            source = tokenizer_json
            spec = read_json(tokenizer_json)
            bpe = spec.get("model") or {}
            if bpe.get("type") != "BPE" or not isinstance(bpe.get("vocab"), dict):
                raise ValueError(f"{tokenizer_json}: model type {bpe.get('type')!r} is not a byte-level BPE")
            vocab, merges = bpe["vocab"], bpe.get("merges") or []
            added = {token["content"]: token["id"] for token in spec.get("added_tokens", [])}
        elif os.path.exists(vocab_json) and os.path.exists(merges_txt):
            source = vocab_json
            vocab = read_json(vocab_json)
            with open(merges_txt, encoding="utf-8") as f:
                merges = [line for line in f.read().split("\n") if line and not line.startswith("#version")]
            # Added tokens live in added_tokens.json ({content: id}) and/or tokenizer_config.json.
            added_file = os.path.join(hf_dir, "added_tokens.json")
            config_file = os.path.join(hf_dir, "tokenizer_config.json")
            added = read_json(added_file) if os.path.exists(added_file) else {}
            if os.path.exists(config_file):
                for token_id, token in (read_json(config_file).get("added_tokens_decoder") or {}).items():
                    added[token["content"]] = int(token_id)
        else:
            raise ValueError(f"{hf_dir} has no tokenizer.json (nor vocab.json + merges.txt)")

        ranks: dict[bytes, int] = {}
        special_names = set(PHI4_SPECIAL_NAMES)
        for token, token_id in vocab.items():
            # Some files list the special tokens in the vocabulary too: they are not BPE ranks, and
            # their ids are checked with the added tokens below.
            if token in added or token in special_names:
                added.setdefault(token, token_id)
                continue
            try:
                ranks[bytes(char_to_byte[ch] for ch in token)] = token_id
            except KeyError:
                raise ValueError(f"{source}: token {token!r} is not in GPT-2's byte-level alphabet") from None
        n_ranks = len(ranks)
        if sorted(ranks.values()) != list(range(n_ranks)):
            raise ValueError(f"{source}: the {n_ranks} BPE ids are not exactly 0..{n_ranks - 1}")
        # Merges as "a b" strings (older files, merges.txt) or [a, b] pairs (tokenizers >= 0.20).
        last_id = -1
        for merge in merges:
            pair = merge.split(" ") if isinstance(merge, str) else merge
            if len(pair) != 2:
                raise ValueError(f"{source}: merge {merge!r} is not a pair of tokens")
            left, right = pair
            merged_id = vocab.get(left + right)
            if left not in vocab or right not in vocab or merged_id is None or merged_id < last_id:
                raise ValueError(
                    f"{source}: merge {left!r} + {right!r} does not follow the id order (not a tiktoken-style BPE)"
                )
            last_id = merged_id
        expected = {name: n_ranks + i for i, name in enumerate(PHI4_SPECIAL_NAMES)}
        wrong = [f"{content} at {token_id}" for content, token_id in added.items() if expected.get(content) != token_id]
        if wrong:
            raise ValueError(
                f"{source}: special tokens differ from Phi-4's layout (ids {n_ranks}.. in PHI4_SPECIAL_NAMES order): "
                + ", ".join(wrong)
            )
        # The pre-tokenizer split is cl100k's, the constructor's default and Phi-4's (PHI4.md section 2);
        # the copy of that regex in tokenizer.json's pre_tokenizer is not read. train.py sizes the
        # embedding from the tokenizer unless it is named "phi4" (the full 100,352 vocabulary).
        return cls("phi4" if n_ranks == CL100K_N_RANKS else "hf-bpe", ranks)

    @classmethod
    def train(cls, text: str, vocab_size: int, name: str = "toy-bpe", verbose: bool = False) -> "Tokenizer":
        """Learn a byte-level BPE of `vocab_size` ids (96 of them special) from `text`.

        The classic algorithm: start from the 256 single bytes, then repeatedly merge the most frequent
        adjacent pair of tokens into a new token. Two things make it fast enough for a few thousand
        merges in seconds: (1) we count unique pre-tokenized words once with their frequencies, since
        natural text repeats words a lot; (2) after each merge we update pair counts only for the
        words that contain the merged pair, found through an index pair -> words.
        """
        n_merges = vocab_size - len(PHI4_SPECIAL_NAMES) - 256
        if n_merges < 0:
            raise ValueError(f"vocab_size must be at least {256 + len(PHI4_SPECIAL_NAMES)}, got {vocab_size}")
        word_counts = Counter(regex.findall(CL100K_PATTERN, text))
        if not word_counts:
            raise ValueError("cannot train a tokenizer on empty text")
        words = [list(w.encode("utf-8")) for w in word_counts]  # each word as a list of token ids
        freqs = list(word_counts.values())
        token_bytes = [bytes([i]) for i in range(256)]  # id -> the bytes it stands for

        pair_counts: Counter = Counter()
        pair_words: dict[tuple[int, int], set[int]] = {}  # which words contain each pair
        for w, (ids, freq) in enumerate(zip(words, freqs)):
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += freq
                pair_words.setdefault(pair, set()).add(w)

        for _ in tqdm(range(n_merges), desc="training BPE", disable=not verbose):
            if not pair_counts:
                break  # every word is a single token already: the corpus is too small for this vocab
            # Most frequent pair; ties broken by the pair itself so training is deterministic.
            best = max(pair_counts.items(), key=lambda item: (item[1], item[0]))[0]
            new_id = len(token_bytes)
            token_bytes.append(token_bytes[best[0]] + token_bytes[best[1]])
            for w in pair_words.pop(best, ()):
                ids, freq = words[w], freqs[w]
                # Remove this word's old pairs from the counts, merge, then add its new pairs back.
                for pair in zip(ids, ids[1:]):
                    pair_counts[pair] -= freq
                    if pair_counts[pair] <= 0:
                        del pair_counts[pair]
                merged, i = [], 0
                while i < len(ids):
                    if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best:
                        merged.append(new_id)
                        i += 2
                    else:
                        merged.append(ids[i])
                        i += 1
                words[w] = merged
                for pair in zip(merged, merged[1:]):
                    pair_counts[pair] += freq
                    pair_words.setdefault(pair, set()).add(w)
        # tiktoken applies merges by rank: the earlier a token was learned, the lower its rank.
        ranks = {b: i for i, b in enumerate(token_bytes)}
        return cls(name, ranks)

    # -- saving and loading (plain JSON, no pickled code) --------------------------------------

    def save(self, path: str):
        ranks = [None] * len(self.mergeable_ranks)
        for token, rank in self.mergeable_ranks.items():
            ranks[rank] = base64.b64encode(token).decode("ascii")
        payload = {"name": self.name, "pattern": self.pattern, "ranks": ranks, "special_tokens": PHI4_SPECIAL_NAMES}
        atomic_write_text(path, json.dumps(payload))

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        try:
            with open(path) as f:
                payload = json.load(f)
            ranks = {base64.b64decode(token): rank for rank, token in enumerate(payload["ranks"])}
            return cls(payload["name"], ranks, payload["pattern"])
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"cannot read tokenizer file {path}: {error}") from error

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Text -> ids. By default special-token strings typed by a user stay plain text.

        Only code that builds prompts from trusted templates passes allow_special=True; letting user
        text become `<|im_end|>` would let anyone end a turn or forge a role (prompt injection).
        """
        if allow_special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode(text, disallowed_special=())

    def decode(self, ids) -> str:
        return self.encoding.decode(list(ids))

    def render_chat(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Phi-4 chat format -> (ids, loss_mask). Only assistant content and its <|im_end|> get loss.

        <|im_start|>{role}<|im_sep|>{content}<|im_end|> per message, no newlines, no bos. The header
        tokens of an assistant turn carry no loss: at inference we write them, the model does not.
        """
        ids, mask = [], []
        for message in messages:
            role, content = message["role"], message["content"]
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"unknown chat role {role!r}")
            header = [self.im_start_id] + self.encode(role) + [self.im_sep_id]
            body = self.encode(content) + [self.im_end_id]
            ids += header + body
            mask += [0] * len(header) + [int(role == "assistant")] * len(body)
        return ids, mask

    def render_prompt(self, messages: list[dict]) -> list[int]:
        """The ids that ask the model for the next assistant turn: the chat, then an open assistant header."""
        ids, _ = self.render_chat(messages)
        return ids + [self.im_start_id] + self.encode("assistant") + [self.im_sep_id]


def atomic_write_text(path: str, text: str):
    """Write a file so that readers see either the old or the new content, never half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX when tmp and path are on the same filesystem


def write_jsonl(path: str, records: list[dict]):
    """One JSON object per line, written atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


# ----------------------------------------------------------------------------------------------------
# 2. The synthetic world
#
# A problem is a person with some items, then a chain of 1-4 operations (buy more, give away, double),
# then a question. The worked solution states the start and one equation per operation, and ends with
# "Answer: N" on its own line, the format the oracle reads. Numbers stay small (start <= 20, steps <= 9,
# results <= 99) so that each equation is a fact a tiny model can learn.

NAMES = (
    "Mia Leo Ava Noah Emma Liam Zoe Omar Ivy Ezra Nora Hugo Lily Owen Ruby Felix Iris Jonah Maya Elias "
    "Clara Theo Hana Arlo Vera Kai Lena Milo Sofia Amir Nina Rafael Tara Dev Julia Oscar Ada Marco Yara Sam"
).split()
ITEMS = (
    "apples marbles stickers pencils cookies shells coins stamps books cards beads buttons "
    "plums eggs kites candles rocks ribbons lemons cupcakes feathers acorns crayons balloons"
).split()
PLACES = "market fair library park bakery school garden harbor museum station".split()
FEMALE = set("Mia Ava Emma Zoe Ivy Nora Lily Ruby Iris Maya Clara Hana Vera Lena Sofia Nina Tara Julia Ada Yara".split())


@dataclass
class Problem:
    """One verifiable problem: the question, its worked solution (ending in the answer line), the answer."""

    question: str
    solution: str
    answer: int
    level: int  # number of operations, 1..4: the difficulty

    def to_dict(self) -> dict:
        return asdict(self)


def make_problem(rng: random.Random, level: int) -> Problem:
    """Draw one problem with `level` operations from the world (deterministic given rng's state)."""
    name, friend = rng.sample(NAMES, 2)
    item, place = rng.choice(ITEMS), rng.choice(PLACES)
    he, his = ("she", "her") if name in FEMALE else ("he", "his")
    value = rng.randint(2, 20)
    sentences = [f"{name} has {value} {item}."]
    steps = [f"{name} starts with {value} {item}."]
    for _ in range(level):
        kinds = ["add", "sub"] + (["double"] if value <= 15 else [])
        if value <= 1:
            kinds = ["add"]
        kind = rng.choice(kinds)
        if kind == "add":
            n = rng.randint(1, min(9, 99 - value))
            sentence = rng.choice([
                f"Then {he} buys {n} more {item} at the {place}.",
                f"Then {friend} gives {name} {n} more {item}.",
                f"Then {he} finds {n} more {item} in the {place}.",
            ])
            steps.append(f"{name} gets {n} more: {value} + {n} = {value + n}.")
            value += n
        elif kind == "sub":
            n = rng.randint(1, min(9, value - 1))
            sentence = rng.choice([
                f"Then {he} gives {n} {item} to {friend}.",
                f"Then {he} loses {n} {item} on the way to the {place}.",
                f"Then {he} sells {n} {item} at the {place}.",
            ])
            steps.append(f"{name} loses {n}: {value} - {n} = {value - n}.")
            value -= n
        else:
            sentence = rng.choice([
                f"Then the number of {item} {he} has doubles.",
                f"Then {friend} gives {name} as many {item} as {he} already has.",
            ])
            steps.append(f"{name} doubles {his} {item}: {value} * 2 = {value * 2}.")
            value *= 2
        sentences.append(sentence)
    sentences.append(f"How many {item} does {name} have now?")
    steps.append(f"Answer: {value}")
    return Problem(" ".join(sentences), "\n".join(steps), value, level)


def problem_document(problem: Problem) -> str:
    """The pretraining ("textbook") rendering of a problem; sample.py prompts with the part up to 'Solution:'."""
    return f"Problem: {problem.question}\nSolution:\n{problem.solution}"


def problem_prompt(problem: Problem) -> str:
    return f"Problem: {problem.question}\nSolution:\n"


def problem_chat(problem: Problem) -> list[dict]:
    """The SFT rendering: the user asks, the assistant answers with the worked solution."""
    return [{"role": "user", "content": problem.question}, {"role": "assistant", "content": problem.solution}]


def drill_document(rng: random.Random, n_lines: int = 12) -> str:
    """Arithmetic drill lines ("7 + 5 = 12"): the facts every solution step relies on."""
    lines = []
    for _ in range(n_lines):
        a = rng.randint(1, 90)
        op = rng.choice("+-*")
        if op == "+":
            b = rng.randint(1, min(9, 99 - a))
            lines.append(f"{a} + {b} = {a + b}")
        elif op == "-":
            b = rng.randint(1, 9) if a > 9 else rng.randint(1, a)
            lines.append(f"{a} - {b} = {a - b}")
        else:
            a = rng.randint(1, 49)
            lines.append(f"{a} * 2 = {a * 2}")
    return "Practice:\n" + "\n".join(lines)


# "Answer: 42" on the last answer line; tolerate markdown bold, a trailing period, spaces and commas.
ANSWER_RE = regex.compile(r"Answer\s*[:=]\s*\**\s*(-?[\d,]+)")


def extract_answer(text: str) -> int | None:
    """The integer after the last 'Answer:' in text, or None when there is none (malformed output)."""
    matches = ANSWER_RE.findall(text)
    if not matches:
        return None
    digits = matches[-1].replace(",", "")
    try:
        return int(digits)
    except ValueError:
        return None


def check(problem: Problem, completion: str) -> bool:
    """The oracle: does the completion's final answer equal the problem's? (Only the answer counts.)"""
    return extract_answer(completion) == problem.answer


def make_split(seed: int, n: int, levels=(1, 2, 3, 4)) -> list[Problem]:
    """n problems with levels cycling through `levels`, deterministic in seed."""
    rng = random.Random(seed)
    return [make_problem(rng, levels[i % len(levels)]) for i in range(n)]


# ----------------------------------------------------------------------------------------------------
# 2b. Long documents (report section 3: midtraining on 30% long-context data)
#
# Phi-4 extended its context from 4K to 16K tokens on documents that are genuinely long: text whose
# later parts need facts from far earlier. Short documents glued together do not teach that (nothing
# in one problem depends on the one before it), which is why the report found natural long documents
# better than concatenated or padded ones. Ours are built from the world's own parts, with two kinds
# of long-range reference planted in them:
#
#   a ledger entry       "Leo has 37 shells."          ... far later ...   "Problem: How many shells does Leo
#                                                                           have now?" and its solution
#   a two-part problem   "Problem: Mia has 12 apples." ... far later ...   the rest of that problem and its
#                                                                           worked solution
#
# Either way the solution opens "Leo starts with 37 shells.", the line every worked solution of
# pretraining opens with, so the only new thing to learn is where the 37 comes from: one fact among a
# dozen "X has N" lines, hundreds of tokens back, instead of the question just above. (Pretraining
# taught that copy at short range only: the pretrained toy model gets it right at 20 tokens of
# distance and mostly wrong at 60.)
#
# Between them sits filler the model already knows (problems with solutions, arithmetic drills) that
# never names the people of the document, so nothing nearby gives an answer away. A document is built
# as a list of text pieces whose ids are concatenated. Every piece boundary is also a boundary of the
# tokenizer's pre-split (after a newline, or at the space before a number; BPE never merges across
# those), so the ids equal encode(text) and the position of every answer token is known exactly.

LEDGER_VALUES = range(10, 100)  # two-digit counts: one token each, and 90 of them (chance 1.1%)
LONG_SEED = 2_000_003  # seed of the midtraining documents (train and val splits)
LONG_EVAL_SEED = 3_000_017  # seed of the long-context evaluation documents (sample.py --eval-long)
SOLUTION_START_RE = regex.compile(r"^(\p{L}+) starts with (\d+) (\p{L}+)\.$")


@dataclass
class LongDocument:
    """A long document as token ids (the first is <|endoftext|>) with the exact place of every answer.

    answers: one dict per long-range question: "kind" ("ledger" or "problem"), "answer" (the number),
    "position" (index in ids of the answer's first token), "n_tokens" (its length in tokens) and
    "fact_position" (index in ids where the fact that gives the answer starts). position minus
    fact_position is how far back the model has to look.
    """

    ids: list[int]
    text: str
    answers: list[dict]


def long_document(
    rng: random.Random,
    tokenizer: Tokenizer,
    n_tokens: int,
    layout: str = "recall",
    n_ledger: int = 8,
    n_problems: int = 4,
    n_ledger_asked: int = 2,
    n_problems_asked: int = 1,
    banned_ngrams: set | None = None,
) -> LongDocument:
    """One long document of at most n_tokens ids (<|endoftext|> included), filled to within a few tokens.

    layout "recall": all facts first, then filler, then the questions, so every answer sits nearly
      n_tokens after its fact (the evaluation at 1x, 2x and 4x the pretraining length uses this).
    layout "near": the facts nobody asks about first, then filler, then each asked fact right before
      its question: the same questions, answered from a few tokens back, at the end of a long document.
    layout "mixed": facts and filler shuffled, each question somewhere after its fact, as many blocks
      later as a log-uniform draw says: every distance from a few tokens to the whole document, short
      ones as often as long ones (a curriculum from the copying pretraining taught to long range).
    Facts nobody asks about stay in as distractors. banned_ngrams holds the 13-grams of held-out
    questions: problems sharing one are drawn again (the decontamination rule of build_toy_dataset).
    """
    if layout not in ("recall", "near", "mixed"):
        raise ValueError(f"layout must be 'recall', 'near' or 'mixed', got {layout!r}")
    if not (0 <= n_ledger_asked <= n_ledger and 0 <= n_problems_asked <= n_problems):
        raise ValueError("cannot ask about more facts than the document states")
    names = set(NAMES)
    key_people: set[str] = set()  # every person a fact is about: filler must not mention them

    def draw_problem(level: int, is_key: bool) -> Problem:
        # Draw until the problem's people are new to the document and its question is clean.
        while True:
            problem = make_problem(rng, level)
            people = set(regex.findall(r"\p{L}+", problem.question)) & names
            clean = not banned_ngrams or not (ngrams(problem.question) & banned_ngrams)
            if clean and not (people & key_people):
                if is_key:
                    key_people.update(people)
                return problem

    # A block is a list of (text, answer) pieces; answer is None, or the dict that the answer fills in.
    facts, questions = [], []  # questions[i]["fact"] is the index of its fact in `facts`
    for k in range(n_problems):
        problem = draw_problem(rng.randint(1, 3), is_key=True)
        # Part one is the problem's first sentence ("Mia has 12 apples."), part two is everything else.
        first, rest = problem.question.split(". ", 1)
        facts.append({"pieces": [(f"Problem: {first}.\n", None)]})
        if k < n_problems_asked:
            opening, *steps = problem.solution.split("\n")
            name, start, item = SOLUTION_START_RE.match(opening).groups()
            answer = {"kind": "problem", "answer": int(start)}
            pieces = [
                (f"Problem: {rest}\nSolution:\n{name} starts with ", None),
                (start, answer),
                (f" {item}.\n" + "\n".join(steps) + "\n", None),
            ]
            questions.append({"pieces": pieces, "fact": len(facts) - 1})
    # Ledger entries go to people no problem mentions, so every name in the document has one fact.
    free = [name for name in NAMES if name not in key_people]
    if len(free) < n_ledger + 2:  # + 2: filler problems need two people of their own
        raise ValueError(f"{n_ledger} ledger entries and {n_problems} problems need more than {len(NAMES)} names")
    people = rng.sample(free, n_ledger)
    key_people.update(people)
    for k, (name, value) in enumerate(zip(people, rng.sample(LEDGER_VALUES, n_ledger))):
        item = rng.choice(ITEMS)
        facts.append({"pieces": [(f"{name} has {value} {item}.\n", None)]})
        if k < n_ledger_asked:
            answer = {"kind": "ledger", "answer": value}
            pieces = [
                (f"Problem: How many {item} does {name} have now?\nSolution:\n{name} starts with ", None),
                (str(value), answer),
                (f" {item}.\nAnswer: {value}\n", None),
            ]
            questions.append({"pieces": pieces, "fact": len(facts) - 1})

    def count(block: dict) -> int:
        return sum(len(tokenizer.encode(text)) for text, _ in block["pieces"])

    room = n_tokens - 1 - sum(map(count, facts)) - sum(map(count, questions))  # 1: the <|endoftext|>
    if room < 0:
        raise ValueError(f"{n_tokens} tokens cannot hold {n_ledger} ledger and {n_problems} problem facts")
    filler = []
    while room > 0:
        if rng.random() < 0.6:
            block = {"pieces": [(problem_document(draw_problem(rng.randint(1, 4), is_key=False)) + "\n", None)]}
        else:
            block = {"pieces": [(drill_document(rng, rng.randint(2, 6)) + "\n", None)]}
        if count(block) > room:  # too big for what is left: top up with the longest drill that fits, or stop
            for n_lines in range(5, 0, -1):
                block = {"pieces": [(drill_document(rng, n_lines) + "\n", None)]}
                if count(block) <= room:
                    break
            else:
                break
        filler.append(block)
        room -= count(block)

    if layout == "recall":
        order = rng.sample(facts, len(facts)) + filler + rng.sample(questions, len(questions))
    elif layout == "near":
        asked = {question["fact"] for question in questions}
        order = [fact for k, fact in enumerate(facts) if k not in asked] + filler
        for question in rng.sample(questions, len(questions)):
            order += [facts[question["fact"]], question]
    else:
        order = rng.sample(facts + filler, len(facts) + len(filler))
        for question in rng.sample(questions, len(questions)):
            fact = facts[question["fact"]]
            after = next(i for i, block in enumerate(order) if block is fact) + 1  # by identity, not ==
            skip = int(math.exp(rng.uniform(0.0, math.log(len(order) - after + 1))))  # 1 .. blocks left + 1
            order.insert(after + skip - 1, question)

    ids, texts, fact_positions = [tokenizer.bos_id], [], {}
    for block in order:
        if any(block is fact for fact in facts):
            fact_positions[next(i for i, fact in enumerate(facts) if fact is block)] = len(ids)
        for text, answer in block["pieces"]:
            piece = tokenizer.encode(text)
            if answer is not None:
                answer.update(position=len(ids), n_tokens=len(piece))
            ids += piece
            texts.append(text)
    answers = []
    for question in questions:
        answer = next(a for _, a in question["pieces"] if a is not None)
        answers.append({**answer, "fact_position": fact_positions[question["fact"]]})
    answers.sort(key=lambda a: a["position"])
    return LongDocument(ids, "".join(texts), answers)


def long_training_document(rng: random.Random, tokenizer: Tokenizer, n_tokens: int, banned_ngrams=None) -> LongDocument:
    """A midtraining document: random layout, and random numbers of facts and questions that grow with length.

    Half the documents put every question at the end (the hardest distances), half scatter them (every
    distance); some facts are never asked about, so the model cannot answer by elimination.
    """
    scale = max(1, n_tokens // 160)  # 6 at 1,024 tokens: up to 12 ledger entries and 6 problems
    n_ledger, n_problems = rng.randint(2, 2 * scale), rng.randint(1, scale)
    return long_document(
        rng, tokenizer, n_tokens, layout=rng.choice(("recall", "mixed")),
        n_ledger=n_ledger, n_problems=n_problems,
        n_ledger_asked=rng.randint((n_ledger + 1) // 2, n_ledger), n_problems_asked=rng.randint(1, n_problems),
        banned_ngrams=banned_ngrams,
    )


# ----------------------------------------------------------------------------------------------------
# 3. Decontamination (report section 2: a 13-gram overlap with an evaluation set flags a sample)


def ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    """Word n-grams of lowercased text with punctuation dropped."""
    words = regex.findall(r"\p{L}+|\p{N}+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def decontaminate(texts: list[str], eval_texts: list[str], n: int = 13) -> tuple[list[str], int]:
    """Drop every training text sharing an n-gram with any eval text; return (kept, n_dropped).

    We index the eval questions, not their solutions: the worked solutions are formulaic equations
    ("12 + 5 = 17.") shared by thousands of unrelated problems, so their n-grams say nothing about
    leakage, whereas a shared 13-word stretch of question text means the problem itself leaked.
    """
    banned = set()
    for text in eval_texts:
        banned |= ngrams(text, n)
    kept = [text for text in texts if not (ngrams(text, n) & banned)]
    return kept, len(texts) - len(kept)


# ----------------------------------------------------------------------------------------------------
# 4. Token shards and the loader
#
# A shard is a flat uint32 array of token ids (uint16 cannot hold Phi-4's 100,352 ids) after a 16-byte
# header: 8 magic bytes and the token count. Documents are separated by <|endoftext|>. Memory-mapping
# lets a loader read any window without loading the file, so shards can be far larger than RAM.

SHARD_MAGIC = b"PHI4TOK1"
HEADER_BYTES = 16


def write_shard(path: str, tokens) -> None:
    tokens = np.asarray(tokens, dtype=np.uint32)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(SHARD_MAGIC + np.uint64(len(tokens)).tobytes())
        f.write(tokens.tobytes())
    os.replace(tmp, path)


def read_shard(path: str) -> np.ndarray:
    """Memory-map a shard (no copy); checks the header so a truncated or foreign file fails clearly."""
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[:8] != SHARD_MAGIC:
        raise ValueError(f"{path} is not a token shard (bad header); rebuild it with `python data.py`")
    n_tokens = int(np.frombuffer(header[8:], dtype=np.uint64)[0])
    expected = HEADER_BYTES + 4 * n_tokens
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
        if not paths:
            raise ValueError("no token shards given; build them with `python data.py` (or pass --data)")
        self.shards = [read_shard(p) for p in paths]
        self.total = sum(len(s) for s in self.shards)
        self.B, self.T, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.row = seq_len + 1
        if self.total < world_size * batch_size * self.row:
            raise ValueError(
                f"shards hold {self.total} tokens, fewer than one batch ({world_size}x{batch_size}x{self.row}); "
                "lower --batch-size / --seq-len or add data"
            )
        self.position = 0  # token offset of the next global batch in the concatenated stream
        self.epoch = 0

    def _read(self, start: int, n: int) -> np.ndarray:
        """n tokens from the concatenated stream starting at `start` (may span shards)."""
        out, offset = [], start
        for shard in self.shards:
            if offset >= len(shard):
                offset -= len(shard)
                continue
            piece = shard[offset : offset + n - sum(len(p) for p in out)]
            out.append(np.asarray(piece))
            offset = 0
            if sum(len(p) for p in out) == n:
                break
        return np.concatenate(out)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        global_tokens = self.world_size * self.B * self.row
        if self.position + global_tokens > self.total:
            # Start the next epoch from the top: the synthetic data is repeated, as Phi-4 did (~14 epochs).
            self.position, self.epoch = 0, self.epoch + 1
        start = self.position + self.rank * self.B * self.row
        rows = self._read(start, self.B * self.row).astype(np.int64).reshape(self.B, self.row)  # (B, T+1)
        self.position += global_tokens
        return rows[:, :-1], rows[:, 1:]  # inputs (B, T), targets (B, T)

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict):
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
        # Conversations that do not fit are dropped, never truncated: a cut-off answer teaches the model
        # to stop mid-solution without <|im_end|>.
        self.examples = [(ids, mask) for ids, mask in examples if len(ids) <= seq_len + 1]
        self.n_dropped = len(examples) - len(self.examples)
        if len(self.examples) < batch_size * world_size:
            raise ValueError(f"only {len(self.examples)} conversations fit --seq-len {seq_len}; need at least one batch")
        self.B, self.pad_id, self.rank, self.world_size, self.seed = batch_size, pad_id, rank, world_size, seed
        self.position, self.epoch = 0, 0

    def _order(self) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        global_rows = self.B * self.world_size
        if self.position + global_rows > len(self.examples):
            self.position, self.epoch = 0, self.epoch + 1
        order = self._order()
        start = self.position + self.rank * self.B
        chosen = [self.examples[i] for i in order[start : start + self.B]]
        self.position += global_rows
        width = max(len(ids) for ids, _ in chosen) - 1
        inputs = np.full((self.B, width), self.pad_id, dtype=np.int64)  # (B, T)
        targets = np.full((self.B, width), -100, dtype=np.int64)  # (B, T)
        for row, (ids, mask) in enumerate(chosen):
            ids, mask = np.asarray(ids), np.asarray(mask)
            n = len(ids) - 1
            inputs[row, :n] = ids[:-1]
            # Token t+1 is a target only where the loss mask marks it (assistant content and <|im_end|>).
            targets[row, :n] = np.where(mask[1:] == 1, ids[1:], -100)
        return inputs, targets

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict):
        self.position, self.epoch = int(state["position"]), int(state["epoch"])


def read_conversations(path: str) -> list[list[dict]]:
    """Chat data from JSONL: records with "messages", or world problems (rendered by problem_chat)."""
    if not os.path.exists(path):
        raise ValueError(f"chat data {path} not found; build it with `python data.py` or pass --sft-data")
    conversations = []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "messages" in record:
                conversations.append(record["messages"])
            elif "question" in record and "solution" in record:
                conversations.append(problem_chat(Problem(**record)))
            else:
                raise ValueError(f"{path}:{line_number}: a record needs 'messages' or 'question'+'solution'")
    if not conversations:
        raise ValueError(f"chat data {path} is empty")
    return conversations


def shard_paths(data_dir: str, split: str) -> list[str]:
    """The shards of one split (`train` or `val`) in a data directory, in order."""
    if not os.path.isdir(data_dir):
        return []
    return sorted(
        os.path.join(data_dir, f) for f in os.listdir(data_dir) if f.startswith(f"{split}_") and f.endswith(".bin")
    )


class MixtureLoader:
    """Midtraining batches: a fixed share of rows holds one long document each, the rest replay pretraining.

    Phi-4 midtrained on 30% new long-context data and 70% replayed pretraining data (report section 3).
    We mix by rows: global row g (counted over the whole run, across ranks) is a long document exactly
    when floor((g + 1) * f) > floor(g * f), so any window of N rows holds f * N of them, give or take
    one, and the long rows are spread evenly instead of arriving in clumps. Long documents are built to
    fill a row (data.long_document), so the share of tokens is the share of rows, less a few pad tokens.

    How each kind of row is packed, and why:
    - A long document gets a row of its own, starting at position 0 with its <|endoftext|>, padded at
      the end (pad targets are -100, and causal attention never looks forward at the padding). It is
      never cut and never shares a row: the facts a question needs are all in the row, no unrelated
      document is visible to be matched by mistake (another document's "The harbor has 12 shells."
      would be a wrong answer within reach), and token i sits at its true position i in the document,
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
        if not 0.0 <= long_fraction <= 1.0:
            raise ValueError(f"--long-fraction must be between 0 and 1, got {long_fraction}")
        if not long_paths and long_fraction > 0:
            raise ValueError("no long-document shards (long_train_*.bin) found; build them or pass --long-data")
        # The fraction as an exact ratio, so row g's kind does not depend on float rounding.
        ratio = Fraction(long_fraction).limit_denominator(1000)
        self.numerator, self.denominator = ratio.numerator, ratio.denominator
        self.replay = TokenLoader(replay_paths, 1, seq_len)  # read through its concatenated stream only
        self.n_replay_rows = self.replay.total // (seq_len + 1)
        self.documents: list[np.ndarray] = []  # views into the memory-mapped shards, one per document
        for path in long_paths:
            shard = read_shard(path)
            starts = np.flatnonzero(np.asarray(shard) == bos_id)
            if len(shard) and (len(starts) == 0 or starts[0] != 0):
                raise ValueError(f"{path} does not start with <|endoftext|>; rebuild the long documents")
            ends = [*starts[1:], len(shard)]
            self.documents += [shard[start:end] for start, end in zip(starts, ends)]
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
        n_long_before = g * self.numerator // self.denominator  # long rows among rows 0 .. g-1
        tokens = np.full(self.T + 1, self.pad_id, dtype=np.int64)  # (T+1,)
        if self.is_long(g):
            document = self.documents[n_long_before % len(self.documents)]
            tokens[: len(document)] = document
            n_real = len(document)
        else:
            # Replay rows walk through the pretraining stream in order and start over at its end.
            replay_row = (g - n_long_before) % self.n_replay_rows
            tokens[:] = self.replay._read(replay_row * (self.T + 1), self.T + 1)
            n_real = self.T + 1
        targets = tokens[1:].copy()
        targets[n_real - 1 :] = -100  # target t is token t+1: none past the document's last token
        return tokens[:-1], targets

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        first = self.position + self.rank * self.B  # this rank's rows of the global batch
        rows = [self.row(g) for g in range(first, first + self.B)]
        self.position += self.world_size * self.B
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])  # (B, T) each

    def long_token_share(self) -> float:
        """The share of target tokens that come from long documents (what "30% long" means in tokens)."""
        if not self.documents:
            return 0.0
        fraction = self.numerator / self.denominator
        long_tokens = fraction * float(np.mean([len(doc) - 1 for doc in self.documents]))
        return long_tokens / (long_tokens + (1 - fraction) * self.T)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict):
        self.position = int(state["position"])


# ----------------------------------------------------------------------------------------------------
# 5. Building data sets

TOY_DATA_DIR = os.path.join("out", "data", "toy")
TOY_VOCAB = 1024  # an upper bound: the toy world has fewer distinct words, so BPE stops near 800
EVAL_SEED = 1_000_003  # the held-out split comes from its own seed, never from the training stream


def tokenize_documents(tokenizer: Tokenizer, documents: list[str], desc: str) -> np.ndarray:
    """Concatenate documents as ids, each preceded by <|endoftext|> (the document separator)."""
    ids = []
    for document in tqdm(documents, desc=desc, unit="doc", mininterval=1.0):
        ids.append(tokenizer.bos_id)
        ids.extend(tokenizer.encode(document))
    return np.array(ids, dtype=np.uint32)


def write_split(tokenizer, documents, out_dir, split, shard_tokens=50_000_000) -> int:
    tokens = tokenize_documents(tokenizer, documents, desc=f"tokenizing {split}")
    for i, start in enumerate(range(0, len(tokens), shard_tokens)):
        write_shard(os.path.join(out_dir, f"{split}_{i:03d}.bin"), tokens[start : start + shard_tokens])
    return len(tokens)


def build_toy_dataset(out_dir: str = TOY_DATA_DIR, n_problems: int = 60_000, n_eval: int = 500, seed: int = 1337):
    """The synthetic world as pretraining shards, an SFT chat set and a decontaminated eval split.

    Writes tokenizer.json, train_*.bin, val_*.bin, eval.jsonl (held-out problems), sft.jsonl
    (problems for the SFT stage), rl.jsonl (problems to sample on: rejection sampling, PTS) and
    meta.json (counts, decontamination).
    """
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(seed)
    eval_problems = make_split(EVAL_SEED, n_eval)
    eval_questions = [p.question for p in eval_problems]

    # Training problems: a third of them also appear as chat data for SFT later; drills teach the facts.
    problems = [make_problem(rng, rng.randint(1, 4)) for _ in tqdm(range(n_problems), desc="world", unit="problem")]
    # Exact repeats of an eval question are removed first, then the 13-gram rule removes near-copies.
    eval_set = set(eval_questions)
    problems = [p for p in problems if p.question not in eval_set]
    kept_questions, n_dropped = decontaminate([p.question for p in problems], eval_questions)
    kept = set(kept_questions)
    problems = [p for p in problems if p.question in kept]
    documents = [problem_document(p) for p in problems] + [drill_document(rng) for _ in range(n_problems // 6)]
    rng.shuffle(documents)
    n_val = max(1, len(documents) // 50)
    val_documents, train_documents = documents[:n_val], documents[n_val:]

    # The tokenizer learns from (a sample of) the training text only.
    tokenizer = Tokenizer.train("\n".join(train_documents[:20_000]), TOY_VOCAB, verbose=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    n_train = write_split(tokenizer, train_documents, out_dir, "train")
    n_val_tokens = write_split(tokenizer, val_documents, out_dir, "val")

    write_jsonl(os.path.join(out_dir, "eval.jsonl"), [p.to_dict() for p in eval_problems])
    # Post-training sets, disjoint from each other: SFT conversations, and problems whose answers the
    # model will be sampled on (rejection sampling, Pivotal Token Search). Both are training problems,
    # so the 13-gram rule has already cleaned them against the held-out split.
    n_sft = len(problems) // 3
    for name, subset in (("sft.jsonl", problems[:n_sft]), ("rl.jsonl", problems[n_sft : n_sft + 4000])):
        write_jsonl(os.path.join(out_dir, name), [p.to_dict() for p in subset])
    meta = {
        "problems": len(problems),
        "dropped_by_13gram": n_dropped,
        "documents": len(documents),
        "train_tokens": n_train,
        "val_tokens": n_val_tokens,
        "eval_problems": n_eval,
        "vocab_size": tokenizer.vocab_size,
        "seed": seed,
    }
    atomic_write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2))
    return meta


def read_problems(path: str) -> list[Problem]:
    with open(path) as f:
        return [Problem(**json.loads(line)) for line in f if line.strip()]


LONG_META = "long_meta.json"


def build_long_documents(data_dir: str, doc_tokens: int, n_train: int = 4000, n_val: int = 64, seed: int = LONG_SEED) -> dict:
    """Midtraining documents of at most doc_tokens ids -> long_train_000.bin, long_val_000.bin, long_meta.json.

    Tokenized with the folder's own tokenizer.json (the pretraining tokenizer: nothing is retrained, and
    the pretraining shards are left as they are) and decontaminated against the held-out questions of
    eval.jsonl when the folder has them. Each document starts with <|endoftext|>, as in every shard.
    """
    tokenizer = Tokenizer.load(os.path.join(data_dir, "tokenizer.json"))
    eval_file = os.path.join(data_dir, "eval.jsonl")
    banned: set = set()
    for problem in read_problems(eval_file) if os.path.exists(eval_file) else []:
        banned |= ngrams(problem.question)
    meta = {"doc_tokens": doc_tokens, "seed": seed}
    for split, n, split_seed in (("long_train", n_train, seed), ("long_val", n_val, seed + 1)):
        rng = random.Random(split_seed)
        documents = [
            long_training_document(rng, tokenizer, doc_tokens, banned)
            for _ in tqdm(range(n), desc=f"building {split}", unit="doc", mininterval=1.0)
        ]
        # Problems were drawn clean already; checking whole documents as well means a 13-gram that
        # happens to span two pieces cannot slip through either.
        clean = [doc for doc in documents if not (ngrams(doc.text) & banned)]
        tokens = np.concatenate([np.asarray(doc.ids, dtype=np.uint32) for doc in clean])
        write_shard(os.path.join(data_dir, f"{split}_000.bin"), tokens)
        meta.update({
            f"{split}_documents": len(clean),
            f"{split}_tokens": len(tokens),
            f"{split}_questions": sum(len(doc.answers) for doc in clean),
            f"{split}_dropped_by_13gram": n - len(clean),
        })
    # Written last: a meta file means a complete set for this length.
    atomic_write_text(os.path.join(data_dir, LONG_META), json.dumps(meta, indent=2))
    return meta


def ensure_long_documents(data_dir: str, doc_tokens: int, **kwargs) -> dict:
    """The long documents of data_dir for rows of doc_tokens ids: built on first use, or again for a new length."""
    meta_path = os.path.join(data_dir, LONG_META)
    if os.path.exists(meta_path) and shard_paths(data_dir, "long_train"):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("doc_tokens") == doc_tokens:
            return meta
    print(f"building long documents of up to {doc_tokens} tokens in {data_dir} (the midtraining data)")
    return build_long_documents(data_dir, doc_tokens, **kwargs)


def read_text_folder(folder: str) -> list[str]:
    """Documents from a folder: each .txt file is one document; each .jsonl line with a "text" field is one."""
    if not os.path.isdir(folder):
        raise ValueError(f"--input-dir {folder} is not a folder")
    documents = []
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                if name.endswith(".txt"):
                    with open(path, encoding="utf-8") as f:
                        documents.append(f.read())
                elif name.endswith(".jsonl"):
                    with open(path, encoding="utf-8") as f:
                        documents += [json.loads(line)["text"] for line in f if line.strip()]
            except (OSError, UnicodeDecodeError, ValueError, KeyError) as error:
                raise ValueError(f"cannot read {path}: {error} (each .jsonl line needs a 'text' field)")
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
    random.Random(0).shuffle(documents)
    n_val = max(1, len(documents) // 100) if len(documents) > 1 else 0
    meta = {"train_tokens": write_split(tokenizer, documents[n_val:], out_dir, "train"), "vocab_size": tokenizer.vocab_size}
    if n_val:
        meta["val_tokens"] = write_split(tokenizer, documents[:n_val], out_dir, "val")
    atomic_write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2))
    return meta


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
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
    parser.add_argument("--n-problems", type=int, default=60_000, help="toy world: training problems")
    parser.add_argument("--seed", type=int, default=1337, help="toy world: generator seed")
    args = parser.parse_args()
    try:
        if args.input_dir:
            if not args.out:
                parser.error("--input-dir needs --out (where to write the shards)")
            meta = build_from_folder(args.input_dir, args.out, args.tokenizer, args.vocab_size, args.tokenizer_path)
        else:
            meta = build_toy_dataset(args.out or TOY_DATA_DIR, n_problems=args.n_problems, seed=args.seed)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(json.dumps(meta, indent=2))
