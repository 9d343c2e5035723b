"""Tests for synth.py and teacher.py: teachers, the six pipelines, failure handling, and bad input.

The HTTP teacher talks to a real chat-completions server on 127.0.0.1 (http.server in a thread, port 0)
that this file starts. Its replies are scripted: the server looks at the request's system prompt and
messages (and at `seed`, which carries the sample index) and answers as a teacher model would, so the
expected records below follow from the script, not from synth.py's own output. Faults (500s, timeouts,
malformed JSON, 429 with Retry-After, persistent failure) are injected per request and counted server-side.

The sandbox tests here run programs that loop forever, eat memory or open sockets through reverse_code and
run_python; the escape attempts are in test_sandbox.py. The last two run a pipeline offline with a tiny
random Phi4 as the teacher. Nothing but 127.0.0.1 is contacted. Timeouts are short (0.2 s HTTP, 1 s
sandbox) to keep the file fast.
"""

import http.server
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest

import sandbox
import prompts
import synth
import teacher as teachers

# ----------------------------------------------------------------------------------------------------
# The scripted teacher model

GOOD_PASSAGE = "A prime has exactly two divisors. Suppose finitely many primes; multiply them all and add one ..."
OKAY_PASSAGE = "Water boils at 100 degrees Celsius at sea level and at lower temperatures on mountains."
JUNK_PASSAGE = "Click here! Home | About | Contact | Subscribe for deals"
MUTE_PASSAGE = "An untitled passage the scripted teacher refuses to rate."

EGGS = "A baker packs eggs in cartons of 3 rows with 4 eggs in each row. How many eggs fit in one carton?"
APPLES = "Tom has 5 apples and eats 2 of them. How many apples does Tom have left?"
# Plurality questions are long enough (13+ words) for the decontamination test to match one of them.
EASY = "Mia has seven marbles in her bag and she does not give any of them away today. How many?"
MID = "Leo buys four boxes with two pencils each and also finds two more pencils on the floor. How many?"
HARD = "A vague riddle about some number of cats walking along a road in the evening that nobody can solve."

# What the solver "says" for each question, one entry per sample index (the request's seed, base seed 0).
# The oracles below: EASY is unanimous (dropped), MID has a 3/5 majority for 10 (kept), HARD has no majority.
SOLVE_SCRIPT = {
    EGGS: ["12"] * 5,
    APPLES: ["3"] * 5,
    EASY: ["7", "7", "7", "7", "7"],
    MID: ["10", "10", "11", None, "10"],
    HARD: ["1", "2", "3", "1", "4"],
}

# The rewrite reply: the eggs exercise is right; the apples exercise states a wrong answer (4), which the
# independent solve (3) contradicts, so validation by agreement must drop it.
REWRITE_REPLY = f"""Exercise 1
Question: {EGGS}
Solution: Each row holds 4 eggs and there are 3 rows, so 3 * 4 = 12.
Answer: 12

Exercise 2
Question: {APPLES}
Solution: 5 - 2 = 4.
Answer: 4
"""

# Instruction reversal: the original code, its tests (or None), and what the "model" regenerates from the
# instruction. add passes its tests, sub fails them, square is close without tests, greet is not close.
CODE_CASES = {
    "add": ("def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n",
            "def add(x, y):\n    return x + y\n"),
    "sub": ("def sub(a, b):\n    return a - b\n", "assert sub(5, 3) == 2\n", "def sub(a, b):\n    return b - a\n"),
    "square": ("def square(x):\n    return x * x\n", None, "def square(x):\n    # the product with itself\n    return x * x\n"),
    "greet": ("def greet(name):\n    return 'Hello, ' + name\n", None,
              "import sys\n\nclass Greeter:\n    def __init__(self):\n        self.count = 0\n"),
}


