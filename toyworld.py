"""The synthetic world: verifiable word problems with worked solutions and their oracle, the two
pretraining corpora (synthetic and web-like), first-line-recall documents for context extension, an
imperfect teacher for SFT, a knowledge quiz, and the 13-gram decontamination rule.

Phi-4's central idea (report section 2) is that carefully generated synthetic "textbook" data teaches
reasoning better than web text. At toy scale we cannot call a teacher LLM, so the project embeds a small
world instead: a deterministic generator of word problems about two people passing items back and forth,
each with a worked step-by-step solution and a checkable final answer. Every stage of the recipe reads it:

    pretraining  a synthetic corpus (clean worked solutions, drills, corrected slips, recall documents)
                 and a web-like one (answers first, merged steps, uncorrected mistakes, boilerplate, and
                 facts about the world's people that exist nowhere else): the report's synthetic-vs-web
                 contrast (section 2, Table 2) in miniature
    midtraining  recall documents up to 4x the pretraining context (report section 3)
    SFT          chat conversations answered by an imperfect teacher: right, except that it reads one
                 phrasing the wrong way round (report section 4.1: SFT data is only as good as its teacher)
    RS, DPO, PTS problems never seen in pretraining, graded by the oracle `check(problem, completion)`
    evaluation   held-out test and dev splits, decontaminated from everything else by the 13-gram rule

Why two people: every solution step commits to a word that follows a rule (do you get items, lose
items, or keep what you have?). Those words are the decisions a solution turns on, the
pivotal tokens of report section 4.3, and the same rule decides them in every problem, so a preference
learned on one problem transfers to the next.

Sections: 1. problems, solutions, the answer extractor and the oracle; 2. the two pretraining corpora and
the knowledge quiz; 3. the imperfect teacher; 4. recall documents (midtraining); 5. decontamination.
data.py turns all of it into token shards and splits.

Simplified: one kind of reasoning (two counters, a handful of event kinds), which is what a 1M-parameter
model can learn on a CPU in minutes; the real Phi-4 pipelines (teacher LLMs) live in synth.py.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import regex

import files
from tokenization import Tokenizer

# ----------------------------------------------------------------------------------------------------
# 1. The synthetic world
#
# A problem: you and one other person, each with some items, 1-4 events, and how many you have now.
#
#   You have 5 plums. Mia has 7 plums. Mia gives you 3 plums. You take 2 plums from Mia. Finally, Mia finds
#   4 plums. How many plums do you have now?
#
# The worked solution copies your starting count, then takes the events in order and decides what each
# does to you, always in the same words:
#
#   You have 5 plums.
#   You get 3: 5 + 3 = 8.
#   You get 2: 8 + 2 = 10.
#   You keep 10.
#   Answer: 10
#
# The word after "You" is the decision (DECISIONS): " get" when you receive or gain, " lose" when you
# give or lose, " keep" when the event is about the other person only. It follows from where "you"
# stands in the event and from its verb, never from a name: the same rule decides every problem, so a
# preference learned on one transfers to the next. (Asking about one of two named people instead makes
# every decision a match of two name tokens, "is this the asked one?", which the toy model does not
# learn in its budget: measured, its decisions stay at chance even with the event restated just before.)
# Note the trap: in "You take 2 plums from Mia" you come first and get items, as in "You find 2 plums",
# but in "Mia takes 2 plums from you" you come last and lose them, the opposite of "Mia gives you 3
# plums". The imperfect teacher of section 3 falls into it.

NAMES = (
    "Mia Leo Ava Noah Emma Liam Zoe Omar Ivy Ezra Nora Hugo Lily Owen Ruby Felix Iris Jonah Maya Elias "
    "Clara Theo Hana Arlo Vera Kai Lena Milo Sofia Amir Nina Rafael Tara Dev Julia Oscar Ada Marco Yara Sam"
).split()
ITEMS = (
    "apples marbles stickers pencils cookies shells coins stamps books cards beads buttons "
    "plums eggs kites candles rocks ribbons lemons cupcakes feathers acorns crayons balloons"
).split()
YOU = "you"  # the person every question asks about
# Event kinds by verb: a transfer moves items between you and the other person, the rest change one
# person's count. The sign is that of the change for the person named first (the subject).
TRANSFERS = {"gives": -1, "takes": +1}
SOLO = {"finds": +1, "buys": +1, "sells": -1, "drops": -1}
DECISIONS = {+1: "get", -1: "lose", 0: "keep"}  # the rule: sign of the change to you -> the word
MAX_COUNT = 99  # every count stays in 0..99: two-digit numbers, one BPE token each


@dataclass
class Event:
    """One event of a problem: `actor` does `verb` with n items (to or from `other` for a transfer)."""

    verb: str  # third person ("gives"); written "give" when you are the subject
    actor: str  # YOU or a name
    n: int
    other: str | None = None  # the second person of a transfer, None for a one-person event

    def sentence(self, item: str) -> str:
        """The event as the question states it, without the full stop: "Mia gives you 3 plums"."""
        subject = "You" if self.actor == YOU else self.actor
        verb = self.verb[:-1] if self.actor == YOU else self.verb  # "you give", "Mia gives"
        if self.verb == "gives":
            return f"{subject} {verb} {self.other} {self.n} {item}"
        if self.verb == "takes":
            return f"{subject} {verb} {self.n} {item} from {self.other}"
        return f"{subject} {verb} {self.n} {item}"

    def sign(self, person: str = YOU) -> int:
        """+1, -1 or 0: what the event does to `person`'s count. This function is the decision rule."""
        if person == self.actor:
            return TRANSFERS.get(self.verb) or SOLO[self.verb]
        if person == self.other:
            return -TRANSFERS[self.verb]  # the other side of a transfer
        return 0


