"""The synthetic world: verifiable word problems with worked solutions, their oracle, long documents
for midtraining, and the 13-gram decontamination rule.

Phi-4's central idea (report section 2) is that carefully generated synthetic "textbook" data teaches
reasoning better than web text. At toy scale we cannot call a teacher LLM, so the project embeds a small
synthetic world instead: a deterministic generator of multi-step arithmetic word problems, each with a
worked step-by-step solution and a checkable final answer. The same world feeds every stage:

    pretraining  "textbook" documents: problems with worked solutions, plus arithmetic drills
    SFT          chat conversations (user asks, assistant solves) in Phi-4's chat format
    evaluation   a held-out split, decontaminated from all training text by the 13-gram rule (section 2)
    grading      the oracle `check(problem, completion)` grades samples for rejection sampling and PTS

Sections: 1. problems, solutions, the answer extractor and the oracle; 2. long documents (report
section 3, midtraining); 3. decontamination. data.py turns all of it into token shards.

Simplified: the world is arithmetic only (addition, subtraction, doubling), which is what a 1M-parameter
model can learn on a CPU in minutes; the real Phi-4 pipelines (teacher LLMs) live in synth.py.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import regex

import files
from tokenization import Tokenizer

# ----------------------------------------------------------------------------------------------------
# 1. The synthetic world
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
# Pronouns follow the name, so "she" in a sentence always refers back to the right person: a model
# cannot learn coreference from text that gets it wrong.
FEMALE = set("Mia Ava Emma Zoe Ivy Nora Lily Ruby Iris Maya Clara Hana Vera Lena Sofia Nina Tara Julia Ada Yara".split())


@dataclass
class Problem:
    """One verifiable problem: the question, its worked solution (ending in the answer line), the answer."""

    question: str
    solution: str
    answer: int
    level: int  # number of operations, 1..4: the difficulty

    def to_dict(self) -> dict:
        """The JSONL record of data.py's splits; Problem(**record) reads it back (read_problems)."""
        return asdict(self)


def make_problem(rng: random.Random, level: int) -> Problem:
    """Draw one problem with `level` operations from the world (deterministic given rng's state)."""
    name, friend = rng.sample(NAMES, 2)  # two different people: "Mia gives Mia 3 apples" would read as nonsense
    item, place = rng.choice(ITEMS), rng.choice(PLACES)
    he, his = ("she", "her") if name in FEMALE else ("he", "his")
    value = rng.randint(2, 20)  # at least 2, so a first "sub" step is always possible
    sentences = [f"{name} has {value} {item}."]
    steps = [f"{name} starts with {value} {item}."]
    for _ in range(level):
        kinds = ["add", "sub"] + (["double"] if value <= 15 else [])  # doubling stays <= 30
        if value <= 1:
            kinds = ["add"]  # taking 1 or more from 1 would leave nothing: nobody ends with zero items
        kind = rng.choice(kinds)
        if kind == "add":
            n = rng.randint(1, min(9, 99 - value))  # a one-digit step whose result stays <= 99
            sentence = rng.choice([
                f"Then {he} buys {n} more {item} at the {place}.",
                f"Then {friend} gives {name} {n} more {item}.",
                f"Then {he} finds {n} more {item} in the {place}.",
            ])
            steps.append(f"{name} gets {n} more: {value} + {n} = {value + n}.")
            value += n
        elif kind == "sub":
            n = rng.randint(1, min(9, value - 1))  # the result stays >= 1
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
    steps.append(f"Answer: {value}")  # its own last line: the format ANSWER_RE and the oracle read
    return Problem(" ".join(sentences), "\n".join(steps), value, level)


def problem_document(problem: Problem) -> str:
    """The pretraining ("textbook") rendering of a problem; sample.py prompts with the part up to 'Solution:'."""
    return f"Problem: {problem.question}\nSolution:\n{problem.solution}"


def problem_prompt(problem: Problem) -> str:
    """problem_document cut after "Solution:": a pretrained model continues it with the solution."""
    return f"Problem: {problem.question}\nSolution:\n"


def problem_chat(problem: Problem) -> list[dict]:
    """The SFT rendering: the user asks, the assistant answers with the worked solution."""
    return [{"role": "user", "content": problem.question}, {"role": "assistant", "content": problem.solution}]