def scripted_reply(messages: list[dict], seed: int) -> str:
    """Answer a chat request the way a cooperative teacher model would, for each of synth's prompts."""
    system, last = messages[0]["content"], messages[-1]["content"]
    if system == prompts.CURATE_SYSTEM:
        if GOOD_PASSAGE in last:
            return "A classic proof that builds a contradiction step by step.\nScore: 9"
        if OKAY_PASSAGE in last:
            return "A correct fact with a little explanation: 6/10"
        if JUNK_PASSAGE in last:
            return "Navigation links only.\n**Score:** 1"
        return "I would rather not rate this passage."
    if system == prompts.REWRITE_SYSTEM.format(n_exercises=2):
        return REWRITE_REPLY
    if system == prompts.SOLVE_SYSTEM:
        answer = SOLVE_SCRIPT[last][seed]
        return "Let me think step by step.\n" + (f"Answer: {answer}" if answer else "I am not sure.")
    if system.startswith("You are a curious student"):
        return f"Student question after {len(messages) - 2} turns: why is that so?"
    if system.startswith("You are a patient teacher"):
        return f"Teacher answer after {len(messages) - 1} turns: because of the definition."
    if system == prompts.DRAFT_SYSTEM:
        return "2 + 2 = 5" if "2 + 2" in last else "The sky is green."
    if system == prompts.CRITIQUE_SYSTEM:
        wrong = "= 5" in last or "green" in last
        return "Factual accuracy: the result is wrong.\nVerdict: REVISE" if wrong else "No problems.\nVerdict: PASS"
    if system == prompts.REVISE_SYSTEM:
        return "2 + 2 = 4" if "2 + 2" in last else "The sky is green, really."  # the second one never improves
    if system == prompts.CODE_TO_INSTRUCTION_SYSTEM:
        name = re.search(r"def (\w+)", last).group(1)
        return f"Write a function named {name}."
    if system == prompts.INSTRUCTION_TO_CODE_SYSTEM:
        name = re.search(r"named (\w+)", last).group(1)
        return f"Here you go:\n```python\n{CODE_CASES[name][2]}```"
    raise AssertionError(f"unscripted request: {system[:60]!r}")


class ScriptedServer:
    """A chat-completions server on 127.0.0.1 with scripted replies and injectable faults."""

    def __init__(self):
        self.requests: list[dict] = []  # every request received, faulty or not
        self.faults: list[str] = []  # behaviours for the next requests, consumed in order
        self.persistent_fault: str | None = None  # used when `faults` is empty
        self.fail_after: int | None = None  # once this many requests were answered, reply 500 forever
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                fault = outer.faults.pop(0) if outer.faults else outer.persistent_fault
                if outer.fail_after is not None and len(outer.requests) > outer.fail_after:
                    fault = "500"
                if fault == "500":
                    self.send_json(500, {"error": {"message": "internal error"}})
                elif fault == "429":
                    self.send_json(429, {"error": {"message": "slow down"}}, {"Retry-After": "7"})
                elif fault == "401":
                    self.send_json(401, {"error": {"message": "invalid api key"}})
                elif fault == "timeout":
                    time.sleep(0.6)  # longer than the client's 0.2 s timeout; then hang up without a reply
                elif fault == "malformed":
                    self.send_raw(200, b'{"choices": [{"message": ')
                elif fault == "no text":  # well-formed JSON whose content is null
                    self.send_json(200, {"choices": [{"message": {"role": "assistant", "content": None}}]})
                else:
                    reply = scripted_reply(body["messages"], body["seed"])
                    self.send_json(200, {"object": "chat.completion",
                                         "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                                      "finish_reason": "stop"}]})

            def send_json(self, status, payload, headers=None):
                self.send_raw(status, json.dumps(payload).encode(), headers)

            def send_raw(self, status, raw, headers=None):
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass  # keep pytest output clean

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        # A short poll interval: shutdown() waits up to one interval, once per test.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)


@pytest.fixture
def server():
    scripted = ScriptedServer()
    scripted.thread.start()
    yield scripted
    scripted.httpd.shutdown()
    scripted.httpd.server_close()


def teacher_flags(server, tmp_path) -> list[str]:
    return ["--base-url", server.url, "--model", "scripted", "--cache", str(tmp_path / "cache"), "--timeout", "2"]


def quick_teacher(server, tmp_path, retries=2, timeout=2.0, **kwargs) -> teachers.HTTPTeacher:
    """An HTTP teacher that records its backoff waits instead of sleeping them. Timeout tests pass 0.2 s; the
    others keep 2 s so that a busy machine cannot turn a slow reply into an extra, miscounted request."""
    waits = []
    teacher = teachers.HTTPTeacher(model="scripted", base_url=server.url, cache_dir=tmp_path / "cache", timeout=timeout,
                                retries=retries, sleep=waits.append, **kwargs)
    teacher.waits = waits
    return teacher


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def read(path) -> list[dict]:
    return [json.loads(line) for line in open(path)] if path.exists() else []


# ----------------------------------------------------------------------------------------------------
# Each pipeline end to end through the CLI, against the scripted server


def test_curate_keeps_passages_scoring_above_threshold_best_first(server, tmp_path):
    passages = tmp_path / "passages"
    passages.mkdir()
    for name, text in [("good", GOOD_PASSAGE), ("okay", OKAY_PASSAGE), ("junk", JUNK_PASSAGE), ("mute", MUTE_PASSAGE)]:
        (passages / f"{name}.txt").write_text(text)
    out = tmp_path / "seeds.jsonl"
    assert synth.main(["curate", "--in", str(passages), "--out", str(out), "--min-score", "5"]
                      + teacher_flags(server, tmp_path)) == 0
    kept = read(out)
    assert [(r["id"], r["score"]) for r in kept] == [("good.txt", 9.0), ("okay.txt", 6.0)]
    assert kept[0]["text"] == GOOD_PASSAGE and kept[0]["pipeline"] == "curate"
    assert kept[0]["teacher"].startswith("scripted@127.0.0.1") and kept[0]["prompt_version"] == "curate-v1"
    dropped = {r["id"]: r["dropped_by"] for r in read(tmp_path / "seeds.rejected.jsonl")}
    assert dropped == {"junk.txt": "score below --min-score", "mute.txt": "unparseable score"}


def test_curate_keep_fraction_keeps_only_the_top_ranked(server, tmp_path):
    seeds = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": OKAY_PASSAGE}, {"id": "b", "text": GOOD_PASSAGE}])
    out = tmp_path / "seeds.jsonl"
    synth.main(["curate", "--in", seeds, "--out", str(out), "--min-score", "0", "--keep-fraction", "0.5"]
               + teacher_flags(server, tmp_path))
    assert [r["id"] for r in read(out)] == ["b"]


def test_rewrite_keeps_exercises_whose_answer_an_independent_solve_confirms(server, tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"id": "seed-1", "text": GOOD_PASSAGE}])
    out = tmp_path / "exercises.jsonl"
    synth.main(["rewrite", "--in", seeds, "--out", str(out), "--n-exercises", "2"] + teacher_flags(server, tmp_path))
    [kept] = read(out)
    assert (kept["id"], kept["seed_id"], kept["question"], kept["answer"]) == ("seed-1/ex1", "seed-1", EGGS, "12")
    assert kept["solution"].endswith("Answer: 12")  # the world's format: the solution ends on its answer line
    [rejected] = read(tmp_path / "exercises.rejected.jsonl")
    assert (rejected["question"], rejected["dropped_by"]) == (APPLES, "answer disagreement")

    server.requests = []
    unchecked = tmp_path / "unchecked.jsonl"
    synth.main(["rewrite", "--in", seeds, "--out", str(unchecked), "--n-exercises", "2", "--no-verify"]
               + teacher_flags(server, tmp_path))
    assert [r["question"] for r in read(unchecked)] == [EGGS, APPLES]  # --no-verify: both kept, nothing solved again
    assert len(server.requests) == 0 and "check_answer" not in read(unchecked)[1]  # the rewrite itself was cached