@dataclass
class Problem:
    """One verifiable problem: the question, its worked solution (ending in the answer line), the answer."""

    question: str
    solution: str
    answer: int
    level: int  # number of events, 1..4: the difficulty

    def to_dict(self) -> dict:
        """The JSONL record of data.py's splits; Problem(**record) reads it back (read_problems)."""
        return asdict(self)


@dataclass
class Story:
    """A problem before it is written out: the other person, item, starting counts and events. The
    question, the reference solution, the teacher's solution and the web renderings are all made from it."""

    other: str
    item: str
    start: dict[str, int]  # YOU and the other person -> starting count
    events: list[Event]

    def question(self) -> str:
        sentences = [f"You have {self.start[YOU]} {self.item}.", f"{self.other} has {self.start[self.other]} {self.item}."]
        events = [event.sentence(self.item) + "." for event in self.events]
        # "Finally," before the last of several events. Without it a solution can only tell that the
        # events have run out by counting them, and a pretrained model that had not learned to count went
        # on (measured: 49 of 400 dev problems answered with too many steps, 48 of them 3-event problems
        # given a 4th step; LAB.md). With it, the cue sits in the words the last step reads its number from.
        if len(events) > 1:
            last = events[-1]
            events[-1] = "Finally, " + (last[0].lower() + last[1:] if self.events[-1].actor == YOU else last)
        return " ".join(sentences + events + [f"How many {self.item} do you have now?"])

    def counts(self, signs: list[int] | None = None) -> list[int]:
        """Your count after each event (starting count first), under `signs` (default: the rule's)."""
        signs = signs if signs is not None else [e.sign() for e in self.events]
        values = [self.start[YOU]]
        for event, sign in zip(self.events, signs):
            values.append(values[-1] + sign * event.n)
        return values

    def answer(self) -> int:
        return self.counts()[-1]


def make_story(rng: random.Random, level: int) -> Story:
    """Draw a story with `level` events (deterministic given rng's state); every count stays in 0..99."""
    other, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = {YOU: rng.randint(2, 20), other: rng.randint(2, 20)}
    events = []
    while len(events) < level:
        actor, second = rng.sample((YOU, other), 2)
        verb = rng.choice(("gives", "gives", "takes", "finds", "buys", "sells", "drops"))  # transfers 3/7 of the time
        event = Event(verb, actor, 0, second if verb in TRANSFERS else None)
        # How far each count the event moves can go and stay in 0..MAX_COUNT: a giver cannot give more
        # than they have. Steps are one digit (1-9), so that each sum is a fact the drills teach.
        room = min(start[p] if event.sign(p) < 0 else MAX_COUNT - start[p] for p in (YOU, other) if event.sign(p))
        if room < 1:
            continue  # nobody can give from nothing: draw another event
        event.n = rng.randint(1, min(9, room))
        for person in (YOU, other):
            start[person] += event.sign(person) * event.n  # `start` runs ahead as the current counts
        events.append(event)
    for person in (YOU, other):  # undo the running counts: `start` becomes the starting counts again
        start[person] -= sum(e.sign(person) * e.n for e in events)
    return Story(other, item, start, events)


