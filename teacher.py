"""Teachers: the models that write synthetic data. A room: synth.py's pipelines call `complete`.

Phi-4 report, section 2 (synthetic data): a strong teacher model (GPT-4o for Phi-4) writes, rewrites,
critiques and answers. Here a teacher is anything with `complete(messages, sample_index=0) -> str`, where
messages are chat dicts {"role": "system" | "user" | "assistant", "content": str}. `sample_index` asks for
the i-th independent sample of the same request: plurality filtering needs several different answers to
one question, and a cache must tell them apart. Each teacher also has a `name`, written into every record.

    HTTPTeacher   any OpenAI-compatible chat-completions server (vLLM, llama.cpp's server, a hosted API),
                  through urllib only: retries with backoff, Retry-After, an on-disk reply cache, and a
                  timeout that bounds the whole request, from the connect to the last byte of the body
                  (a server that drips its headers or its reply is cut off at the deadline)
    LocalTeacher  this project's own checkpoint in-process, through sample.generate

Simplified: one request at a time (a real run would keep many in flight); no streaming; the cache is one
JSON file per request, fine for thousands of replies, not for millions.

Commands: used through synth.py (`python synth.py PIPELINE --help`); tested by
`python -m pytest tests/test_synth.py` (a scripted server on 127.0.0.1).
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import files  # atomic writes for the reply cache

# ----------------------------------------------------------------------------------------------------
# Errors and retry hints

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # what OpenAI's own clients use when OPENAI_BASE_URL is unset
MODEL_ENV = "OPENAI_MODEL"  # our choice of variable name for the model; the other two are the usual ones


class TeacherError(RuntimeError):
    """The teacher gave no usable reply; the message names the URL and the last error seen."""


class _Retryable(Exception):
    """One failed attempt worth repeating, with the server's Retry-After (seconds) when it sent one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either a number of seconds or an HTTP date (RFC 9110); None if absent or unreadable."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------
# HTTPTeacher