class FixedTeacher:
    """A teacher whose reply is a fixed function of the request: the teacher is not what these tests test."""

    name = "fixed"

    def __init__(self, reply_to):
        self.reply_to = reply_to

    def complete(self, messages, sample_index: int = 0) -> str:
        return self.reply_to(messages)


def test_a_reply_without_exercises_or_an_empty_turn_is_kept_as_a_reject_naming_why():
    seed = {"id": "s", "text": OKAY_PASSAGE}
    [rewrite] = synth.rewrite_seed(FixedTeacher(lambda messages: "I cannot think of an exercise."), seed)
    assert rewrite["dropped_by"] == "unparseable exercises" and rewrite["reply"] == "I cannot think of an exercise."
    [dialogue] = synth.build_dialogue(FixedTeacher(lambda messages: "  \n"), seed)
    assert dialogue["dropped_by"] == "empty turn 1"


@pytest.mark.parametrize("reply, score", [("7", 7.0), ("**8.**", 8.0), ("Score: 9", 9.0), ("6/10", 6.0), ("seven", None)])
def test_a_curation_score_is_read_from_the_usual_forms_of_a_reply(reply, score):
    assert synth.parse_score(reply) == score


def test_dialogue_alternates_student_and_teacher_turns(server, tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"id": "s", "text": OKAY_PASSAGE}])
    out = tmp_path / "dialogues.jsonl"
    synth.main(["dialogue", "--in", seeds, "--out", str(out), "--turns", "4"] + teacher_flags(server, tmp_path))
    [record] = read(out)
    assert [m["role"] for m in record["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m["content"].split()[0] for m in record["messages"]] == ["Student", "Teacher", "Student", "Teacher"]
    assert record["messages"][3]["content"].startswith("Teacher answer after 3 turns")


def test_dialogue_agents_see_their_own_turns_as_assistant(server, tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"id": "s", "text": OKAY_PASSAGE}])
    synth.main(["dialogue", "--in", seeds, "--out", str(tmp_path / "d.jsonl"), "--turns", "4"]
               + teacher_flags(server, tmp_path))
    last_request = server.requests[-1]["body"]["messages"]  # the teacher agent's second turn
    roles = [(m["role"], m["content"].split()[0]) for m in last_request[1:]]
    assert roles == [("user", "Student"), ("assistant", "Teacher"), ("user", "Student")]