def step_line(event: Event, sign: int, before: int, pick=lambda options: options[0]) -> str:
    """One solution line: the decision word, then the arithmetic it implies ("You get 3: 5 + 3 = 8.")."""
    if sign == 0:
        return f"You {DECISIONS[0]} {before}."
    after = before + sign * event.n
    return f"You {DECISIONS[sign]} {event.n}{pick((':', ', so'))} {before} {'+' if sign > 0 else '-'} {event.n} = {after}."


def solution_text(story: Story, signs: list[int] | None = None, rng: random.Random | None = None) -> str:
    """The worked solution, with the decision of each step given by `signs` (default: the rule's).

    With rng, the wording varies ("You have 5 plums." or "At first you have 5 plums."; "You get 3:" or
    "You get 3, so"), as the teacher writes (section 3): two correct solutions of one problem then differ
    in text, which is what makes rejection sampling's distinct correct answers new data. The decisions and
    numbers never vary. Pretraining documents use the one wording (see synthetic_document).
    """
    pick = (lambda options: rng.choice(options)) if rng else (lambda options: options[0])
    signs = signs if signs is not None else [e.sign() for e in story.events]
    values = story.counts(signs)
    lines = [pick((f"You have {values[0]} {story.item}.", f"At first you have {values[0]} {story.item}."))]
    lines += [step_line(event, sign, before, pick) for event, sign, before in zip(story.events, signs, values)]
    lines.append(f"Answer: {values[-1]}")  # its own last line: the format ANSWER_RE and the oracle read
    return "\n".join(lines)


def make_problem(rng: random.Random, level: int) -> Problem:
    """Draw one problem with `level` events and its reference solution (deterministic given rng's state)."""
    story = make_story(rng, level)
    return Problem(story.question(), solution_text(story), story.answer(), level)


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
        a = rng.randint(0, MAX_COUNT)
        b = rng.randint(1, 9)  # one-digit steps, as in every solution
        if rng.random() < 0.5 and a + b <= MAX_COUNT:
            lines.append(f"{a} + {b} = {a + b}")
        elif a >= b:
            lines.append(f"{a} - {b} = {a - b}")
        else:
            lines.append(f"{a} + {b} = {a + b}")
    return "Practice:\n" + "\n".join(lines)


def copy_drill(rng: random.Random, n_sentences: int = 4) -> str:
    """A reading drill: a few event sentences, then the same sentences again ("Again: ..."). Copying what
    was read a few dozen tokens back is the skill every step of a solution needs (the number of the event
    it decides comes from the question), and repeating a text is the plainest exercise of it."""
    story = make_story(rng, n_sentences)
    text = " ".join(event.sentence(story.item) + "." for event in story.events)
    return f"Read: {text}\nAgain: {text}"


# How often a textbook drill is a reading drill rather than an arithmetic one (data.py). Rarely, on weak
# evidence (LAB.md): with cl100k's split of numbers from their spaces, and as many reading drills as
# arithmetic ones, the pretrained model learned to copy each event's number into its step in neither of
# two training seeds (48% and 17% right, teacher-forced); with one in four, in two of four runs (96%,
# 95%, 31%, 18%). What made it form in every run tried (three seeds) was the toy tokenizer keeping a
# number with its space (tokenization.TOY_PATTERN), with the drills left at this rate.
READING_DRILL_RATE = 0.25


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


def check_steps(problem: Problem, completion: str) -> bool:
    """The stricter oracle: is every line of the completion right, not only its answer?

    Each problem has one derivation, written in the teacher's two wordings per line (solution_text), so
    a completion is right step by step when, read in the first wording, it is the reference solution
    line for line. An answer sampled at temperature 1 can land on the right number through two slips
    ("8 + 2 = 9", then "9 - 8 = 2"): `check` accepts it, this does not. A judge that can read the steps
    keeps such answers out of the training data; one that cannot (the report's answer checks) lets them in.
    """
    return plain_wording(completion) == plain_wording(problem.solution)


