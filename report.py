"""Chapter: the report. What every stage of the toy recipe measured, each effect with a paired test.

Phi-4's report argues stage by stage with ablations (Tables 2-9). This file does the same for the toy
run under out/: it reads what training (log.jsonl) and evaluation (eval.json, eval_long.json,
eval_quiz.json) left in each stage folder and writes out/report.md with figures beside it:

    stages        every stage's training summary and held-out pass@1 (95% Wilson interval), each compared
                  with the stage before it on the same 2,000 test problems
    effects       the recipe's claims, one row each (synthetic vs web data, context extension and its RoPE
                  base, rejection sampling, DPO, PTS vs full-length pairs): the paired difference, its 95%
                  interval (Newcombe), the discordant counts and the exact McNemar p-value (stats.py)
    figures       loss curves of every stage, recall by distance before and after midtraining, and the
                  report's Figure 3 for the toy: p(success) along one solution with the pivots marked

Why paired: the stages answer the same problems, so a problem both get right (or both wrong) says
nothing about which is better; only the discordant ones do. Pairing removes the problems' own
difficulty from the comparison, which is what lets 2,000 problems detect a 3-point change that two
independent samples of 2,000 would leave inside the noise. An effect is claimed only where the
interval excludes 0.

Command:
    python report.py                       # out/report.md and out/*.svg from whatever stages have run
"""

from __future__ import annotations

import os

import cli
import figures
import files
import stats

# The recipe's order (report sections 3-4), so the report reads top to bottom as the model was built;
# each stage is compared with the one it was trained from. Unknown folders go last, by name.
STAGE_ORDER = ("pretrain_web", "pretrain", "midtrain_kept_base", "midtrain", "sft", "rs_sft", "dpo_nll_only", "dpo",
               "sft_dpo", "pts_dpo", "pts_dpo_dpo")
PARENT = {"midtrain": "pretrain", "midtrain_kept_base": "pretrain", "sft": "midtrain", "rs_sft": "sft", "dpo": "rs_sft",
          "dpo_nll_only": "rs_sft", "sft_dpo": "sft", "pts_dpo": "sft", "pts_dpo_dpo": "pts_dpo"}

# The effects the toy recipe is meant to show: (claim, stage A, stage B, measurement, the goal). Each row
# is the paired difference B - A. "test": greedy pass@1 on the test split; "quiz": the knowledge quiz;
# "recall 4x": first-line recall at 4x the pretraining context.
EFFECTS = (
    ("synthetic-heavy vs web-heavy pretraining, reasoning", "pretrain_web", "pretrain", "test", "B ahead"),
    ("web-heavy vs synthetic-heavy pretraining, knowledge quiz", "pretrain", "pretrain_web", "quiz", "B ahead"),
    ("midtraining (RoPE base x25) vs pretrained, recall at 4x", "pretrain", "midtrain", "recall 4x", "B ahead by >= 40 points"),
    ("RoPE base x25 vs the ablation that keeps the base, recall at 4x", "midtrain_kept_base", "midtrain", "recall 4x", "B ahead"),
    ("RS-SFT vs SFT", "sft", "rs_sft", "test", "B ahead"),
    ("DPO (on-policy, + NLL) vs RS-SFT", "rs_sft", "dpo", "test", "B ahead"),
    # The control: the same run without the preference term (dpo.py --preference-weight 0).
    ("DPO vs its NLL term alone, same pairs and steps", "dpo_nll_only", "dpo", "test", "B ahead (the preference adds)"),
    ("PTS-DPO vs full-length DPO, equal steps, from SFT", "sft_dpo", "pts_dpo", "test", "B ahead (report Table 9)"),
)


# ----------------------------------------------------------------------------------------------------
# Reading what the stages left


def stage_folders(root: str) -> list[str]:
    """The stage folders under root (those with a training log), in the recipe's order."""
    found = [d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "log.jsonl"))] if os.path.isdir(root) else []
    return sorted(found, key=lambda d: (STAGE_ORDER.index(d) if d in STAGE_ORDER else len(STAGE_ORDER), d))


def read_optional(path: str) -> dict | None:
    return files.read_json(path) if os.path.exists(path) else None