def test_revise_fixes_a_draft_and_drops_one_that_never_passes_the_rubric(server, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "math", "prompt": "What is 2 + 2?"},
                                                       {"id": "sky", "prompt": "What colour is the sky?"}])
    out = tmp_path / "revised.jsonl"
    synth.main(["revise", "--in", prompts, "--out", str(out), "--rounds", "2"] + teacher_flags(server, tmp_path))
    [kept] = read(out)
    assert (kept["id"], kept["response"]) == ("math", "2 + 2 = 4")
    assert [(h["draft"], h["verdict"]) for h in kept["history"]] == [("2 + 2 = 5", "revise"), ("2 + 2 = 4", "pass")]
    [dropped] = read(tmp_path / "revised.rejected.jsonl")
    assert dropped["id"] == "sky" and len(dropped["history"]) == 3  # draft + 2 revisions, all critiqued
    assert dropped["dropped_by"] == "rubric not met after --rounds"


def test_reverse_code_keeps_pairs_that_pass_tests_or_match_closely(server, tmp_path):
    items = [{"id": name, "code": code, **({"tests": tests} if tests else {})}
             for name, (code, tests, _) in CODE_CASES.items()]
    out = tmp_path / "pairs.jsonl"
    synth.main(["reverse-code", "--in", write_jsonl(tmp_path / "code.jsonl", items), "--out", str(out),
                "--exec-timeout", "5"] + teacher_flags(server, tmp_path))
    kept = {r["id"]: r for r in read(out)}
    assert sorted(kept) == ["add", "square"]
    assert kept["add"]["instruction"] == "Write a function named add." and kept["add"]["code"] == CODE_CASES["add"][0]
    assert kept["square"]["similarity"] == 1.0  # comments are ignored by the similarity
    dropped = {r["id"]: r["dropped_by"] for r in read(tmp_path / "pairs.rejected.jsonl")}
    assert dropped == {"sub": "regenerated code fails tests (exit 1)",
                       "greet": "regenerated code not similar enough (--min-similarity)"}


def test_plurality_keeps_majority_answers_and_drops_unanimous_and_scattered(server, tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": n, "question": q} for n, q in
                                                   [("easy", EASY), ("mid", MID), ("hard", HARD)]])
    out = tmp_path / "questions.jsonl"
    synth.main(["plurality", "--in", questions, "--out", str(out), "--k", "5"] + teacher_flags(server, tmp_path))
    [kept] = read(out)
    assert (kept["id"], kept["answer"], kept["agreement"]) == ("mid", "10", 0.6)
    assert kept["solution"].endswith("Answer: 10")
    dropped = {r["id"]: r["dropped_by"] for r in read(tmp_path / "questions.rejected.jsonl")}
    assert dropped == {"easy": "unanimous (too easy)", "hard": "no majority (ambiguous)"}
    assert sorted(r["body"]["seed"] for r in server.requests[:5]) == [0, 1, 2, 3, 4]  # k distinct samples


def test_held_out_overlap_drops_a_record_by_the_13_gram_rule(server, tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "mid", "question": MID}])
    held_out = write_jsonl(tmp_path / "eval.jsonl", [{"question": "Quiz: " + MID.upper()}])
    out = tmp_path / "questions.jsonl"
    synth.main(["plurality", "--in", questions, "--out", str(out), "--held-out", held_out]
               + teacher_flags(server, tmp_path))
    assert read(out) == []
    assert read(tmp_path / "questions.rejected.jsonl")[0]["dropped_by"].startswith("decontamination (13-gram")


def test_api_key_comes_from_the_variable_named_by_api_key_env(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-test")
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "easy", "question": EASY}])
    synth.main(["plurality", "--in", questions, "--out", str(tmp_path / "o.jsonl"), "--api-key-env",
                "MY_TEACHER_KEY"] + teacher_flags(server, tmp_path))
    assert {r["auth"] for r in server.requests} == {"Bearer sk-test"}
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}


# ----------------------------------------------------------------------------------------------------
# Faults: retries, one clear error, nothing lost, cache on rerun