def prompt_ids(tokenizer: Tokenizer, problem: Problem, chat: bool) -> list[int]:
    """How a problem is posed: as a textbook document (pretrained models) or a user turn (chat models)."""
    if chat:
        return tokenizer.render_prompt([{"role": "user", "content": problem.question}])
    return tokenizer.encode(problem_prompt(problem))


def drill_document(rng: random.Random, n_lines: int = 12) -> str:
    """Arithmetic drill lines ("7 + 5 = 12"): the facts every solution step relies on."""
    lines = []
    for _ in range(n_lines):
        a = rng.randint(1, 90)  # ranges like the solution steps' (one-digit steps, results <= 99)
        op = rng.choice("+-*")
        if op == "+":
            b = rng.randint(1, min(9, 99 - a))
            lines.append(f"{a} + {b} = {a + b}")
        elif op == "-":
            b = rng.randint(1, 9) if a > 9 else rng.randint(1, a)  # no negative results
            lines.append(f"{a} - {b} = {a - b}")
        else:
            a = rng.randint(1, 49)  # doubled: at most 98
            lines.append(f"{a} * 2 = {a * 2}")
    return "Practice:\n" + "\n".join(lines)


# "Answer: 42" on the last answer line; tolerate markdown bold, a trailing period, spaces and commas.
ANSWER_RE = regex.compile(r"Answer\s*[:=]\s*\**\s*(-?[\d,]+)")


def extract_answer(text: str) -> int | None:
    """The integer after the last 'Answer:' in text, or None when there is none (malformed output)."""
    matches = ANSWER_RE.findall(text)
    if not matches:
        return None
    # The last one: a model that writes "Answer: 5" mid-solution and then corrects itself is graded on
    # its final word, the way a reader would grade it.
    digits = matches[-1].replace(",", "")  # "1,000" -> "1000"
    try:
        return int(digits)
    except ValueError:
        return None  # the pattern also matches a bare "," (or "-,"): no number, not a crash


def check(problem: Problem, completion: str) -> bool:
    """The oracle: does the completion's final answer equal the problem's? (Only the answer counts.)

    Pitfall: the steps are not checked, so a wrong derivation that lands on the right number passes.
    Rejection sampling and PTS inherit this, as every recipe graded on outcomes alone does.
    """
    return extract_answer(completion) == problem.answer  # None (no answer) never equals an int


def make_split(seed: int, n: int, levels=(1, 2, 3, 4)) -> list[Problem]:
    """n problems with levels cycling through `levels`, deterministic in seed."""
    rng = random.Random(seed)  # its own generator: the split never depends on what else was drawn
    # Cycling, not drawing, the levels: each level gets n / len(levels) problems, so per-level accuracy
    # compares groups of equal size.
    return [make_problem(rng, levels[i % len(levels)]) for i in range(n)]


# ----------------------------------------------------------------------------------------------------
# 2. Long documents (report section 3: midtraining on 30% long-context data)
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
LONG_EVAL_SEED = 3_000_017  # seed of the long-context evaluation documents (eval.py --long)
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
    text: str  # the same document as text: what the 13-gram check reads
    answers: list[dict]  # sorted by position


def draw_problem(rng: random.Random, level: int, key_people: set[str], banned_ngrams: set | None,
                 is_key: bool) -> Problem:
    """A problem whose people are new to the document and whose question shares no 13-gram with a
    held-out question. A key problem (one that states a fact) adds its people to key_people, so that
    no later problem, filler included, mentions them and gives an answer away from nearby."""
    names = set(NAMES)
    # Redraw until both hold: a problem is never edited, so its solution stays consistent with it.
    while True:
        problem = make_problem(rng, level)
        people = set(regex.findall(r"\p{L}+", problem.question)) & names  # the words that are names
        clean = not banned_ngrams or not (ngrams(problem.question) & banned_ngrams)  # report section 2
        if clean and not (people & key_people):
            if is_key:
                key_people.update(people)
            return problem


# A block is {"pieces": [(text, answer), ...]}; answer is None, or the dict that assembling fills in
# with the answer's position. A question block also holds "fact", the index of its fact in `facts`.