def item_results(root: str, stage: str, measurement: str) -> list[bool] | None:
    """One result per item for a measurement of a stage, or None when it was not measured."""
    if measurement == "test":
        result = read_optional(os.path.join(root, stage, "eval.json"))
    elif measurement == "quiz":
        result = read_optional(os.path.join(root, stage, "eval_quiz.json"))
    else:  # "recall Nx"
        multiple = int(measurement.split()[1].rstrip("x"))
        long = read_optional(os.path.join(root, stage, "eval_long.json"))
        result = next((e for e in long["retrieval"] if e["multiple"] == multiple), None) if long else None
    if result is None or "results" not in result:
        return None
    return [c == "1" for c in result["results"]]


def percent(fraction: float) -> str:
    """'85.4%'. Every table formats a score from its fraction, so 1,707 of 2,000 reads the same in each (100 * 1707 / 2000
    rounds to 85.3 in float, 100 * (1707 / 2000) to 85.4)."""
    return f"{100 * fraction:.1f}%"


def score_with_interval(result: dict) -> str:
    """An eval.json's score and its 95% interval: '85.4% (83.7-86.8)' for 1,707 of 2,000."""
    low, high = result["ci95"]
    return f"{percent(result['accuracy'])} ({100 * low:.1f}-{100 * high:.1f})"


def share_right(results: list[bool]) -> str:
    """percent() of the items right: the A and B cells of the effects and seeds tables."""
    return percent(sum(results) / len(results))


def paired_cells(first: list[bool], second: list[bool]) -> str:
    """'+4.2 (+2.1 to +6.3), 120/204, p 0.0001' for the paired difference second - first."""
    d = stats.paired_difference(first, second)
    return (f"{100 * d['diff']:+.1f} ({100 * d['lo']:+.1f} to {100 * d['hi']:+.1f}) | {d['b']} / {d['c']} | "
            f"{d['p']:.2g} | {'yes' if is_ahead(d) else 'yes: B behind' if is_shown(d) else 'no'}")


def is_shown(d: dict) -> bool:
    """Whether a paired difference (stats.paired_difference) counts as an effect.

    Only when both agree: the interval excludes 0 and the exact test rejects "no difference" at 5%. On
    thousands of items they always agree; on a handful (a unit test) the score interval can exclude 0
    while the exact test cannot, and then no effect is claimed.
    """
    return d["significant"] and d["p"] < 0.05


def is_ahead(d: dict) -> bool:
    """Whether B is shown ahead of A: every goal of EFFECTS is "B ahead", so a difference shown the
    other way counts against it."""
    return is_shown(d) and d["diff"] > 0


# ----------------------------------------------------------------------------------------------------
# Sections of the report