SOLVE_EASY = prompts.solve_messages(EASY)


@pytest.mark.parametrize("fault", ["500", "timeout", "malformed", "no text"])
def test_a_transient_fault_is_retried_until_a_reply_arrives(server, tmp_path, fault):
    server.faults = [fault, fault]
    teacher = quick_teacher(server, tmp_path, retries=2, timeout=0.2 if fault == "timeout" else 2.0)
    assert teacher.complete(SOLVE_EASY).endswith("Answer: 7")
    assert len(server.requests) == 3 and len(teacher.waits) == 2


def test_backoff_grows_exponentially_between_retries(server, tmp_path):
    server.faults = ["500"] * 3
    teacher = quick_teacher(server, tmp_path, retries=3, backoff=1.0)
    teacher.complete(SOLVE_EASY)
    # Jitter scales each wait by 0.5-1.0, so attempt i waits within [2^i / 2, 2^i] seconds.
    assert all(2**i / 2 <= wait <= 2**i for i, wait in enumerate(teacher.waits)) and len(teacher.waits) == 3


def test_a_rate_limit_waits_as_long_as_retry_after_says(server, tmp_path):
    server.faults = ["429"]
    teacher = quick_teacher(server, tmp_path)
    teacher.complete(SOLVE_EASY)
    assert teacher.waits == [7.0] and len(server.requests) == 2


def test_a_persistent_fault_ends_in_one_error_naming_the_url_and_the_last_error(server, tmp_path):
    server.persistent_fault = "500"
    teacher = quick_teacher(server, tmp_path, retries=2)
    with pytest.raises(teachers.TeacherError, match=r"127\.0\.0\.1:\d+/v1/chat/completions: .*3 attempts.*HTTP 500"):
        teacher.complete(SOLVE_EASY)
    assert len(server.requests) == 3


def test_a_persistent_timeout_ends_in_one_error(server, tmp_path):
    server.persistent_fault = "timeout"
    with pytest.raises(teachers.TeacherError, match="timed out"):
        quick_teacher(server, tmp_path, retries=1, timeout=0.2).complete(SOLVE_EASY)
    assert len(server.requests) == 2


class Dripping(http.server.BaseHTTPRequestHandler):
    """A server that sends its reply one byte every 0.2 s: each socket read succeeds well within a 1 s
    timeout, but the whole reply takes 12 s. `where` says what drips: the headers or the body."""

    where = "body"

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n"
        reply = (head if self.where == "headers" else b"") + b" " * (60 if self.where == "body" else 0)
        if self.where == "body":
            self.wfile.write(head)
        try:
            for byte in reply:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client hung up, as it should

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("where", ["body", "headers"])
def test_the_timeout_bounds_the_whole_request_when_a_server_drips_its_reply(where):
    handler = type("Drip", (Dripping,), {"where": where})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    teacher = teachers.HTTPTeacher(model="m", base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                                   timeout=1.0, retries=0)
    started = time.monotonic()
    try:
        with pytest.raises(teachers.TeacherError, match="timed out"):
            teacher.complete(SOLVE_EASY)
        # Generous slack for a busy machine; what matters is that it did not wait for the whole drip.
        assert time.monotonic() - started < 6.0
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_bad_api_key_is_not_retried(server, tmp_path):
    server.persistent_fault = "401"
    with pytest.raises(teachers.TeacherError, match="HTTP 401.*invalid api key"):
        quick_teacher(server, tmp_path).complete(SOLVE_EASY)
    assert len(server.requests) == 1


def test_an_interrupted_run_keeps_its_records_and_a_rerun_resumes_then_hits_the_cache(server, tmp_path, capsys):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": n, "question": q} for n, q in
                                                   [("easy", EASY), ("mid", MID), ("hard", HARD)]])
    out = tmp_path / "questions.jsonl"
    argv = ["plurality", "--in", questions, "--out", str(out), "--k", "5"]
    server.fail_after = 7  # the first question's 5 samples and 2 of the second's succeed, then 500 forever
    assert synth.main(argv, teacher=quick_teacher(server, tmp_path, retries=1)) == 1
    assert "127.0.0.1" in capsys.readouterr().err
    assert [r["id"] for r in read(tmp_path / "questions.rejected.jsonl")] == ["easy"]  # finished, not lost

    server.fail_after, server.requests = None, []
    assert synth.main(argv, teacher=quick_teacher(server, tmp_path)) == 0
    # Resumed: "easy" is skipped, and mid's first two samples come from the cache: 3 + 5 new requests.
    assert len(server.requests) == 8
    assert [r["id"] for r in read(out)] == ["mid"]

    server.requests = []
    fresh = tmp_path / "again.jsonl"
    assert synth.main(["plurality", "--in", questions, "--out", str(fresh), "--k", "5"],
                      teacher=quick_teacher(server, tmp_path)) == 0
    assert server.requests == [] and read(fresh) == read(out)