def plain_wording(solution: str) -> str:
    """A solution in the first of the teacher's wordings ("You have 5 plums.", "You get 3: 5 + 3 = 8.")."""
    solution = regex.sub(r"(?m)^At first you have ", "You have ", solution.strip())
    return regex.sub(r"(?m)^(You (?:get|lose) \d+), so ", r"\1: ", solution)


def decisions(solution: str) -> list[str]:
    """The decision words of a solution, in order: the word after "You" that opens each step line."""
    return regex.findall(r"(?m)^You (get|lose|keep)\b", solution)


def make_split(seed: int, n: int, levels=(1, 2, 3, 4)) -> list[Problem]:
    """n problems with levels cycling through `levels`, deterministic in seed."""
    rng = random.Random(seed)  # its own generator: the split never depends on what else was drawn
    # Cycling, not drawing, the levels: each level gets n / len(levels) problems, so per-level accuracy
    # compares groups of equal size.
    return [make_problem(rng, levels[i % len(levels)]) for i in range(n)]


# ----------------------------------------------------------------------------------------------------
# 2. Two pretraining corpora (report section 2: synthetic data against filtered web data, Table 2)
#
# Both corpora are made from the same stories, so they differ only in how the text is written, which
# is the report's claim in miniature: the same knowledge, presented as clean step-by-step reasoning,
# teaches more reasoning per token than the web's way of writing it.
#
#   synthetic   every step restated and decided, intermediate results written out; drills; practice
#               sheets that write a problem as one equation ("In one line:"); and a share of solutions
#               with a slip that is caught and corrected on the spot ("You lose - no, you get 3: ..."),
#               which shows what a wrong decision looks like and that it is wrong
#   web-like    the same problems, with the corruptions real web text has, each at its stated rate
#               (WEB_RATES): the answer before the reasoning, all steps merged into one equation with no
#               intermediate results, one decision made wrong and never corrected (so the final answer
#               is wrong too), navigation boilerplate; and fact pages about the world's people, the
#               knowledge that exists only on the web (a model trained on less web knows less of it,
#               which the knowledge quiz measures).

SYNTHETIC_CORRECTION_RATE = 0.1  # share of synthetic solutions with one caught-and-corrected slip
SYNTHETIC_QUICK_RATE = 0.5  # share of synthetic problems written as one equation (a practice sheet)
WEB_RATES = {"answer_first": 0.4, "merged": 0.7, "wrong_decision": 0.25, "takes_backwards": 0.8, "boilerplate": 0.5}
# The web rarely shows every step: most of its solutions give the result, or one line of arithmetic. That,
# not the noise, is what the contrast turns on. Measured (LAB.md): with answer_first 0.3 and merged 0.4
# most web solutions still showed each step, the web-heavy model learned to copy and to add as well as
# the synthetic-heavy one, and the two solved as many problems (89% and 87%). At these rates the
# web-heavy model answered in one line in two builds of three (solving 20-58%: sums of several numbers in
# one token); in the third, with the synthetic sheets under their own header, step by step again.
WEB_FACT_PAGE_RATE = 0.2  # share of web documents that are fact pages instead of problems
BOILERPLATE = ("Home > Forum > Homework help", "Posted by guest | 3 replies", "Reply | Share | Report",
               "Sign in to see more answers.", "Copyright 2024. All rights reserved.")
PLACES = "market fair library park bakery school garden harbor museum station".split()
PETS = "cat dog parrot rabbit turtle hamster goldfish pony".split()
JOBS = "baker painter pilot farmer nurse teacher sailor tailor".split()
# The facts of the world: each person has a home, a pet and a job, fixed by one seed, so every build
# of the data (and the quiz) agrees on them.
_fact_rng = random.Random(424_242)
FACTS = {name: {"home": _fact_rng.choice(PLACES), "pet": _fact_rng.choice(PETS), "job": _fact_rng.choice(JOBS)}
         for name in NAMES}
# How the quiz asks for each fact: the prompt, completed by one word (the fact pages' own sentences).
FACT_PROMPTS = {"home": "{} lives near the", "pet": "{} has a pet", "job": "{} works as a"}


