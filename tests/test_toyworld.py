"""The synthetic world (toyworld.py): the decision rule and the oracle, the two pretraining corpora and
their corruption rates, the imperfect teacher, the knowledge quiz, recall documents, and decontamination
between every pair of splits. The rule is checked against an independent reading of the question text,
not against toyworld's own Event.sign."""

import json
import random
import re

import pytest

import data
import toyworld

# -- an independent oracle: the rule, from the question's words -----------------------------------

EVENT = re.compile(r"^(?:Finally, )?(You|you|\w+) (gives?|takes?|finds?|buys?|sells?|drops?) (?:(you|\w+) )?(\d+) \w+"
                   r"(?: from (you|\w+))?$")


def expected_decisions(question: str) -> tuple[list[str], int]:
    """(decision words, answer) computed from the question text alone."""
    sentences = [s.strip() for s in question.split(".") if s.strip()]
    assert sentences[-1].endswith("do you have now?")
    value = int(re.match(r"^You have (\d+) \w+$", sentences[0]).group(1))
    words = []
    for s in sentences[2:-1]:
        actor, verb, receiver, n, source = EVENT.match(s).groups()
        verb, n, actor = verb.rstrip("s"), int(n), actor.lower()
        # Who gains and who loses, written out case by case from the English.
        gainer = {"give": receiver, "take": actor, "find": actor, "buy": actor}.get(verb)
        loser = {"give": actor, "take": source, "sell": actor, "drop": actor}.get(verb)
        if gainer == "you":
            words.append("get"); value += n
        elif loser == "you":
            words.append("lose"); value -= n
        else:
            words.append("keep")
    return words, value


def test_the_last_of_several_events_and_only_it_begins_with_finally():
    for problem in toyworld.make_split(11, 400):
        events = [s.strip() for s in problem.question.split(".") if s.strip()][2:-1]
        assert len(events) == problem.level
        marked = [s.startswith("Finally, ") for s in events]
        assert marked == [False] * (problem.level - 1) + [problem.level > 1]
        # The sentence after the cue is the event as written anywhere else, "You" lowercased.
        if problem.level > 1:
            rest = events[-1][len("Finally, "):]
            assert EVENT.match(rest) and not rest.startswith("You")


def test_every_reference_solution_passes_the_oracle_and_its_decisions_follow_the_rule():
    for problem in toyworld.make_split(7, 600):
        words, answer = expected_decisions(problem.question)
        assert toyworld.check(problem, problem.solution)
        assert problem.answer == answer
        assert toyworld.decisions(problem.solution) == words
        assert len(words) == problem.level
        assert 0 <= answer <= toyworld.MAX_COUNT


def test_every_step_replays_its_arithmetic_from_the_line_before():
    for problem in toyworld.make_split(8, 300):
        lines = problem.solution.split("\n")
        value = int(re.search(r"\d+", lines[0]).group())
        for step in lines[1:-1]:
            if "=" in step:
                lhs, rhs = re.split(r": |, so ", step)[-1].rstrip(".").split(" = ")
                assert lhs.startswith(str(value) + " ") and eval(lhs) == int(rhs)  # noqa: S307 - our arithmetic
                value = int(rhs)
            else:
                assert step == f"You keep {value}."
        assert value == problem.answer


def test_a_solution_with_one_decision_flipped_fails_the_oracle():
    rng = random.Random(3)
    for _ in range(300):
        story = toyworld.make_story(rng, rng.randint(1, 4))
        signs = [e.sign() for e in story.events]
        k = rng.randrange(len(signs))
        signs[k] = rng.choice([s for s in (1, -1, 0) if s != signs[k]])
        flipped = toyworld.solution_text(story, signs)
        problem = toyworld.Problem(story.question(), toyworld.solution_text(story), story.answer(), len(story.events))
        assert toyworld.decisions(flipped) != toyworld.decisions(problem.solution)
        assert not toyworld.check(problem, flipped)


def test_the_world_is_deterministic_in_its_seed():
    a, b = toyworld.make_split(42, 20), toyworld.make_split(42, 20)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]
    assert [p.question for p in toyworld.make_split(43, 20)] != [p.question for p in a]


