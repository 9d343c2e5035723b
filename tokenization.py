"""Tokenizers: Phi-4's (cl100k_base + 96 special tokens) and a byte-level BPE trained from scratch.

Phi-4 (report section 3) uses the tiktoken `cl100k_base` vocabulary of 100,256 byte-level BPE tokens, plus
96 special tokens (ids 100,256..100,351; vocabulary 100,352): `<|endoftext|>`, the chat markers
`<|im_start|>`, `<|im_sep|>`, `<|im_end|>`, fill-in-the-middle markers and dummies, one of which
(`<|dummy_85|>`) is the padding token. The toy world uses the same machinery with a BPE learned on its
own corpus (a few hundred merges), so both tokenizers are one class and differ only in their ranks.

Chat format (the released model's chat template): every message is
`<|im_start|>{role}<|im_sep|>{content}<|im_end|>` with no newlines and no bos; the model writes the
assistant's content and its `<|im_end|>`, which is therefore all that SFT puts loss on.

`data.Tokenizer` is the public name of the class (data.py re-exports it). Loading a tokenizer from a
Hugging Face folder lives in hf.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections import Counter

import regex
import tiktoken
import tiktoken.load
from tqdm import tqdm

import files

# ----------------------------------------------------------------------------------------------------
# 1. Tokenizer

# cl100k_base's pre-tokenizer: text is first split into "words" by this pattern (contractions, runs of
# letters with one leading non-letter, numbers of at most 3 digits, punctuation runs, whitespace), and
# BPE merges never cross these boundaries.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# The toy BPE's pattern: cl100k's, except that a number keeps the space before it (" 12", where cl100k
# splits " " + "12"). With cl100k's split every number follows the same bare " " token, so the token
# before a number never says which number comes; the toy model has to copy each event's number from the
# question into its step, and measured (LAB.md, "The fourth world") it learned that in about half its
# pretraining runs with the split (17-100% right by seed) and in every run without it (99.8-100%, three
# seeds). The real tokenizer keeps cl100k's pattern exactly (the released weights were trained on it).
TOY_PATTERN = CL100K_PATTERN.replace(r"|\p{N}{1,3}|", r"| ?\p{N}{1,3}|")
# A rank file that differs by one entry would encode the same text to different ids than the released
# model saw, without any error: the hash turns that into a failure at load time.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_N_RANKS = 100256  # 256 single bytes + 100,000 merges


def _phi4_special_names() -> list[str]:
    """Phi-4's 96 special tokens in id order (ids 100256..100351 in the released tokenizer)."""
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
        """mergeable_ranks: token bytes -> rank, ranks 0..n-1 (a token's rank is its id); the 96 special
        tokens take ids n..n+95, so no special id can collide with a learned one."""
        self.name = name
        self.pattern = pattern
        self.mergeable_ranks = mergeable_ranks
        n_ranks = len(mergeable_ranks)
        self.special_tokens = {token: n_ranks + i for i, token in enumerate(PHI4_SPECIAL_NAMES)}
        # tiktoken runs the BPE in Rust: the toy tokenizer gets the real one's speed and exact semantics.
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=self.special_tokens
        )
        self.vocab_size = n_ranks + len(PHI4_SPECIAL_NAMES)  # the model may pad V further (sample.py)
        # The ids the rest of the code needs by name.
        self.bos_id = self.special_tokens["<|endoftext|>"]  # also the document separator in shards
        self.im_start_id = self.special_tokens["<|im_start|>"]
        self.im_sep_id = self.special_tokens["<|im_sep|>"]
        self.im_end_id = self.special_tokens["<|im_end|>"]  # Phi-4's eos: generation stops here
        self.eos_id = self.im_end_id  # the name generation code uses for "the answer is over"
        self.pad_id = self.special_tokens[PAD_TOKEN]  # never in real text, so padding cannot pass for it

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
                digest = hashlib.sha256(f.read()).hexdigest()  # 1.7 MB: hashed whole, in well under a second
            if digest != CL100K_SHA256:
                raise ValueError(f"{path} is not cl100k_base.tiktoken (sha256 {digest[:12]}... differs)")
            ranks = tiktoken.load.load_tiktoken_bpe(path)
        else:
            # A private attribute, but tiktoken offers no public way to get an encoding's ranks back.
            ranks = tiktoken.get_encoding("cl100k_base")._mergeable_ranks
        assert len(ranks) == CL100K_N_RANKS, "cl100k_base should have 100,256 ranks"  # or special ids shift
        return cls("phi4", ranks)

    @classmethod
    def train(cls, text: str, vocab_size: int, name: str = "toy-bpe", verbose: bool = False,
              pattern: str = CL100K_PATTERN) -> "Tokenizer":
        """Learn a byte-level BPE of `vocab_size` ids (96 of them special) from `text`, pre-split by `pattern`.

        The classic algorithm: start from the 256 single bytes, then repeatedly merge the most frequent
        adjacent pair of tokens into a new token. Two things make it fast enough for a few thousand
        merges in seconds: (1) we count unique pre-tokenized words once with their frequencies, since
        natural text repeats words a lot; (2) after each merge we update pair counts only for the
        words that contain the merged pair, found through an index pair -> words.
        """
        n_merges = vocab_size - len(PHI4_SPECIAL_NAMES) - 256  # vocab = 256 bytes + merges + 96 special
        if n_merges < 0:
            raise ValueError(f"vocab_size must be at least {256 + len(PHI4_SPECIAL_NAMES)}, got {vocab_size}")
        word_counts = Counter(regex.findall(pattern, text))  # unique pre-tokenized words -> count
        if not word_counts:
            raise ValueError("cannot train a tokenizer on empty text")
        words = [list(w.encode("utf-8")) for w in word_counts]  # each word as a list of token ids
        freqs = list(word_counts.values())  # freqs[w]: how often word w occurs; its pairs count that often
        token_bytes = [bytes([i]) for i in range(256)]  # id -> the bytes it stands for

        pair_counts: Counter = Counter()
        pair_words: dict[tuple[int, int], set[int]] = {}  # which words contain each pair
        for w, (ids, freq) in enumerate(zip(words, freqs)):
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += freq
                pair_words.setdefault(pair, set()).add(w)

        for _ in tqdm(range(n_merges), desc="training BPE", disable=not verbose):
            # BEGIN SOLUTION bpe: merge the most frequent pair (ties: larger pair) in every word holding it; update both indexes
            if not pair_counts:
                break  # every word is a single token already: the corpus is too small for this vocab
            # Most frequent pair; ties broken by the pair itself so training is deterministic.
            best = max(pair_counts.items(), key=lambda item: (item[1], item[0]))[0]
            new_id = len(token_bytes)  # merge k gets id 256 + k: its rank, so tiktoken applies it k-th
            token_bytes.append(token_bytes[best[0]] + token_bytes[best[1]])
            for w in pair_words.pop(best, ()):  # popped: once merged, no word holds `best` any more
                ids, freq = words[w], freqs[w]
                # Remove this word's old pairs from the counts, merge, then add its new pairs back.
                for pair in zip(ids, ids[1:]):
                    pair_counts[pair] -= freq
                    if pair_counts[pair] <= 0:
                        del pair_counts[pair]
                # Left to right, non-overlapping: "aaa" with best = (a, a) becomes [aa, a], as tiktoken does.
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
                    # Stale entries (pairs the word lost) stay in pair_words; they only cost a visit later.
                    pair_counts[pair] += freq
                    pair_words.setdefault(pair, set()).add(w)
            # END SOLUTION bpe
        # tiktoken applies merges by rank: the earlier a token was learned, the lower its rank.
        ranks = {b: i for i, b in enumerate(token_bytes)}
        return cls(name, ranks, pattern)

    # -- saving and loading (plain JSON, no pickled code) --------------------------------------

    def save(self, path: str):
        """Write the tokenizer as JSON: name, pattern, and the token bytes in rank order."""
        ranks = [None] * len(self.mergeable_ranks)  # index = rank, so the ranks need not be stored
        for token, rank in self.mergeable_ranks.items():
            # base64: a token can be any bytes (half a UTF-8 character), which JSON text cannot hold.
            ranks[rank] = base64.b64encode(token).decode("ascii")
        # The special names are written for readers of the file; load() takes them from PHI4_SPECIAL_NAMES.
        payload = {"name": self.name, "pattern": self.pattern, "ranks": ranks, "special_tokens": PHI4_SPECIAL_NAMES}
        files.atomic_write_text(path, json.dumps(payload))

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """A tokenizer written by save(); a missing or malformed file raises ValueError naming it."""
        try:
            with open(path) as f:
                payload = json.load(f)
            ranks = {base64.b64decode(token): rank for rank, token in enumerate(payload["ranks"])}  # bytes -> rank
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
        """Ids (any iterable of ints) -> text. Bytes that do not form whole UTF-8 characters, as when a
        cut falls inside one, decode to U+FFFD instead of raising."""
        return self.encoding.decode(list(ids))

    def render_chat(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Phi-4 chat format -> (ids, loss_mask). Only assistant content and its <|im_end|> get loss.

        <|im_start|>{role}<|im_sep|>{content}<|im_end|> per message, no newlines, no bos. The header
        tokens of an assistant turn carry no loss: at inference we write them, the model does not.
        """
        ids, mask = [], []
        for message in messages:
            # BEGIN SOLUTION chat_mask: <|im_start|> role <|im_sep|> (no loss), content <|im_end|> (loss if assistant); refuse bad roles
            role, content = message["role"], message["content"]
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"unknown chat role {role!r}")
            header = [self.im_start_id] + self.encode(role) + [self.im_sep_id]  # special ids, never text
            body = self.encode(content) + [self.im_end_id]
            ids += header + body
            mask += [0] * len(header) + [int(role == "assistant")] * len(body)  # one flag per id in `ids`
            # END SOLUTION chat_mask
        return ids, mask

    def render_prompt(self, messages: list[dict]) -> list[int]:
        """The ids that ask the model for the next assistant turn: the chat, then an open assistant header."""
        ids, _ = self.render_chat(messages)
        return ids + [self.im_start_id] + self.encode("assistant") + [self.im_sep_id]