def one_line(story: Story, signs: list[int]) -> str:
    """The whole solution as one equation from your starting count: "You: 12 + 3 - 2 = 13." (events that
    leave you as you were have no term)."""
    values = story.counts(signs)
    terms = "".join(f" {'+' if s > 0 else '-'} {e.n}" for e, s in zip(story.events, signs) if s)
    return f"You: {values[0]}{terms} = {values[-1]}."


def synthetic_document(rng: random.Random, story: Story) -> str:
    """A textbook document of a story: the clean worked solution (sometimes with one slip caught on the
    spot), or SYNTHETIC_QUICK_RATE of the time the one-line equation of a practice sheet.

    The practice sheet is copying practice: its terms are the events' numbers in order, one after the
    other, with nothing to work out in between. Every later skill waits on that copy (a step that decides
    right and adds the wrong number is wrong). With cl100k's split of a number from its space it formed
    late and not in every run (LAB.md): the web-heavy model, trained mostly on such lines, learned it in 4
    runs of 5; the synthetic-heavy one, with 30% of its problems written so, in 2 of 6 (teacher-forced,
    the number right 95-100% of the time, else 17-48%); with half, 75% and 98% (two seeds). With the toy
    tokenizer's own split (tokenization.TOY_PATTERN) it formed in all three seeds tried. The sheet has its
    own header, "In one line:", so that however many there are, a "Solution:" is still answered step by
    step.
    """
    question = story.question()
    if rng.random() < SYNTHETIC_QUICK_RATE:
        signs = [event.sign() for event in story.events]
        return f"Problem: {question}\nIn one line:\n{one_line(story, signs)}\nAnswer: {story.answer()}"
    # One wording. Measured: with the teacher's two wordings mixed in, the pretrained model copied the
    # right event number 41% of the time (teacher-forced) against 100% with one wording, which repeats
    # the question's "You have 12 acorns." exactly: that exact copy, in every document, is what teaches
    # the model to copy from the question at all.
    solution = solution_text(story)
    if rng.random() < SYNTHETIC_CORRECTION_RATE:
        # The slip: one step's decision word written wrong, then "- no," and the step done right.
        k = rng.randrange(len(story.events))
        right = DECISIONS[story.events[k].sign()]
        wrong = rng.choice([word for word in DECISIONS.values() if word != right])
        lines = solution.split("\n")
        lines[k + 1] = f"You {wrong} - no, you{lines[k + 1][len('You'):]}"  # line 0 is the starting count
        solution = "\n".join(lines)
    return f"Problem: {question}\nSolution:\n{solution}"


def web_document(rng: random.Random, story: Story) -> tuple[str, set[str]]:
    """A web-like document -> (text, the corruptions it has). A fact page WEB_FACT_PAGE_RATE of the time,
    else the story's problem with each corruption of WEB_RATES applied independently at its rate."""
    kinds = {kind for kind, rate in WEB_RATES.items() if rng.random() < rate}
    if rng.random() < WEB_FACT_PAGE_RATE:
        kinds = {"fact_page"} | ({"boilerplate"} & kinds)
        name = rng.choice(NAMES)
        facts = [FACT_PROMPTS[key].format(name) + f" {value}." for key, value in FACTS[name].items()]
        body = f"About {name}\n" + " ".join(rng.sample(facts, len(facts)))  # the facts in any order
    else:
        signs = [event.sign() for event in story.events]
        # The web's common misconception: "You take 2 plums from Mia" read as if you gave them. It applies
        # (and its rate counts) where the story has a "takes" event and the misreading leaves every
        # count >= 0, as a reader's slip would; nobody writes "-2 plums".
        misread = [-s if e.verb == "takes" else s for e, s in zip(story.events, signs)]
        if misread == signs or min(story.counts(misread)) < 0:
            kinds.discard("takes_backwards")
        if "takes_backwards" in kinds:
            signs = misread
        if "wrong_decision" in kinds:
            # One decision flipped and never corrected: every later count, and the answer, is wrong. Only
            # flips that keep every count >= 0 (nobody has -2 plums); one always exists: the last event
            # flipped to " get" if it was not, else to " keep".
            flips = [(k, s) for k in range(len(signs)) for s in (1, -1, 0)
                     if s != signs[k] and min(story.counts(signs[:k] + [s] + signs[k + 1:])) >= 0]
            k, signs[k] = flips[rng.randrange(len(flips))]
        values = story.counts(signs)
        if "merged" in kinds:
            lines = [one_line(story, signs)]  # no intermediate results: the steps a reader must trust
        else:
            lines = solution_text(story, signs).split("\n")[:-1]  # without the answer line, placed below
        answer = f"Answer: {values[-1]}"
        lines = [answer] + lines if "answer_first" in kinds else lines + [answer]
        body = f"Problem: {story.question()}\nSolution:\n" + "\n".join(lines)
    if "boilerplate" in kinds:
        header, footer = rng.sample(BOILERPLATE, 2)
        body = f"{header}\n{body}\n{footer}"
    return body, kinds