def test_worded_variants_change_the_text_but_never_a_decision_or_the_answer():
    rng = random.Random(5)
    texts = set()
    story = toyworld.make_story(rng, 4)
    for _ in range(40):
        text = toyworld.solution_text(story, rng=rng)
        texts.add(text)
        assert toyworld.decisions(text) == toyworld.decisions(toyworld.solution_text(story))
        assert toyworld.extract_answer(text) == story.answer()
    assert len(texts) > 4


def test_the_step_check_accepts_every_wording_of_the_reference_and_refuses_two_slips_that_cancel():
    rng = random.Random(11)
    slipped_ones = 0
    for _ in range(200):
        story = toyworld.make_story(rng, rng.randint(2, 4))
        problem = toyworld.Problem(story.question(), toyworld.solution_text(story), story.answer(), len(story.events))
        worded = toyworld.solution_text(story, rng=rng)  # "At first you have", ", so" in some lines
        assert toyworld.check_steps(problem, worded) and toyworld.check_steps(problem, worded + "\n")
        # One result one too high, and the next line carrying on from it to its right result: the answer
        # is right, two lines of the derivation are not (what temperature-1 samples sometimes write).
        lines = worded.split("\n")
        steps = [i for i, line in enumerate(lines) if re.search(r" = \d+\.$", line)]
        if len(steps) < 2 or steps[1] != steps[0] + 1:
            continue
        first, second = steps[0], steps[1]
        result = int(re.search(r"= (\d+)\.$", lines[first])[1])
        lines[first] = re.sub(r"= \d+\.$", f"= {result + 1}.", lines[first])
        lines[second] = lines[second].replace(f" {result} ", f" {result + 1} ", 1)  # its result left as it was
        slipped = "\n".join(lines)
        assert toyworld.check(problem, slipped), "the answer-only oracle accepts it"
        assert not toyworld.check_steps(problem, slipped)
        assert not toyworld.check_steps(problem, worded.replace("Answer:", "So the answer:"))
        slipped_ones += 1
    assert slipped_ones > 50  # most stories have two steps with arithmetic in a row


# -- the two corpora -------------------------------------------------------------------------------


def test_web_documents_carry_each_corruption_at_its_stated_rate():
    rng, n = random.Random(11), 6000
    counts = {kind: 0 for kind in toyworld.WEB_RATES}
    fact_pages = problems = eligible_docs = 0
    for _ in range(n):
        story = toyworld.make_story(rng, rng.randint(1, 4))
        text, kinds = toyworld.web_document(rng, story)
        # Each corruption recognised from the text itself, not from the returned set.
        seen = {"boilerplate": any(line in toyworld.BOILERPLATE for line in text.split("\n"))}
        if text.split("\n")[1 if seen["boilerplate"] else 0].startswith("About "):
            fact_pages += 1
            assert kinds <= {"fact_page", "boilerplate"}
            counts["boilerplate"] += seen["boilerplate"]
            continue
        problems += 1
        solution = text.split("Solution:\n")[1].split("\n")
        seen["answer_first"] = solution[0].startswith("Answer:")
        seen["merged"] = any(re.fullmatch(r"You: \d+( [+-] \d+)* = \d+\.", line) for line in solution)
        # The misconception: every "takes" event decided backwards (where that keeps counts >= 0).
        right = [e.sign() for e in story.events]
        misread = [-s if e.verb == "takes" else s for e, s in zip(story.events, right)]
        eligible = misread != right and min(story.counts(misread)) >= 0
        eligible_docs += eligible
        decided = [toyworld.DECISIONS.get(s) for s in right]
        written = toyworld.decisions(text)
        merged_or_flipped = "merged" in kinds or "wrong_decision" in kinds
        if "takes_backwards" in kinds and not merged_or_flipped:
            assert written == [toyworld.DECISIONS[s] for s in misread]
        elif not kinds & {"merged", "wrong_decision"}:
            assert written == decided
        seen["takes_backwards"] = "takes_backwards" in kinds  # its text is checked just above
        assert seen["takes_backwards"] <= eligible
        # A wrong answer comes from the flip or the misreading (or both, which may cancel out).
        answer_wrong = toyworld.extract_answer(text) != story.answer()
        if not kinds & {"wrong_decision", "takes_backwards"}:
            assert not answer_wrong
        seen["wrong_decision"] = "wrong_decision" in kinds
        if seen["wrong_decision"] and "takes_backwards" not in kinds:
            assert answer_wrong
        assert {kind for kind, present in seen.items() if present} == kinds
        for kind, present in seen.items():
            counts[kind] += present
    assert abs(fact_pages / n - toyworld.WEB_FACT_PAGE_RATE) < 4 * (0.2 * 0.8 / n) ** 0.5
    for kind, rate in toyworld.WEB_RATES.items():
        total = n if kind == "boilerplate" else eligible_docs if kind == "takes_backwards" else problems
        assert abs(counts[kind] / total - rate) < 4 * (rate * (1 - rate) / total) ** 0.5, kind