def test_a_record_torn_by_a_kill_mid_write_is_cut_off_and_written_again(server, tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "easy", "question": EASY}, {"id": "mid", "question": MID}])
    out = tmp_path / "questions.jsonl"
    argv = ["plurality", "--in", questions, "--out", str(out), "--k", "5"]
    assert synth.main(argv, teacher=quick_teacher(server, tmp_path)) == 0
    whole = out.read_text()
    rejected = tmp_path / "questions.rejected.jsonl"
    torn = rejected.read_text()
    rejected.write_text(torn + torn[: len(torn) // 2])  # a second copy of "easy", killed half-way through
    out.write_text(whole[: len(whole) // 2])  # and "mid", the only kept record, cut in half
    assert synth.main(argv, teacher=quick_teacher(server, tmp_path)) == 0
    assert out.read_text() == whole and rejected.read_text() == torn  # every record whole, none twice


def test_samples_with_different_indices_are_cached_separately(server, tmp_path):
    teacher = quick_teacher(server, tmp_path)
    answers = [teacher.complete(prompts.solve_messages(HARD), sample_index=i) for i in range(5)]
    again = [teacher.complete(prompts.solve_messages(HARD), sample_index=i) for i in range(5)]
    assert answers == again and len(set(answers)) == 4 and len(server.requests) == 5


# ----------------------------------------------------------------------------------------------------
# Bad input: one clear line naming the flag, non-zero exit


def test_a_missing_input_fails_with_a_message_naming_in(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synth.main(["plurality", "--in", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                    "--model", "m"])
    assert exit_info.value.code != 0 and "--in: no such file" in capsys.readouterr().err


# (pipeline and flags, what the error line must say); --in is a file that exists.
BAD_FLAGS = [
    (["plurality", "--held-out", "nope.jsonl"], "--held-out: no such file or folder: nope.jsonl"),
    (["plurality", "--local", "nope"], "--local: not a checkpoint folder: nope"),
    (["plurality", "--model", ""], "--model: no teacher model"),
    (["plurality", "--timeout", "0"], "argument --timeout: must be positive, got 0"),
    (["plurality", "--timeout", "nan"], "argument --timeout: expected a finite number, got 'nan'"),
    (["plurality", "--retries", "-1"], "argument --retries: must be at least 0, got -1"),
    (["curate", "--keep-fraction", "0"], "argument --keep-fraction: must be in (0, 1], got 0"),
    (["dialogue", "--turns", "1"], "--turns must be at least 2"),
    (["revise", "--rounds", "-1"], "argument --rounds: must be at least 0, got -1"),
    (["plurality", "--limit", "-1"], "argument --limit: must be at least 1, got -1"),  # [:-1] would drop the last
    (["reverse-code", "--min-similarity", "1.5"], "argument --min-similarity: must be in [0, 1], got 1.5"),
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS, ids=[" ".join(argv) for argv, _ in BAD_FLAGS])
def test_an_impossible_setting_fails_before_any_request_with_a_message_naming_the_flag(tmp_path, capsys, monkeypatch,
                                                                                      argv, message):
    monkeypatch.delenv(teachers.MODEL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    inputs = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "question": EASY, "text": EASY, "seed": EASY, "prompt": EASY}])
    model = [] if "--model" in argv or "--local" in argv else ["--model", "m"]
    with pytest.raises(SystemExit) as exit_info:
        synth.main([*argv, "--in", inputs, "--out", "o.jsonl", *model])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err  # one line: no usage block
    assert not (tmp_path / "o.jsonl").exists()


def test_a_teacher_without_a_model_name_is_refused_naming_the_flag_and_the_variable(monkeypatch):
    monkeypatch.delenv(teachers.MODEL_ENV, raising=False)
    with pytest.raises(ValueError, match=f"pass --model or set {teachers.MODEL_ENV}"):
        teachers.HTTPTeacher(model=None)


def test_two_input_records_with_one_id_are_refused_naming_it(tmp_path, capsys):
    # Replies are cached and resumed by id: two records under one id would share one answer.
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "question": EASY}, {"id": "a", "question": MID}])
    assert synth.main(["plurality", "--in", questions, "--out", str(tmp_path / "o.jsonl"), "--model", "m"]) == 1
    assert capsys.readouterr().err == f"error: {questions}: duplicate ids ['a']\n"