class HTTPTeacher:
    """A model behind an OpenAI-compatible POST {base_url}/chat/completions endpoint, via urllib only.

    Every reply is cached on disk, one JSON file per request, keyed by the sha256 of the canonical request
    (URL path, model, messages, temperature, max_tokens, seed). Interrupt a run and start it again: the
    requests already answered are read back from the cache instead of being paid for twice.
    """

    def __init__(self, model=None, base_url=None, api_key=None, cache_dir=None, timeout=60.0, retries=4,
                 temperature=0.7, max_tokens=1024, seed=0, backoff=1.0, max_backoff=60.0, sleep=time.sleep):
        self.model = model or os.environ.get(MODEL_ENV)
        if not self.model:
            raise ValueError(f"HTTPTeacher needs a model name: pass --model or set {MODEL_ENV}")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.timeout, self.retries = timeout, retries
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.backoff, self.max_backoff = backoff, max_backoff
        self.sleep = sleep  # injectable so tests can see the waits without spending them
        # The name goes into every record's provenance: model and host, never credentials from the URL.
        where = urllib.parse.urlsplit(self.base_url)
        self.name = f"{self.model}@{where.hostname}" + (f":{where.port}" if where.port else "")

    def request_body(self, messages: list[dict], sample_index: int = 0) -> dict:
        # Servers that honour `seed` (vLLM, OpenAI) then give a different but reproducible sample per index.
        # With temperature 0 all samples coincide, so plurality filtering needs temperature > 0.
        return {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": self.seed + sample_index}

    def cache_key(self, body: dict) -> str:
        # The URL's path, not its host: the same model moved to another machine keeps its cache.
        # The API key is never part of the key (nor written anywhere).
        canonical = json.dumps({"path": urllib.parse.urlsplit(self.url).path, **body},
                               sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def complete(self, messages: list[dict], sample_index: int = 0) -> str:
        body = self.request_body(messages, sample_index)
        path = None
        if self.cache_dir is not None:
            key = self.cache_key(body)
            path = self.cache_dir / key[:2] / f"{key}.json"  # 256 subfolders keep directories small
            try:
                return json.loads(path.read_text(encoding="utf-8"))["reply"]
            except (OSError, ValueError, KeyError):
                pass  # not cached yet (a damaged file, impossible with atomic writes, is simply refetched)
        reply = self._post_with_retries(body)
        if path is not None:
            # Atomic (temporary file, fsync, rename): a run killed mid-write leaves either no entry or a
            # whole one, never half a JSON file.
            files.atomic_write_text(str(path), json.dumps({"request": body, "reply": reply}, ensure_ascii=False))
        return reply

    def _post_with_retries(self, body: dict) -> str:
        last_error = None
        for attempt in range(self.retries + 1):
            try:
                return self._post_once(body)
            except _Retryable as error:
                last_error = error
            if attempt == self.retries:
                break
            if last_error.retry_after is not None:
                # The server told us when to come back; capped so a confused server cannot stall a run for hours.
                delay = min(last_error.retry_after, self.max_backoff)
            else:
                # Exponential backoff with jitter: clients that failed together should not retry in lockstep.
                delay = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
            self.sleep(delay)
        raise TeacherError(f"{self.url}: no usable reply after {self.retries + 1} attempts; last error: {last_error}")

    def _post_once(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers,
                                         method="POST")
        try:
            raw = post_with_deadline(request, self.timeout)
        except urllib.error.HTTPError as error:
            # Rate limits and server errors are worth another try; anything else (400 bad request, 401 bad
            # key, 404 wrong model) fails the same way every time, so we stop at once with the server's words.
            detail = error.read(300).decode("utf-8", "replace")
            if error.code == 429 or error.code >= 500:
                raise _Retryable(f"HTTP {error.code}: {detail}", parse_retry_after(error.headers.get("Retry-After")))
            raise TeacherError(f"{self.url}: HTTP {error.code} {error.reason}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            # Refused or dropped connections and timeouts, the whole-request deadline included.
            raise _Retryable(f"{type(error).__name__}: {getattr(error, 'reason', error)}") from None
        try:
            reply = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            # Truncated bodies and proxy error pages are usually transient too.
            raise _Retryable(f"malformed reply ({type(error).__name__}): {raw[:120]!r}") from None
        if not isinstance(reply, str):
            raise _Retryable(f"malformed reply: content is {type(reply).__name__}, not text")
        return reply


def post_with_deadline(request: urllib.request.Request, timeout: float) -> bytes:
    """Send the request and read the whole reply within `timeout` seconds, or raise TimeoutError.

    A socket timeout bounds each read, not the request: a server that drips one byte a second never
    trips a 10-second socket timeout, in its status line, its headers or its body. So a watchdog timer
    shuts the connection's socket down when the deadline passes, wherever the reply is stuck; the
    blocked read then fails at once. The connection classes below only record their socket for it.
    """
    sockets, expired = [], threading.Event()

    def record(connection_class):
        class Recorded(connection_class):
            def connect(self):
                super().connect()
                sockets.append(self.sock)

        return Recorded

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(record(http.client.HTTPConnection), req)

    class SecureHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(record(http.client.HTTPSConnection), req, context=self._context)

    def expire():
        expired.set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes up the blocked read with an error
            except OSError:
                pass  # already closed: the request finished just in time

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        with urllib.request.build_opener(Handler, SecureHandler).open(request, timeout=timeout) as response:
            return response.read()
    except (OSError, http.client.HTTPException) as error:
        if expired.is_set() and not isinstance(error, urllib.error.HTTPError):
            raise TimeoutError(f"timed out: the reply did not arrive within --timeout {timeout:g} s") from None
        raise
    finally:
        watchdog.cancel()


# ----------------------------------------------------------------------------------------------------
# LocalTeacher


class LocalTeacher:
    """This project's own model, in-process: render the chat, generate until <|im_end|>, decode.

    Works with a toy checkpoint or a loaded Phi-4. No cache: generation is deterministic given the seed, and
    synth.py's resumable output already skips finished inputs.
    """

    def __init__(self, model, tokenizer, max_new_tokens=256, temperature=0.8, top_k=None, top_p=None, seed=0,
                 name="local"):
        self.model, self.tokenizer = model, tokenizer
        # Our choice: a reply gets at most half the context, so the prompt keeps at least the other half
        # (a 1024-token reply asked of a 256-token toy model would otherwise leave no room for the question).
        self.max_new_tokens = max(1, min(max_new_tokens, model.config.max_seq_len // 2))
        self.temperature, self.top_k, self.top_p, self.seed = temperature, top_k, top_p, seed
        self.name = name

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", **kwargs) -> "LocalTeacher":
        import checkpoint  # torch is imported only when a local teacher is actually used

        model, tokenizer = checkpoint.load_model(path, device)
        return cls(model, tokenizer, name=f"local:{path}", **kwargs)

    def complete(self, messages: list[dict], sample_index: int = 0) -> str:
        import torch

        import sample as sampling  # the project's generation loop (temperature, top-k/p, stop tokens)

        prompt = self.tokenizer.render_prompt(messages)
        # Keep the end of a prompt too long for the context: it holds the latest turn and the open
        # assistant header. A toy model with a 128-token window sees only the tail of our templates.
        prompt = prompt[-(self.model.config.max_seq_len - self.max_new_tokens):]
        device = next(self.model.parameters()).device
        idx = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
        with torch.no_grad():
            out = sampling.generate(self.model, idx, self.max_new_tokens, temperature=self.temperature,
                                    top_k=self.top_k, top_p=self.top_p, stop_tokens=(self.tokenizer.im_end_id,),
                                    seed=self.seed + sample_index)  # (1, T + n)
        new_ids = out[0, len(prompt):].tolist()
        if self.tokenizer.im_end_id in new_ids:
            new_ids = new_ids[: new_ids.index(self.tokenizer.im_end_id)]  # the stop token and its padding
        return self.tokenizer.decode(new_ids)