def test_synthetic_documents_are_right_practice_sheets_or_step_by_step_with_slips_corrected_at_their_rates():
    rng, corrected, quick, n = random.Random(12), 0, 0, 4000
    for _ in range(n):
        story = toyworld.make_story(rng, rng.randint(1, 4))
        text = toyworld.synthetic_document(rng, story)
        assert toyworld.extract_answer(text) == story.answer()
        if "\nIn one line:\n" in text:  # the practice sheet: one equation, under its own header
            quick += 1
            solution = text.split("In one line:\n")[1].split("\n")
            assert re.fullmatch(r"You: \d+( [+-] \d+)* = \d+\.", solution[0]) and "Solution:" not in text
            assert eval(solution[0][5:].split(" = ")[0]) == story.answer() and len(solution) == 2  # noqa: S307
            continue
        solution = text.split("Solution:\n")[1].split("\n")
        assert len(solution) == len(story.events) + 2  # start, one line per event, answer
        if " - no, " in text:
            corrected += 1
            slip = re.search(r"You (get|lose|keep) - no, you (get|lose|keep)", text)
            assert slip and slip.group(1) != slip.group(2)
    for count, total, rate in ((quick, n, toyworld.SYNTHETIC_QUICK_RATE),
                               (corrected, n - quick, toyworld.SYNTHETIC_CORRECTION_RATE)):
        assert abs(count / total - rate) < 4 * (rate * (1 - rate) / total) ** 0.5


@pytest.mark.exercise("bpe")
def test_each_mixture_has_a_drill_per_six_stories_and_reading_drills_at_their_rate(toy_data_dir, tokenizer):
    # Counted in the shards themselves: what the model trains on, not what the builder meant to write.
    meta = json.load(open(f"{toy_data_dir}/meta.json"))
    for name, folder in (("synthetic-heavy", toy_data_dir), ("web-heavy", f"{toy_data_dir}/{data.WEB_HEAVY_DIR}")):
        documents = []
        for split in ("train", "val"):
            for path in data.shard_paths(folder, split):
                documents += tokenizer.decode(data.read_shard(path).tolist()).split("<|endoftext|>")
        reading = sum(d.startswith("Read: ") for d in documents)
        arithmetic = sum(d.startswith("Practice:\n") for d in documents)
        kinds = meta["mixtures"][name]["documents"]
        n_drills = (kinds["synthetic"] + kinds["web"]) // 6  # one arithmetic drill per six stories
        slots = round(n_drills * data.MIXTURES[name])  # the textbook drills of the synthetic share
        assert reading + arithmetic == n_drills + slots, name
        rate = toyworld.READING_DRILL_RATE
        assert abs(reading / slots - rate) < 4 * (rate * (1 - rate) / slots) ** 0.5, (name, reading, slots)


def test_fact_pages_state_the_facts_the_quiz_asks_and_nothing_else_does():
    items = toyworld.quiz_items()
    assert len(items) == 3 * len(toyworld.NAMES)
    rng = random.Random(13)
    pages = [toyworld.web_document(rng, toyworld.make_story(rng, 2))[0] for _ in range(3000)]
    pages = [p for p in pages if "About " in p]
    for page in pages[:200]:
        for sentence in page.split("\n")[-2 if page.split("\n")[-1] in toyworld.BOILERPLATE else -1].split(". "):
            prompt, word = sentence.rstrip(".").rsplit(" ", 1)
            assert (prompt, word) in items
    story_rng = random.Random(14)
    synthetic = " ".join(toyworld.synthetic_document(story_rng, toyworld.make_story(story_rng, 3)) for _ in range(500))
    assert not any(prompt in synthetic for prompt, _ in items)