def test_too_few_plurality_samples_fail_with_a_message_naming_k(tmp_path, capsys):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "easy", "question": EASY}])
    with pytest.raises(SystemExit):
        synth.main(["plurality", "--in", questions, "--out", str(tmp_path / "o.jsonl"), "--model", "m", "--k", "2"])
    assert "--k must be at least 3" in capsys.readouterr().err


def test_an_input_record_without_the_pipeline_field_is_named_by_line(tmp_path, capsys):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "question": EASY}, {"id": "b", "text": "x"}])
    assert synth.main(["plurality", "--in", questions, "--out", str(tmp_path / "o.jsonl"), "--model", "m"]) == 1
    assert capsys.readouterr().err == f"error: {questions}, line 2: no text field 'question'\n"


# (what --in or --held-out is, the error line's end): a run that found nothing to read must not exit 0 having
# done nothing, nor decontaminate against no held-out text.
NOTHING_TO_READ = [
    ("--in", "table.csv", "table.csv: not a file synth.py reads (.jsonl, or text: .txt, .md, .py)"),
    ("--in", "empty.jsonl", "empty.jsonl: no records (synth.py reads .jsonl files and text files: .txt, .md, .py)"),
    ("--in", "folder", "folder: no records (synth.py reads .jsonl files and text files: .txt, .md, .py)"),
    ("--held-out", "table.csv", "table.csv: not a file synth.py reads (.jsonl, or text: .txt, .md, .py)"),
]