def add_problem_facts(rng: random.Random, facts: list[dict], questions: list[dict], n_problems: int,
                      n_problems_asked: int, key_people: set[str], banned_ngrams: set | None) -> None:
    """Two-part problems: part one ("Mia has 12 apples.") is a fact; for the first n_problems_asked, part
    two (the rest of the question and its worked solution) is the question that needs it."""
    for k in range(n_problems):
        problem = draw_problem(rng, rng.randint(1, 3), key_people, banned_ngrams, is_key=True)
        first, rest = problem.question.split(". ", 1)  # "Mia has 12 apples" | "Then she buys ... now?"
        facts.append({"pieces": [(f"Problem: {first}.\n", None)]})
        if k < n_problems_asked:
            opening, *steps = problem.solution.split("\n")
            name, start, item = SOLUTION_START_RE.match(opening).groups()  # "Mia starts with 12 apples."
            answer = {"kind": "problem", "answer": int(start)}
            # The answer is the number copied from part one, alone in its piece so its position is exact.
            pieces = [
                (f"Problem: {rest}\nSolution:\n{name} starts with ", None),
                (start, answer),
                (f" {item}.\n" + "\n".join(steps) + "\n", None),
            ]
            questions.append({"pieces": pieces, "fact": len(facts) - 1})


def add_ledger_facts(rng: random.Random, facts: list[dict], questions: list[dict], n_ledger: int,
                     n_ledger_asked: int, n_problems: int, key_people: set[str]) -> None:
    """Ledger entries ("Leo has 37 shells.") as facts; the first n_ledger_asked get a question
    ("How many shells does Leo have now?") whose solution copies the number."""
    # Ledger entries go to people no problem mentions, so every name in the document has one fact.
    free = [name for name in NAMES if name not in key_people]
    if len(free) < n_ledger + 2:  # + 2: filler problems need two people of their own
        raise ValueError(f"{n_ledger} ledger entries and {n_problems} problems need more than {len(NAMES)} names")
    people = rng.sample(free, n_ledger)
    key_people.update(people)
    # Distinct values (sampled without replacement): copying another entry's number is always wrong.
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


def block_tokens(tokenizer: Tokenizer, block: dict) -> int:
    """Length of a block in tokens (pieces end on pre-split boundaries, so their lengths add up)."""
    return sum(len(tokenizer.encode(text)) for text, _ in block["pieces"])


def filler_blocks(rng: random.Random, tokenizer: Tokenizer, room: int, key_people: set[str],
                  banned_ngrams: set | None) -> list[dict]:
    """Blocks the model already knows (problems with solutions 60% of the time, arithmetic drills
    otherwise) until at most `room` tokens are used, topped up with the longest drill that fits."""
    filler = []
    while room > 0:
        # Both kinds are pretraining text, so the filler costs the model nothing to read: what is new
        # in a long document is only the distance between a fact and its question.
        if rng.random() < 0.6:
            problem = draw_problem(rng, rng.randint(1, 4), key_people, banned_ngrams, is_key=False)
            block = {"pieces": [(problem_document(problem) + "\n", None)]}
        else:
            block = {"pieces": [(drill_document(rng, rng.randint(2, 6)) + "\n", None)]}
        if block_tokens(tokenizer, block) > room:  # too big for what is left: the longest drill that fits, or stop
            for n_lines in range(5, 0, -1):
                block = {"pieces": [(drill_document(rng, n_lines) + "\n", None)]}
                if block_tokens(tokenizer, block) <= room:
                    break
            else:
                break
        filler.append(block)
        room -= block_tokens(tokenizer, block)  # stays >= 0: a block larger than room was replaced above
    return filler


def arrange_blocks(rng: random.Random, layout: str, facts: list[dict], filler: list[dict],
                   questions: list[dict]) -> list[dict]:
    """The order of the blocks for a layout (see long_document); every question comes after its fact."""
    if layout == "recall":
        # rng.sample of the whole list is a shuffled copy: the callers' lists keep their order.
        return rng.sample(facts, len(facts)) + filler + rng.sample(questions, len(questions))
    if layout == "near":
        asked = {question["fact"] for question in questions}
        order = [fact for k, fact in enumerate(facts) if k not in asked] + filler
        for question in rng.sample(questions, len(questions)):
            order += [facts[question["fact"]], question]
        return order
    # "mixed": questions are inserted one at a time into the shuffled facts and filler.
    order = rng.sample(facts + filler, len(facts) + len(filler))
    for question in rng.sample(questions, len(questions)):
        fact = facts[question["fact"]]
        after = next(i for i, block in enumerate(order) if block is fact) + 1  # by identity, not ==
        # Log-uniform distance in blocks: short and long ranges are drawn equally often.
        skip = int(math.exp(rng.uniform(0.0, math.log(len(order) - after + 1))))  # 1 .. blocks left + 1
        order.insert(after + skip - 1, question)
    return order