# -- the teacher -----------------------------------------------------------------------------------


def test_the_teacher_errs_only_on_takes_events_and_there_at_its_stated_rate():
    rng, flipped, takes = random.Random(21), 0, 0
    flip = {"get": "lose", "lose": "get", "keep": "keep"}
    for _ in range(1500):
        problem, right = toyworld.teacher_problem(rng, rng.randint(1, 4))
        assert right == toyworld.check(problem, problem.solution)
        words, _ = expected_decisions(problem.question)
        events = [s.strip() for s in problem.question.split(".")][2:-1]
        for word, said, event in zip(words, toyworld.decisions(problem.solution), events):
            if " take" in f" {event}":  # "You take ..." or "Mia takes ... from you"
                takes += 1
                flipped += said == flip[word]
                assert said in (word, flip[word])
            else:
                assert said == word  # every other event decided right
        if not toyworld.is_trap(problem):
            assert right
    rate = toyworld.TEACHER_TAKES_ERROR
    assert takes > 500 and abs(flipped / takes - rate) < 4 * (rate * (1 - rate) / takes) ** 0.5


# -- recall documents ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(toy_data_dir):
    return data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")


@pytest.mark.exercise("bpe")
def test_a_recall_document_fills_its_length_and_asks_for_its_first_line(tokenizer):
    rng = random.Random(4)
    for length in (64, 256, 1024):
        doc = toyworld.recall_document(rng, tokenizer, length)
        assert length - 12 <= len(doc.ids) <= length
        assert doc.ids == [tokenizer.bos_id] + tokenizer.encode(doc.text)
        answer = doc.answers[0]
        key = re.match(r"Key: (\w+)\n", doc.text).group(1)
        assert answer["answer"] == key and doc.text.endswith(f"The key was {key}.\n")
        assert doc.text.count(key) == 2 and not any(name in doc.text[4 + len(key):-12] for name in toyworld.NAMES)
        assert tokenizer.decode(doc.ids[answer["position"]: answer["position"] + answer["n_tokens"]]) == f" {key}"
        assert tokenizer.decode(doc.ids[answer["fact_position"]: answer["fact_position"] + answer["n_tokens"]]) == f" {key}"
        assert answer["position"] - answer["fact_position"] > length - 20
    with pytest.raises(ValueError, match="8 tokens cannot hold a recall document"):
        toyworld.recall_document(rng, tokenizer, 8)  # the key line and the question alone need ~11


# -- decontamination between splits ---------------------------------------------------------------


@pytest.mark.exercise("bpe")
def test_no_two_splits_share_a_13_gram(toy_data_dir, tokenizer):
    splits = {name: [p.question for p in toyworld.read_problems(f"{toy_data_dir}/{name}.jsonl")]
              for name in ("eval", "dev", "sft", "rl")}
    for folder in (toy_data_dir, f"{toy_data_dir}/{data.WEB_HEAVY_DIR}"):
        text = tokenizer.decode(data.read_shard(data.shard_paths(folder, "train")[0]).tolist())
        splits[f"pretraining {folder}"] = [d for d in text.split("<|endoftext|>") if d.strip()]
    grams = {name: set().union(*(toyworld.ngrams(t) for t in texts)) for name, texts in splits.items()}
    names = list(grams)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if not (a.startswith("pretraining") and b.startswith("pretraining")):  # the two mixtures share stories
                assert not grams[a] & grams[b], (a, b)
    assert all(grams.values())


def test_a_shared_13_gram_flags_a_problem_and_12_shared_words_do_not():
    words = [f"word{chr(97 + i)}" for i in range(20)]
    banned = toyworld.ngrams(" ".join(words))
    shares_13 = toyworld.Problem("zz " + " ".join(words[3:16]) + " yy", "", 0, 1)
    shares_12 = toyworld.Problem("zz " + " ".join(words[3:15]) + " yy", "", 0, 1)
    kept, dropped = data.clean_split([shares_13, shares_12], banned)
    assert kept == [shares_12] and dropped == 1