@pytest.mark.parametrize("flag, name, message", NOTHING_TO_READ, ids=[f"{f} {n}" for f, n, _ in NOTHING_TO_READ])
def test_an_input_with_nothing_synth_can_read_is_refused_in_one_line(tmp_path, capsys, monkeypatch, flag, name, message):
    monkeypatch.chdir(tmp_path)
    Path("table.csv").write_text("question,answer\n1+1,2\n")
    Path("empty.jsonl").write_text("\n")
    Path("folder").mkdir()
    Path("folder/table.csv").write_text("question,answer\n")  # the folder holds only a file of another type
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "question": EASY}])
    inputs = {"--in": name, "--held-out": questions} if flag == "--in" else {"--in": questions, "--held-out": name}
    assert synth.main(["plurality", "--in", inputs["--in"], "--held-out", inputs["--held-out"], "--out", "o.jsonl",
                       "--model", "m"]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not Path("o.jsonl").exists()


def test_a_folders_files_of_other_types_are_passed_over(tmp_path):
    (tmp_path / "notes.txt").write_text("A passage.")
    (tmp_path / "more.jsonl").write_text(json.dumps({"id": "m", "text": "Another."}) + "\n")
    (tmp_path / "slides.pdf").write_bytes(b"%PDF-1.4")
    assert synth.load_items(str(tmp_path), "text") == [{"id": "m", "text": "Another."},
                                                       {"id": "notes.txt", "text": "A passage."}]


def test_a_malformed_jsonl_line_gives_one_error_line_and_exit_code_1(tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "a", "question": EASY}) + "\n\n" + '{"id": "b", "question": \n')
    assert synth.main(["plurality", "--in", str(questions), "--out", str(tmp_path / "o.jsonl"), "--model", "m"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {questions}, line 3: not valid JSON") and err.count("\n") == 1
    assert "Traceback" not in err


# ----------------------------------------------------------------------------------------------------
# The sandbox as the reverse-code pipeline uses it (escape attempts: test_sandbox.py)

# A short wall limit where the test waits for it (the infinite loop); a generous one elsewhere, so that a busy
# machine cannot turn a memory or network failure into a timeout.
LOOP_LIMITS = sandbox.SandboxLimits(timeout=1.0, memory_mb=256)
LIMITS = sandbox.SandboxLimits(timeout=20.0, memory_mb=256)


def test_correct_code_passes_the_sandbox():
    result = sandbox.run_python("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('passed')\n", LIMITS)
    assert (result.ok, result.reason, result.stdout) == (True, "ok", "passed\n")


def test_an_infinite_loop_is_killed_at_the_wall_timeout():
    result = sandbox.run_python("while True:\n    pass\n", LOOP_LIMITS)
    assert (result.ok, result.reason) == (False, "timeout")


def test_a_memory_hog_is_stopped_by_the_address_space_limit():
    result = sandbox.run_python("hoard = []\nwhile True:\n    hoard.append(bytearray(10**8))\n", LIMITS)
    assert (result.ok, result.reason) == (False, "memory limit")


def test_a_program_cannot_reach_a_server_listening_on_this_machine():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
        result = sandbox.run_python(code, LIMITS)
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody connected
    assert (result.ok, result.reason) == (False, "network blocked")


@pytest.mark.parametrize("regenerated, reason, limits", ids=["loops forever", "eats memory", "opens a socket"], argvalues=[
    ("def add(a, b):\n    while True:\n        pass\n", "timeout", LOOP_LIMITS),
    ("def add(a, b):\n    return len(bytearray(10**10))\n", "memory limit", LIMITS),
    ("import socket\ndef add(a, b):\n    socket.socket().connect(('127.0.0.1', 9))\n", "network blocked", LIMITS),
])
def test_reverse_code_drops_regenerated_code_that_misbehaves(regenerated, reason, limits):
    def reply_to(messages):  # it always "regenerates" the same code
        return "Write add(a, b)." if messages[0]["content"] == prompts.CODE_TO_INSTRUCTION_SYSTEM else regenerated

    item = {"id": "add", "code": CODE_CASES["add"][0], "tests": CODE_CASES["add"][1]}
    [record] = synth.reverse_code(FixedTeacher(reply_to), item, limits=limits)
    assert record["dropped_by"] == f"regenerated code fails tests ({reason})"


# ----------------------------------------------------------------------------------------------------
# The local teacher: the project's own model, offline


@pytest.fixture(scope="module")
def tiny_teacher_model():
    """A random 1-layer Phi4 and a BPE trained on a few sentences: a teacher that needs no network."""
    torch = pytest.importorskip("torch")
    import data
    import model

    tokenizer = data.Tokenizer.train(" ".join([GOOD_PASSAGE, OKAY_PASSAGE, EASY, MID] * 3), vocab_size=400)
    config = model.ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, d_model=32, n_head=2, n_kv_head=1,
                               ffn_dim=64, max_seq_len=128)
    torch.manual_seed(0)
    return model.Phi4(config), tokenizer


@pytest.mark.exercise("bpe", "chat_mask", "rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_a_pipeline_runs_offline_with_a_local_checkpoint_as_teacher(tiny_teacher_model, tmp_path, monkeypatch):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    loaded = []
    # --local goes through checkpoint.load_model; a stand-in replaces it here so the test does not
    # depend on the checkpoint layout, and records which folder it was asked for.
    import checkpoint as checkpoints

    monkeypatch.setattr(checkpoints, "load_model", lambda path, device="cpu": loaded.append(path) or tiny_teacher_model)
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "mid", "question": MID}])
    out = tmp_path / "questions.jsonl"
    assert synth.main(["plurality", "--in", questions, "--out", str(out), "--k", "3", "--local", str(checkpoint),
                       "--max-tokens", "16", "--temperature", "1.0"]) == 0
    [record] = read(out) + read(tmp_path / "questions.rejected.jsonl")
    # A random model cannot answer, but the pipeline must run end to end and record what it saw.
    assert loaded == [str(checkpoint)] and record["teacher"] == f"local:{checkpoint}"
    assert len(record["votes"]) == 3 and record["pipeline"] == "plurality"


@pytest.mark.exercise("bpe", "chat_mask", "rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_the_local_teacher_gives_different_samples_for_different_indices(tiny_teacher_model):
    teacher = teachers.LocalTeacher(*tiny_teacher_model, max_new_tokens=16, temperature=1.0)
    replies = [teacher.complete(prompts.solve_messages(MID), sample_index=i) for i in range(3)]
    again = teacher.complete(prompts.solve_messages(MID), sample_index=0)
    assert len(set(replies)) > 1 and again == replies[0]  # distinct seeds, each reproducible


@pytest.mark.exercise("bpe", "chat_mask", "rope")
def test_the_local_teacher_ends_its_reply_at_im_end_and_drops_the_padding_after_it(tiny_teacher_model, monkeypatch):
    torch = pytest.importorskip("torch")
    import sample
    model, tokenizer = tiny_teacher_model
    reply = tokenizer.encode("Answer: 7")

    def generate(model, idx, max_new_tokens, **kwargs):  # a finished reply, padded with its stop token
        return torch.cat([idx, torch.tensor([reply + [tokenizer.im_end_id] * 3])], dim=1)  # (1, T + n)

    monkeypatch.setattr(sample, "generate", generate)
    assert teachers.LocalTeacher(model, tokenizer).complete(prompts.solve_messages(MID)) == "Answer: 7"