def assemble_document(tokenizer: Tokenizer, order: list[dict], facts: list[dict],
                      questions: list[dict]) -> LongDocument:
    """Concatenate the blocks' ids after <|endoftext|>, recording where each fact starts and where each
    answer sits; the answers come back sorted by position."""
    ids, texts, fact_positions = [tokenizer.bos_id], [], {}  # fact_positions: index in facts -> index in ids
    for block in order:
        # Blocks are compared by identity: two facts with equal text are still two different facts.
        if any(block is fact for fact in facts):
            fact_positions[next(i for i, fact in enumerate(facts) if fact is block)] = len(ids)
        for text, answer in block["pieces"]:
            piece = tokenizer.encode(text)  # equals this text's slice of encode(whole text): see the section comment
            if answer is not None:
                answer.update(position=len(ids), n_tokens=len(piece))  # fills in the question's own dict
            ids += piece
            texts.append(text)
    answers = []
    for question in questions:
        answer = next(a for _, a in question["pieces"] if a is not None)
        answers.append({**answer, "fact_position": fact_positions[question["fact"]]})
    answers.sort(key=lambda a: a["position"])
    return LongDocument(ids, "".join(texts), answers)


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
    key_people: set[str] = set()  # every person a fact is about: filler must not mention them
    facts, questions = [], []  # blocks; each question names its fact by index in facts
    # Problem facts first: they draw their people freely, and the ledger takes names from those left.
    add_problem_facts(rng, facts, questions, n_problems, n_problems_asked, key_people, banned_ngrams)
    add_ledger_facts(rng, facts, questions, n_ledger, n_ledger_asked, n_problems, key_people)
    room = n_tokens - 1 - sum(block_tokens(tokenizer, block) for block in facts + questions)  # 1: <|endoftext|>
    if room < 0:
        raise ValueError(f"{n_tokens} tokens cannot hold {n_ledger} ledger and {n_problems} problem facts")
    filler = filler_blocks(rng, tokenizer, room, key_people, banned_ngrams)
    order = arrange_blocks(rng, layout, facts, filler, questions)
    return assemble_document(tokenizer, order, facts, questions)


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
    # Lowercased, punctuation dropped: a copy that only changes case, commas or line breaks still matches.
    words = regex.findall(r"\p{L}+|\p{N}+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def decontaminate(texts: list[str], eval_texts: list[str], n: int = 13) -> tuple[list[str], int]:
    """Drop every training text sharing an n-gram with any eval text; return (kept, n_dropped).

    We index the eval questions, not their solutions: the worked solutions are formulaic equations
    ("12 + 5 = 17.") shared by thousands of unrelated problems, so their n-grams say nothing about
    leakage, whereas a shared 13-word stretch of question text means the problem itself leaked.
    """
    # One set of every eval n-gram: each training text then costs one hash lookup per n-gram, not a
    # comparison with every eval text (60,000 x 500 pairs at toy scale).
    banned = set()
    for text in eval_texts:
        banned |= ngrams(text, n)
    kept = [text for text in texts if not (ngrams(text, n) & banned)]  # text shorter than n words: kept
    return kept, len(texts) - len(kept)


def read_problems(path: str) -> list[Problem]:
    """The problems of a JSONL split (eval.jsonl, sft.jsonl), as written by data.py.

    Each record is checked field by field (the inverse of Problem.to_dict), so a hand-edited file fails
    with its name and line instead of a TypeError deep inside an evaluation.
    """
    kinds = {"question": str, "solution": str, "answer": int, "level": int}
    problems = []
    for line_no, record in files.iter_jsonl(path):
        wrong = [name for name, kind in kinds.items() if type(record.get(name)) is not kind]  # bool is no int here
        if wrong or set(record) - set(kinds):
            raise files.DataError(f"{path}, line {line_no}: a problem needs exactly question and solution (text), "
                                  f"answer and level (integers); wrong or missing: {', '.join(wrong or sorted(set(record) - set(kinds)))}")
        problems.append(Problem(**record))
    return problems