def quiz_items() -> list[tuple[str, str]]:
    """The knowledge quiz: (prompt, the one-word answer) for every fact of FACTS, e.g. ("Mia has a pet", "cat")."""
    return [(FACT_PROMPTS[key].format(name), value) for name in NAMES for key, value in FACTS[name].items()]


# ----------------------------------------------------------------------------------------------------
# 3. The imperfect teacher (report section 4.1: SFT answers come from a stronger model, which is not perfect)
#
# Phi-4's SFT data was written by teacher models and filtered; what the teacher gets wrong, SFT learns.
# Our teacher is right about every event except one phrasing: most of the time (TEACHER_TAKES_ERROR) it
# reads "You take 2 plums from Mia" as if the one named first gave, the way it reads "You give Mia 2
# plums" (and "Mia takes 2 plums from you" as if you received). The error is systematic: the teacher's
# most likely decision on such an event is the wrong one, so a model fine-tuned on it decides wrong when
# decoding greedily (noise without a bias would average out and never show in greedy answers). But it is
# not always wrong, and neither is the model it taught: sampled answers get "takes" right now and then,
# rejection sampling keeps exactly those, and preference optimisation and PTS learn to prefer them.


TEACHER_TAKES_ERROR = 0.7  # how often the teacher reads a "take(s)" event the wrong way round


def teacher_signs(story: Story, rng: random.Random) -> list[int]:
    """The teacher's decisions: the rule's, except that a "take(s)" event is read as "give(s)" (giver and
    taker swapped) TEACHER_TAKES_ERROR of the time."""
    return [-event.sign() if event.verb == "takes" and rng.random() < TEACHER_TAKES_ERROR else event.sign()
            for event in story.events]


def teacher_problem(rng: random.Random, level: int) -> tuple[Problem, bool]:
    """A fresh problem answered by the teacher -> (problem with the teacher's solution, whether it is right).
    The answer field stays the true one, so the oracle still grades the problem correctly."""
    story = make_story(rng, level)
    solution = solution_text(story, teacher_signs(story, rng), rng=rng)
    return Problem(story.question(), solution, story.answer(), level), extract_answer(solution) == story.answer()


def is_trap(problem: Problem) -> bool:
    """Whether a problem has a "take(s)" event, the phrasing the teacher gets wrong."""
    return regex.search(r"\btakes? \d", problem.question) is not None  # "Mia takes 2", "you take 2"


# ----------------------------------------------------------------------------------------------------
# 4. Recall documents: a long-range skill the toy can learn (report section 3, context extension)
#
# Phi-4 extended its context from 4K to 16K tokens on genuinely long documents. At toy scale the
# long-range skill has to be one a 1M-parameter model can learn in minutes, and measured here that is
# recall of a document's first line:
#
#   Key: Mia
#   Practice: ...filler lines of arithmetic...
#   The key was Mia.
#
# The key is the document's only name, so recalling it needs one attention head that looks for a name
# however far back it is: pretraining teaches that within 256 tokens, and midtraining stretches it to
# 1,024 (4x), with the RoPE base raised 25x as Phi-4 did, against an ablation that keeps it. Matching a
# name at any distance needs a channel pair that the position barely turns; the toy's base (800,
# model.py) leaves one over 256 and 512 tokens but not over 1,024 (the proportions of Phi-4's 10K over
# 4K and 16K), so only the raised base recalls at 4x (LAB.md). A content lookup (a number found by
# matching a name among many, "what did the ledger say Leo has?") is out of reach at this budget: it
# needs an induction-like circuit, which the literature puts at tens of millions of tokens for this
# shape, and the toy trains on a few million.