def stage_table(root: str, stages: list[str]) -> list[str]:
    lines = ["## Stages", "",
             "| stage | from | steps | train loss | held-out loss | wall (s) | test pass@1 (95% CI) | takes / other "
             "| vs its parent: diff, points (95% CI) | b / c | McNemar p | shown |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stage in stages:
        records = files.read_jsonl(os.path.join(root, stage, "log.jsonl"))
        last = records[-1]
        # The latest held-out loss: it is logged only every few steps, so the last record may lack one.
        val = next((r["val_loss"] for r in reversed(records) if "val_loss" in r), None)
        result = read_optional(os.path.join(root, stage, "eval.json"))
        if result:
            accuracy = score_with_interval(result)
            kinds = f"{100 * result['per_kind']['takes']:.0f}% / {100 * result['per_kind']['other']:.0f}%"
        else:
            accuracy, kinds = "not evaluated", "-"
        parent = PARENT.get(stage)
        first, second = item_results(root, parent, "test") if parent else None, item_results(root, stage, "test")
        paired = paired_cells(first, second) if first and second and len(first) == len(second) else "- | - | - | -"
        lines.append(f"| {stage} | {parent or '-'} | {last['step']} | {last['loss']:.4f} | "
                     f"{f'{val:.4f}' if val is not None else '-'} | {last.get('time_s', 0):.0f} | {accuracy} | {kinds} | {paired} |")
    return lines + ["", "Test pass@1: greedy answers to 2,000 held-out problems, decontaminated from all training text by the "
                    "13-gram rule. takes / other: problems with a \"takes\" event (the phrasing the SFT teacher reads the "
                    "wrong way round) and the rest. b / c: problems only the parent / only this stage solves."]


def effects_table(root: str) -> list[str]:
    lines = ["## Effects (paired, on the same items)", "",
             "| effect | A | B | A | B | B - A, points (95% CI) | b / c | McNemar p | shown | goal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for claim, a, b, measurement, goal in EFFECTS:
        first, second = item_results(root, a, measurement), item_results(root, b, measurement)
        if not first or not second or len(first) != len(second):
            lines.append(f"| {claim} | {a} | {b} | - | - | not measured | - | - | - | {goal} |")
            continue
        lines.append(f"| {claim} ({measurement}, n={len(first)}) | {a} | {b} | {share_right(first)} | {share_right(second)} | "
                     f"{paired_cells(first, second)} | {goal} |")
    return lines + ["", "b: items A gets right and B wrong; c: the reverse. The interval is Newcombe's for paired "
                    "proportions; p is the exact McNemar test on b and c. shown: the interval excludes 0 and p < 0.05 ('yes: B "
                    "behind' when the difference goes against the goal)."]


def seed_folders(root: str) -> list[tuple[int, str]]:
    """(seed, folder) of the repeated comparisons (speedrun.sh --seeds N writes ROOT/seedK/; README: pretraining)."""
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        if name.startswith("seed") and name[4:].isdigit() and os.path.isdir(os.path.join(root, name)):
            found.append((int(name[4:]), os.path.join(root, name)))
    return sorted(found)


def seeds_table(root: str) -> list[str]:
    """The effects whose stages were repeated with other seeds: one row per seed, then how many showed it.

    A stage missing from a seed folder (rs_sft, sft: they are not repeated) is read from ROOT: every DPO
    seed starts from the same parent, only the order of the pairs changes. A pretraining seed changes the
    initial weights and the order of the batches.
    """
    repeats = seed_folders(root)
    if not repeats:
        return []
    lines = ["## Seeds (comparisons repeated with other training seeds)", "",
             "| effect | seed | A | B | B - A, points (95% CI) | b / c | McNemar p | shown |", "|---|---|---|---|---|---|---|---|"]
    for claim, a, b, measurement, _ in EFFECTS:
        # A seed counts for an effect when it repeated the later stage B; its A, if not repeated, is the
        # main run's (the shared parent). A repeated A alone is another effect's seed, not this one's.
        runs = [(1, root)] + [(seed, folder) for seed, folder in repeats if os.path.isdir(os.path.join(folder, b))]
        if len(runs) == 1:
            continue  # B was not repeated: no seed of this effect
        diffs, shown = [], 0
        for seed, folder in runs:
            where = lambda stage: folder if os.path.isdir(os.path.join(folder, stage)) else root  # noqa: E731
            first, second = item_results(where(a), a, measurement), item_results(where(b), b, measurement)
            if not first or not second or len(first) != len(second):
                lines.append(f"| {claim} | {seed} | - | - | not measured | - | - | - |")
                continue
            d = stats.paired_difference(first, second)
            diffs.append(d["diff"])
            shown += is_ahead(d)
            lines.append(f"| {claim} | {seed} | {share_right(first)} | {share_right(second)} | "
                         f"{paired_cells(first, second)} |")
        if diffs:
            lines.append(f"| {claim}: mean of {len(diffs)} seeds | | | | {100 * sum(diffs) / len(diffs):+.1f} | | | "
                         f"B ahead in {shown} of {len(diffs)} |")
    return lines + ["", "Seed 1 is the main run (the default --seed 1337 of train.py and dpo.py); seed K is --seed K. "
                    "For DPO the seed changes the order in which it sees its pairs, nothing else; for pretraining, the "
                    "initial weights and the order of the batches. An effect that shows for one seed and not the others "
                    "is the noise of training, not of the test set."]


def long_context_table(root: str, stages: list[str]) -> list[str]:
    rows, first = [], None
    for stage in stages:
        result = read_optional(os.path.join(root, stage, "eval_long.json"))
        if result is None:
            continue
        first = first or result
        cells = [f"{100 * e['accuracy']:.0f}%{'*' if e['extrapolated'] else ''}" for e in result["retrieval"]]
        cells += [f"{bucket['loss']:.3f}" for bucket in result["loss_by_position"]]
        rows.append(f"| {stage} | {result['max_seq_len']} | {result['rope_theta']:g} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    headers = [f"recall {e['multiple']}x ({e['length']})" for e in first["retrieval"]]
    headers += [f"loss {b['start']}-{b['end']}" for b in first["loss_by_position"]]
    return ["## Long context (midtraining: 4x context, RoPE base x25)", "",
            "| stage | context | RoPE base | " + " | ".join(headers) + " |", "|---|---|---|" + "---|" * len(headers), *rows, "",
            f"Recall: the document's first line (\"Key: Mia\") written at its end, greedy; {first['n_docs']} documents per "
            f"length; chance {100 * first['chance']:.1f}%. * = beyond the model's trained context (RoPE tables extended at "
            "its own base). Loss: recall documents of 4x length, mean next-token loss per window of positions."]


def post_training_notes(root: str, stages: list[str]) -> list[str]:
    lines = []
    for name in ("rs", "rs_dpo"):
        s = read_optional(os.path.join(root, name, "summary.json"))
        if s:
            # What the judge read: rejection_sampling.py --judge (JUDGES there)
            judged = "by every step" if s.get("judge") == "steps" else "by the answer"
            lines += [f"- {name}: {s['problems']} problems x {s['samples_per_problem']} samples at T={s['temperature']} "
                      f"from {s.get('init', '?')}, judged {judged}: {percent(s['sample_accuracy'])} of samples correct, pass@"
                      f"{s['samples_per_problem']} {percent(s['pass_at_n'])}, {s['sft_records']} distinct accepted "
                      f"answers, {s['pairs']} correct-vs-incorrect pairs."]
    pts = read_optional(os.path.join(root, "pts", "pairs.summary.json"))
    if pts:
        lines += [f"- pts: {pts.get('questions', '?')} questions searched, {pts.get('pairs', '?')} pairs that part at one token "
                  f"({pts.get('decision_pivots', '?')} at a decision word)."]
    rows = []
    for stage in stages:
        records = files.read_jsonl(os.path.join(root, stage, "log.jsonl"))
        if "margin" in records[-1]:  # only DPO logs a margin
            tail = records[-10:]  # a mean over the last steps: one batch's numbers jump
            mean = lambda key: sum(r.get(key, 0.0) for r in tail) / len(tail)  # noqa: E731
            rows.append(f"| {stage} | {records[-1]['step']} | {mean('loss'):.3f} | {mean('nll'):.3f} | "
                        f"{mean('chosen_reward'):.2f} | {mean('rejected_reward'):.2f} | {mean('accuracy'):.2f} |")
    if rows:
        lines += ["", "| DPO stage | steps | DPO loss | chosen NLL | chosen reward | rejected reward | preference accuracy |",
                  "|---|---|---|---|---|---|---|", *rows, "", "Means of the last 10 steps. A chosen reward that "
                  "stays near or above 0 means the policy did not learn to avoid the answers it should prefer."]
    return ["## Post-training data", "", *lines] if lines else []


# ----------------------------------------------------------------------------------------------------
# Figures


def write_figures(root: str, stages: list[str]) -> list[str]:
    """The SVG figures beside the report -> the markdown lines that show them."""
    shown = []

    def save(name: str, svg: str, caption: str):
        files.atomic_write_text(os.path.join(root, name), svg)
        shown.extend([f"![{caption}]({name})", ""])

    groups = {"pretraining": ("pretrain", "pretrain_web"), "midtraining": ("midtrain", "midtrain_kept_base"),
              "SFT": ("sft", "rs_sft"), "DPO": ("dpo", "dpo_nll_only", "sft_dpo", "pts_dpo", "pts_dpo_dpo")}
    for title, names in groups.items():
        series = {}
        for stage in names:
            if stage in stages:
                records = files.read_jsonl(os.path.join(root, stage, "log.jsonl"))
                series[stage] = [(r["step"], r["loss"]) for r in records]
        if series:
            save(f"loss_{title.lower()}.svg", figures.line_chart(series, f"{title}: training loss", "step", "loss"),
                 f"{title} loss curves")
    recall = {}
    for stage in stages:
        long = read_optional(os.path.join(root, stage, "eval_long.json"))
        if long:
            recall[stage] = [(e["length"], 100 * e["accuracy"]) for e in long["retrieval"]]
    if recall:
        save("recall.svg", figures.line_chart(recall, "First-line recall by distance", "document length (tokens)",
                                              "recall (%)", y_range=(0, 100), log_x=True), "recall by distance")
    curve = read_optional(os.path.join(root, "pts", "figure3.json"))
    if curve:
        points = [(i, p) for i, p in enumerate(curve["p_success"])]
        markers = [(m["index"], m["p_after"], m["token"].strip()) for m in curve["pivots"]]
        save("figure3.svg", figures.line_chart({"p(success | prefix)": points}, "Figure 3 for the toy: p(success) "
                                               "along one SFT solution", "answer token", "p(success)", y_range=(0, 1),
                                               markers=markers), "p(success) along one solution")
        shown[-2:-1] = [shown[-2], "", "Solution: " + " ".join(f"`{t}`" for t in curve["tokens"]).replace("\n", "\\n")]
    return ["## Figures", "", *shown] if shown else []


def write_report(root: str, path: str) -> None:
    """out/report.md (and its figures) from every stage folder under root."""
    stages = stage_folders(root)
    lines = ["# Report of the toy Phi-4 recipe", "", *effects_table(root), "", *stage_table(root, stages), ""]
    for section in (seeds_table(root), long_context_table(root, stages), post_training_notes(root, stages), sweep_table(root),
                    write_figures(root, stages)):
        lines += section + ([""] if section else [])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # `or "."`: a bare file name has no folder
    files.atomic_write_text(path, "\n".join(lines))


def best_on_dev(sweep: str) -> str:
    """The sweep's best run by dev pass@1: its folder name without the "lr" prefix (ties: the first by name).

    The sweep folder holds one run per value (lr3e-05/, lr0.0001/, ...), each with an eval_dev.json.
    """
    runs = sorted(d for d in os.listdir(sweep) if os.path.exists(os.path.join(sweep, d, "eval_dev.json"))) if os.path.isdir(sweep) else []
    if not runs:
        raise ValueError(f"{sweep} holds no run with an eval_dev.json; run `python eval.py --split dev` on each first")
    accuracy = {d: files.read_json(os.path.join(sweep, d, "eval_dev.json"))["accuracy"] for d in runs}
    best = max(runs, key=lambda d: accuracy[d])  # max keeps the first of equal values
    return best.removeprefix("lr")


def sweep_table(root: str) -> list[str]:
    """The DPO learning-rate sweep on the dev split, when speedrun.sh ran one (out/dpo_sweep)."""
    sweep = os.path.join(root, "dpo_sweep")
    if not os.path.isdir(sweep):
        return []
    rows = []
    for d in sorted(os.listdir(sweep)):
        result = read_optional(os.path.join(sweep, d, "eval_dev.json"))
        if result:
            rows.append(f"| {d.removeprefix('lr')} | {score_with_interval(result)} |")
    return ["## DPO learning rate, chosen on the dev split", "", "| learning rate | dev pass@1 (95% CI) |", "|---|---|",
            *rows, "", f"out/dpo is the run with the best dev score (lr {best_on_dev(sweep)}); the test split never chose anything."]


if __name__ == "__main__":
    parser = cli.Parser(description="Write the report of every stage under --root (markdown and SVG figures).")
    parser.add_argument("--root", default="out", help="folder holding the stage folders (default out)")
    parser.add_argument("--out", default=None, help="the report file (default ROOT/report.md)")
    parser.add_argument("--best-dev", default=None, metavar="SWEEP",
                        help="print the value of the run in folder SWEEP (one lrVALUE/ per run) with the best dev score, and exit")
    args = parser.parse_args()

    def main():
        if args.best_dev:
            print(best_on_dev(args.best_dev))
            return
        path = args.out or os.path.join(args.root, "report.md")
        write_report(args.root, path)
        print(open(path).read())

    cli.main(main)
