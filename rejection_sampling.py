"""Chapter: rejection sampling. Best-of-n answers graded by an oracle become SFT data and DPO pairs.

Phi-4 report section 4: the SFT responses were "chosen by best-of-n" (rejection sampling with
evaluation), and full-length preference pairs for the second DPO round came from sampled answers
judged against each other. At toy scale the judge is the world's oracle: for each problem the model
answers n times at temperature 1; correct answers are accepted, and a correct and an incorrect answer to
the same problem make a pair.

What the summary's two rates mean. Sample accuracy is the share of all n x problems answers that were
accepted: the model's average success rate. pass@n is the share of problems with at least one accepted
answer among its n: the problems best-of-n can teach at all. A problem solved with probability q is
missed by all n answers with probability (1 - q)^n, so pass@n grows with n even when q is small
(q = 0.2, n = 8: 1 - 0.8^8 = 0.83) while sample accuracy stays at q. The gap between them is the
headroom: problems the model solves sometimes, whose accepted answer is new training signal.

Simplified from the report: the judge is the world's answer check, not a reward model or a stronger
LLM. It reads only the final number, so a flawed solution that lands on the right number is accepted,
as with any outcome-only grader: on the toy world 5% of the accepted answers are such (two slips that
cancel, "8 + 2 = 9" then "9 - 8 = 2"). `--judge steps` accepts only answers right at every line
(toyworld.check_steps), a check the toy world can make because each problem has one derivation
(README, "Results", has what it changes). At most `--max-accepted` answers (2) and one pair are kept per
problem, so an easy problem weighs no more in the next round than a hard one.

Commands:
    python rejection_sampling.py --init out/sft --out out/rs          # 1,500 problems x 8 answers
    cat out/data/toy/sft.jsonl out/rs/sft.jsonl > out/rs/sft_mixture.jsonl   # the teacher's data + the accepted
    python train.py --stage sft --init out/sft --sft-data out/rs/sft_mixture.jsonl --out out/rs_sft   # second SFT round
    python dpo.py --init out/rs_sft --pairs out/rs/pairs.jsonl        # DPO on the pairs
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cli
import checkpoint
import data
import files
import parallel
import toyworld
from model import Phi4
from sample import sample_completions

# The judges an answer can be accepted by. "answer" is the report's kind: a math answer is checked, the
# derivation is not, so a sample that lands on the right number through two slips is accepted and taught.
# "steps" reads every line, which the toy world can do because each problem has one derivation.
JUDGES = {"answer": toyworld.check, "steps": toyworld.check_steps}


def judge(tokenizer: data.Tokenizer, problem: toyworld.Problem, group: list[list[int]],
          max_accepted: int, check=toyworld.check) -> tuple[list[str], list[int] | None, list[int] | None, int]:
    """The oracle's verdicts on one problem's sampled answers -> (accepted, chosen, rejected, n_correct).

    check(problem, text) -> bool is the judge: toyworld.check reads the final answer only,
    toyworld.check_steps every line (JUDGES).

    accepted: up to max_accepted distinct correct answers, as text without <|im_end|> (train.py's chat
      template adds it back), in sample order.
    chosen, rejected: the first correct and the first incorrect answer, as ids that keep their <|im_end|>
      (so DPO also learns to stop), when the problem has both; else None, None.
    n_correct: how many of the answers were correct.
    Only finished answers (ending in <|im_end|>) can be correct; a rambling answer that ran out of tokens
    is a good *rejected* example, since stopping is part of what the model must learn.
    """
    # BEGIN SOLUTION rejection_sampling: correct = finished and passes check; distinct texts; first right/wrong pair
    # The oracle reads the text without <|im_end|>. bool(s) first: an empty answer has no last token, and is wrong.
    verdicts = [bool(s) and s[-1] == tokenizer.im_end_id and check(problem, tokenizer.decode(s[:-1])) for s in group]
    good = [s for s, ok in zip(group, verdicts) if ok]  # accepted, in sample order
    bad = [s for s, ok in zip(group, verdicts) if not ok]  # wrong, or unfinished
    # Distinct: a copy of an answer adds weight, not information; two correct answers worded differently are
    # two examples. The first ones, since samples are i.i.d.: a uniform pick.
    accepted = list(dict.fromkeys(tokenizer.decode(s[:-1]) for s in good))[:max_accepted]
    # A pair needs both verdicts: a problem the model always solves (or never) teaches no preference. One pair,
    # the first of each kind: more would be near-copies of one preference.
    if good and bad:
        return accepted, good[0], bad[0], len(good)
    return accepted, None, None, len(good)
    # END SOLUTION rejection_sampling


def rejection_sampling(
    model: Phi4,
    tokenizer: data.Tokenizer,
    problems: list[toyworld.Problem],
    n: int,
    max_new_tokens: int = 120,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    batch_rows: int = 256,
    max_accepted: int = 2,
    judge_by: str = "answer",
) -> tuple[list[dict], list[dict], dict]:
    """Sample n answers per problem, let the oracle grade them -> (sft_records, pairs, summary).

    sft_records: up to max_accepted conversations per problem, one per distinct correct answer
      ({"messages": [...]}, the format train.py --stage sft reads): the model's own accepted answers
      become its next training targets.
    pairs: one full-length preference pair per problem that had both a correct and an incorrect answer,
      {"prompt", "chosen", "rejected"} as text (what other DPO tools read) plus the exact token ids
      (`*_ids`, what dpo.py trains on: re-encoding the text could merge tokens differently).
    Only finished answers (ending in <|im_end|>) can be accepted; a rambling answer that ran out of
    tokens is rejected (judge says why).
    """
    # <|im_end|> closes the assistant turn in Phi-4's chat format: the one stop token of an answer.
    stop = (tokenizer.im_end_id,)
    # The user turn, then an opened assistant header: the model writes only its answer, as at test time.
    prompts = [toyworld.prompt_ids(tokenizer, p, chat=True) for p in problems]
    samples = sample_completions(
        model, prompts, n, max_new_tokens, stop, temperature, top_k, top_p, seed, batch_rows, progress="rejection sampling",
        vocab_size=tokenizer.vocab_size,
    )  # [problem][sample] -> token ids, each cut just after its <|im_end|> (or at max_new_tokens)
    sft_records, pairs = [], []
    # Counters for the summary: correct samples, problems with no wrong answer, problems with no right one.
    n_correct = n_all_right = n_all_wrong = 0
    for problem, prompt, group in zip(problems, prompts, samples):
        accepted, chosen, rejected, n_good = judge(tokenizer, problem, group, max_accepted, JUDGES[judge_by])
        n_correct += n_good
        n_all_right += n_good == len(group)  # too easy: no pair, and the accepted answer is one the model already gives
        n_all_wrong += n_good == 0  # too hard for best-of-n: nothing to accept (pass@n misses it)
        for answer in accepted:
            sft_records.append({"messages": [{"role": "user", "content": problem.question},
                                             {"role": "assistant", "content": answer}], "source": "rejection_sampling"})
        if chosen is not None:
            pairs.append({
                "prompt": tokenizer.decode(prompt), "chosen": tokenizer.decode(chosen), "rejected": tokenizer.decode(rejected),
                "prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
                "source": "rejection_sampling", "question": problem.question, "answer": problem.answer,
            })
    # pass@n against sample accuracy is the headroom best-of-n offers: the gap is what the accepted
    # answers can teach the model when it trains on them.
    summary = {
        "problems": len(problems), "samples_per_problem": n, "temperature": temperature,
        "sample_accuracy": n_correct / max(1, n * len(problems)),  # mean success rate q over problems
        "pass_at_n": 1 - n_all_wrong / max(1, len(problems)),  # share of problems with >= 1 accepted answer
        "all_correct": n_all_right, "all_wrong": n_all_wrong,  # the problems that gave no pair, by cause
        "sft_records": len(sft_records), "pairs": len(pairs), "max_accepted": max_accepted, "judge": judge_by,
    }
    return sft_records, pairs, summary


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; impossible values fail here, naming the flag, before a model is loaded."""
    parser = cli.Parser(description="Best-of-n sampling graded by the oracle -> SFT data and DPO pairs.")
    parser.add_argument("--init", required=True, help="checkpoint folder of the model to sample from (an SFT model)")
    parser.add_argument("--data", default=data.TOY_DATA_DIR, help="data folder with rl.jsonl (problems for this stage)")
    parser.add_argument("--out", default="out/rs", help="output folder: sft.jsonl, pairs.jsonl, summary.json")
    parser.add_argument("--problems", type=cli.at_least(1), default=1500, help="problems to sample on")
    parser.add_argument("--skip", type=cli.at_least(0), default=0, help="start at this problem of rl.jsonl")
    parser.add_argument("--samples", type=cli.at_least(2), default=8,
                        help="answers per problem (the n of best-of-n; at least 2, to choose among and to form pairs)")
    parser.add_argument("--max-accepted", type=cli.at_least(1), default=2,
                        help="distinct correct answers kept per problem as SFT data")
    parser.add_argument("--temperature", type=cli.positive, default=1.0, help="sampling temperature (> 0: answers must differ)")
    parser.add_argument("--top-k", type=cli.at_least(1), default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=cli.between(0.0, 1.0, low_open=True), default=None, help="nucleus sampling threshold, in (0, 1]")
    parser.add_argument("--max-new-tokens", type=cli.at_least(1), default=120, help="tokens per answer")
    parser.add_argument("--judge", choices=tuple(JUDGES), default="answer",
                        help="what must be right for an answer to be accepted: the final answer (the report's "
                        "answer checks) or every step (toyworld.check_steps)")
    parser.add_argument("--seed", type=int, default=1337, help="sampling seed")
    parser.add_argument("--device", default="auto", choices=parallel.DEVICES, help="where to run")
    # argv=None reads sys.argv; tests pass a list. The numeric ranges are checked by the flag types (cli.py).
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    try:
        model, tokenizer = checkpoint.load_model(args.init, parallel.resolve_device(args.device))
        # rl.jsonl, not sft.jsonl: problems kept apart from the SFT conversations, so accepted answers add
        # chat examples SFT did not hold. --skip lets a later round use problems this one did not.
        rl_file = os.path.join(args.data, "rl.jsonl")
        problems = toyworld.read_problems(rl_file)[args.skip : args.skip + args.problems]
        if not problems:
            raise ValueError(f"{rl_file} has no problems after --skip {args.skip}")
        start = time.perf_counter()  # wall time of sampling and grading, recorded in the summary
        sft_records, pairs, summary = rejection_sampling(model, tokenizer, problems, args.samples, args.max_new_tokens,
                                                         args.temperature, args.top_k, args.top_p, args.seed,
                                                         max_accepted=args.max_accepted, judge_by=args.judge)
        # The summary names the model the data came from, so each file can be traced to its round.
        summary.update(init=args.init, seconds=time.perf_counter() - start)
        # Written after all sampling is done: an interrupted run leaves no half file for train.py to read.
        files.write_jsonl(os.path.join(args.out, "sft.jsonl"), sft_records)
        files.write_jsonl(os.path.join(args.out, "pairs.jsonl"), pairs)
        files.write_json(os.path.join(args.out, "summary.json"), summary)
        print(f"rejection sampling: {summary['problems']} problems x {args.samples} samples in {summary['seconds']:.0f}s | "
              f"sample accuracy {100 * summary['sample_accuracy']:.1f}% | pass@{args.samples} {100 * summary['pass_at_n']:.1f}% | "
              f"{summary['sft_records']} accepted answers -> {args.out}/sft.jsonl | {summary['pairs']} pairs -> {args.out}/pairs.jsonl")
    except ValueError as error:
        # Every message names the file or flag to change; a traceback would bury it.
        sys.exit(f"error: {error}")