RECALL_VALUES = NAMES  # the keys: 40 names (chance 2.5%), one token each
LONG_SEED = 2_000_003  # seed of the midtraining documents (train and val splits)
LONG_EVAL_SEED = 3_000_017  # seed of the long-context evaluation documents (eval.py --long)
RECALL_PRETRAIN_SEED = 4_000_037  # seed of the pretraining recall documents


@dataclass
class LongDocument:
    """A document as token ids (the first is <|endoftext|>) with the exact place of its answer.

    answers: one dict per question: "kind" ("recall"), "answer" (the key), "position" (index in ids
    of the answer's first token), "n_tokens" (its length in tokens) and "fact_position" (index in ids
    where the key is stated). position minus fact_position is how far back the model has to look.
    """

    ids: list[int]
    text: str  # the same document as text
    answers: list[dict]


def recall_document(rng: random.Random, tokenizer: Tokenizer, n_tokens: int, n_questions: int = 1) -> LongDocument:
    """A recall document of at most n_tokens ids (<|endoftext|> included), filled with drills to within a line.

    The question "The key was Mia." ends the document; with n_questions > 1 it is also asked that many
    times minus one at random places in between (training documents: more answers to learn from per
    row, at every distance). Only the last question is recorded in `answers`, and with n_questions = 1
    (the evaluation) nothing but the first line holds the key.
    """
    key = rng.choice(RECALL_VALUES)
    head, question = f"Key: {key}\nPractice:\n", f"The key was {key}.\n"
    # The budget of the filler: what is left after the fixed parts (every question included).
    room = n_tokens - 1 - len(tokenizer.encode(head)) - n_questions * len(tokenizer.encode(question))
    if room < 0:
        raise ValueError(f"{n_tokens} tokens cannot hold a recall document")
    lines = []
    while True:
        line = drill_document(rng, 1).split("\n")[1] + "\n"  # one "a + b = c" line
        cost = len(tokenizer.encode(line))  # lines start after a newline: their ids add up exactly
        if cost > room:
            break
        lines.append(line)
        room -= cost
    for _ in range(n_questions - 1):
        lines.insert(rng.randint(0, len(lines)), question)
    prefix = head + "".join(lines) + "The key was"
    ids = [tokenizer.bos_id] + tokenizer.encode(prefix)
    # " Mia" with its space: the pre-split keeps a space with the word after it, so the cut before the
    # space is a token boundary and the answer's ids are exactly those of the whole text there.
    answer_ids = tokenizer.encode(f" {key}.\n")
    text = prefix + f" {key}.\n"
    if [tokenizer.bos_id] + tokenizer.encode(text) != ids + answer_ids:
        raise AssertionError("recall document: the answer's tokens are not where the text puts them")
    answer = {"kind": "recall", "answer": key, "position": len(ids), "n_tokens": len(tokenizer.encode(f" {key}")),
              "fact_position": 1 + len(tokenizer.encode("Key:"))}
    return LongDocument(ids + answer_ids, text, [answer])


def long_training_document(rng: random.Random, tokenizer: Tokenizer, n_tokens: int) -> LongDocument:
    """A training recall document of random length up to n_tokens, asking for its key 1-4 times: every
    distance from a few tokens to the whole context is practised, and one row teaches up to four answers."""
    return recall_document(rng, tokenizer, rng.randint(min(64, n_tokens), n_tokens), n_questions=rng.randint(1, 4))


# ----------------------------------------------------------------------------------------------------
# 5. Decontamination (report section 2: a 13-gram overlap with an evaluation set flags a sample)
#
# The rule's n-grams; data.clean_split applies it to every split against all the splits drawn before.


def ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    """Word n-grams of lowercased text with punctuation dropped."""
    # Lowercased, punctuation dropped: a copy that only changes case, commas or line breaks still matches.
    words = regex.findall(r"\p{L}+|\p{N}+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def read_problems(path: str) -> list[Problem]:
    """The problems of a JSONL split (test.jsonl, sft.jsonl, ...), as written by data.py.

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
