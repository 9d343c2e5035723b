"""report.py: the stage table pairs each stage with its parent on the same items, the effects table
reports the paired difference with its discordant counts and McNemar p-value, the long-context table
and the figures are written, all from hand-made stage folders whose answers are known."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import report
import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_stage(root, name, results=None, quiz=None, recall=None, losses=(1.0, 0.5), **extra):
    """A stage folder: a two-step log, and eval files whose per-item results are the given strings."""
    folder = root / name
    folder.mkdir(parents=True)
    records = [{"step": i + 1, "loss": loss, "tok_s": 100.0, "time_s": float(i + 1), **extra} for i, loss in enumerate(losses)]
    records[-1]["val_loss"] = 0.75
    (folder / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    if results is not None:
        n, k = len(results), results.count("1")
        (folder / "eval.json").write_text(json.dumps({
            "accuracy": k / n, "n": n, "correct": k, "ci95": list(stats.wilson_interval(k, n)),
            "per_kind": {"takes": 0.25, "other": 0.5}, "results": results}))
    if quiz is not None:
        (folder / "eval_quiz.json").write_text(json.dumps({"accuracy": quiz.count("1") / len(quiz), "results": quiz}))
    if recall is not None:
        entries = [{"length": 256 * m, "multiple": m, "extrapolated": m > 1, "accuracy": r.count("1") / len(r), "results": r}
                   for m, r in zip((1, 2, 4), recall)]
        (folder / "eval_long.json").write_text(json.dumps({
            "max_seq_len": 1024, "rope_theta": 250000.0, "n_docs": 4, "chance": 1 / 90, "retrieval": entries,
            "loss_by_position": [{"start": s, "end": s + 256, "loss": 0.5} for s in (0, 256, 512, 768)]}))
    return folder


def rows(path, first_cell):
    return [line for line in path.read_text().splitlines() if line.startswith(f"| {first_cell}")]


def test_each_stage_is_paired_with_its_parent_on_the_same_problems(tmp_path):
    # Parent right on 1, 2, 3, 4; child right on 3, 4, 5, 6, 7, 8: b = 2 (only the parent), c = 4 (only the child).
    make_stage(tmp_path, "sft", results="1111000000")
    make_stage(tmp_path, "rs_sft", results="0011111100")
    report.write_report(str(tmp_path), str(tmp_path / "report.md"))
    (row,) = rows(tmp_path / "report.md", "rs_sft |")
    assert "| sft | 2 | 0.5000 | 0.7500 | 2 | 60.0% " in row
    assert "| +20.0 (" in row and "| 2 / 4 | 0.69 | no |" in row  # p = 2 * P(X <= 2), X ~ Bin(6, 1/2) = 0.6875
    (parent,) = rows(tmp_path / "report.md", "sft |")
    assert "| - | - | - | - |" in parent  # no parent to pair with


def test_the_effects_table_reports_the_paired_difference_and_marks_an_interval_that_excludes_zero(tmp_path):
    n = 400
    web = "1" * 100 + "0" * 300
    synthetic = "1" * 100 + "1" * 60 + "0" * 240  # 60 more problems solved, none lost: b = 0, c = 60
    make_stage(tmp_path, "pretrain_web", results=web, quiz="1111")
    make_stage(tmp_path, "pretrain", results=synthetic, quiz="0011")
    report.write_report(str(tmp_path), str(tmp_path / "report.md"))
    text = (tmp_path / "report.md").read_text()
    (line,) = [l for l in text.splitlines() if l.startswith("| synthetic-heavy vs web-heavy pretraining, reasoning")]
    expected = stats.paired_difference([c == "1" for c in web], [c == "1" for c in synthetic])
    assert f"n={n}" in line and "| 25.0% | 40.0% | +15.0 " in line and "| 0 / 60 |" in line
    assert f"({100 * expected['lo']:+.1f} to {100 * expected['hi']:+.1f})" in line and line.endswith("| yes | B ahead |")
    (quiz,) = [l for l in text.splitlines() if l.startswith("| web-heavy vs synthetic-heavy pretraining, knowledge quiz")]
    assert "| 50.0% | 100.0% | +50.0 " in quiz and "| 0 / 2 | 0.5 | no |" in quiz
    assert "| RS-SFT vs SFT | sft | rs_sft | - | - | not measured |" in text


def test_a_score_reads_the_same_in_the_effects_seeds_and_stage_tables(tmp_path):
    # 1,707 of 2,000 is 85.35%, the tie that float rounding sends one way or the other by the order of operations.
    make_stage(tmp_path, "sft", results="1" * 1000 + "0" * 1000)
    make_stage(tmp_path, "sft_dpo", results="1" * 1707 + "0" * 293)
    make_stage(tmp_path, "pts_dpo", results="1" * 1800 + "0" * 200)
    make_stage(tmp_path / "seed2", "pts_dpo", results="1" * 1800 + "0" * 200)
    report.write_report(str(tmp_path), str(tmp_path / "report.md"))
    text = (tmp_path / "report.md").read_text()
    (effect,) = [line for line in text.splitlines() if line.startswith("| PTS-DPO vs full-length DPO, equal steps, from SFT (")]
    seeds = [line for line in text.splitlines() if line.startswith("| PTS-DPO vs full-length DPO, equal steps, from SFT | ")]
    (stage,) = rows(tmp_path / "report.md", "sft_dpo |")
    assert "| 85.4% | 90.0% |" in effect and len(seeds) == 2 and all("| 85.4% | 90.0% |" in line for line in seeds)
    assert "| 85.4% (83.7-86.8) |" in stage  # and its 95% Wilson interval, to one decimal as every interval


def test_recall_at_4x_is_paired_document_by_document(tmp_path):
    make_stage(tmp_path, "pretrain", results="10", recall=("1100", "1000", "0000"))
    make_stage(tmp_path, "midtrain", results="10", recall=("1111", "1110", "1101"))
    make_stage(tmp_path, "midtrain_kept_base", results="10", recall=("1111", "0000", "0100"))
    report.write_report(str(tmp_path), str(tmp_path / "report.md"))
    text = (tmp_path / "report.md").read_text()
    (line,) = [l for l in text.splitlines() if l.startswith("| midtraining (RoPE base x25) vs pretrained, recall at 4x")]
    assert "| 0.0% | 75.0% | +75.0 " in line and "| 0 / 3 | 0.25 | no |" in line
    (line,) = [l for l in text.splitlines() if l.startswith("| RoPE base x25 vs the ablation that keeps the base, recall at 4x")]
    assert "| 25.0% | 75.0% | +50.0 " in line and "| 0 / 2 |" in line
    assert "| midtrain | 1024 | 250000 | 100% | 75%* | 75%* | 0.500 |" in text


def test_the_figures_are_valid_svg_and_linked_from_the_report(tmp_path):
    make_stage(tmp_path, "pretrain", results="10", recall=("1100", "1000", "0000"))
    make_stage(tmp_path, "dpo", results="11", losses=(0.69, 0.6, 0.5), margin=0.1, chosen_reward=0.0,
               rejected_reward=-0.1, accuracy=0.5, nll=0.3)
    pts = tmp_path / "pts"
    pts.mkdir()
    (pts / "figure3.json").write_text(json.dumps({
        "question": "q", "tokens": ["A", " gets", " 3"], "p_success": [0.5, 0.5, 0.9, 0.9],
        "pivots": [{"index": 2, "p_after": 0.9, "token": " gets"}]}))
    report.write_report(str(tmp_path), str(tmp_path / "report.md"))
    text = (tmp_path / "report.md").read_text()
    for name in ("loss_pretraining.svg", "loss_dpo.svg", "recall.svg", "figure3.svg"):
        assert f"({name})" in text
        ET.parse(tmp_path / name)  # well-formed XML
    assert "gets" in (tmp_path / "figure3.svg").read_text()
    (dpo,) = rows(tmp_path / "report.md", "dpo | 3")
    assert "| 0.300 | 0.00 | -0.10 | 0.50 |" in dpo


def test_report_py_has_help_and_writes_the_report_of_an_empty_folder(tmp_path):
    assert subprocess.run([sys.executable, "report.py", "--help"], cwd=ROOT, capture_output=True).returncode == 0
    run = subprocess.run([sys.executable, "report.py", "--root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "# Report of the toy Phi-4 recipe" in (tmp_path / "report.md").read_text()


def test_the_best_dev_run_of_a_sweep_is_picked_by_dev_accuracy_alone(tmp_path):
    sweep = tmp_path / "dpo_sweep"
    for name, dev, test in (("lr3e-05", 0.40, 0.90), ("lr0.0001", 0.55, 0.10), ("lr0.0003", 0.55, 0.50)):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "eval_dev.json").write_text(json.dumps({"accuracy": dev, "ci95": [dev - 0.03, dev + 0.03]}))
        (sweep / name / "eval.json").write_text(json.dumps({"accuracy": test}))  # never read: the test split chooses nothing
    assert report.best_on_dev(str(sweep)) == "0.0001"  # the tie goes to the first by name
    run = subprocess.run([sys.executable, "report.py", "--best-dev", str(sweep)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "0.0001"
    empty = subprocess.run([sys.executable, "report.py", "--best-dev", str(tmp_path / "none")], cwd=ROOT,
                           capture_output=True, text=True)
    assert empty.returncode == 1 and empty.stderr.startswith("error:") and "eval_dev.json" in empty.stderr


def test_each_seed_of_a_repeated_comparison_is_paired_against_its_own_run_and_the_shown_seeds_are_counted(tmp_path):
    # Seed 1 (the main run): DPO solves 60 more of 400 than RS-SFT. Seed 2: the same RS-SFT (not repeated),
    # a DPO that solves 2 more: not shown. The PTS comparison was not repeated and gets no rows.
    base = "1" * 100 + "0" * 300
    make_stage(tmp_path, "rs_sft", results=base)
    make_stage(tmp_path, "dpo", results="1" * 160 + "0" * 240)
    make_stage(tmp_path / "seed2", "dpo", results="1" * 102 + "0" * 298)
    report.write_report(str(tmp_path), str(tmp_path / "report.md"))
    seed_rows = rows(tmp_path / "report.md", "DPO (on-policy, + NLL) vs RS-SFT |")
    assert len(seed_rows) == 2
    assert "| 1 | 25.0% | 40.0% | +15.0 (" in seed_rows[0] and seed_rows[0].endswith("| 0 / 60 | 1.7e-18 | yes |")  # p = 2 * 2^-60
    assert "| 2 | 25.0% | 25.5% | +0.5 (" in seed_rows[1] and seed_rows[1].endswith("| 0 / 2 | 0.5 | no |")
    (summary,) = rows(tmp_path / "report.md", "DPO (on-policy, + NLL) vs RS-SFT: mean of 2 seeds")
    assert "| +7.8 |" in summary and summary.endswith("| B ahead in 1 of 2 |")
    assert not rows(tmp_path / "report.md", "PTS-DPO vs full-length DPO, equal steps, from SFT | 1 |")


def test_a_seed_that_repeated_only_pretraining_pairs_its_two_arms_and_not_the_main_runs_midtraining(tmp_path):
    make_stage(tmp_path, "pretrain", results="1" * 50 + "0" * 50, recall="0" * 10)
    make_stage(tmp_path, "pretrain_web", results="1" * 20 + "0" * 80)
    make_stage(tmp_path, "midtrain", recall="1" * 10)
    make_stage(tmp_path / "seed2", "pretrain", results="1" * 90 + "0" * 10)
    make_stage(tmp_path / "seed2", "pretrain_web", results="1" * 30 + "0" * 70)
    report.write_report(str(tmp_path), str(tmp_path / "report.md"))
    (seed2,) = rows(tmp_path / "report.md", "synthetic-heavy vs web-heavy pretraining, reasoning | 2 |")
    assert "| 30.0% | 90.0% | +60.0 (" in seed2
    assert not rows(tmp_path / "report.md", "midtraining (RoPE base x25) vs pretrained, recall at 4x | 2 |")


def test_a_difference_shown_in_the_wrong_direction_says_so_and_does_not_count_as_the_effect(tmp_path):
    make_stage(tmp_path, "pretrain_web", results="1" * 60 + "0" * 40)
    make_stage(tmp_path, "pretrain", results="1" * 20 + "0" * 80)  # web ahead: the goal says synthetic
    make_stage(tmp_path / "seed2", "pretrain_web", results="1" * 20 + "0" * 80)
    make_stage(tmp_path / "seed2", "pretrain", results="1" * 60 + "0" * 40)
    report.write_report(str(tmp_path), str(tmp_path / "report.md"))
    first, second = rows(tmp_path / "report.md", "synthetic-heavy vs web-heavy pretraining, reasoning | ")
    assert first.endswith("| yes: B behind |") and second.endswith("| yes |")
    (summary,) = rows(tmp_path / "report.md", "synthetic-heavy vs web-heavy pretraining, reasoning: mean of 2 seeds")
    assert summary.endswith("| B ahead in 1 of 2 |")


def test_the_post_training_notes_quote_the_sampling_summaries_and_the_dpo_logs_last_ten_steps(tmp_path):
    for name, judge in (("rs", "steps"), ("rs_dpo", "answer")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({
            "problems": 3000, "samples_per_problem": 8, "temperature": 0.8, "init": "out/sft", "judge": judge,
            "sample_accuracy": 0.5, "pass_at_n": 0.9, "sft_records": 100, "pairs": 50}))
    (tmp_path / "pts").mkdir()
    (tmp_path / "pts" / "pairs.summary.json").write_text(json.dumps({"questions": 600, "pairs": 213, "decision_pivots": 40}))
    # Losses 0.0, 0.1, ..., 1.1: the last ten (0.2 to 1.1) average 0.65; the first two are left out.
    make_stage(tmp_path, "dpo", losses=[i / 10 for i in range(12)], nll=1.0, chosen_reward=0.5, rejected_reward=-0.5,
               accuracy=1.0, margin=1.0)
    make_stage(tmp_path, "sft")  # no margin in its log: not a DPO stage
    lines = report.post_training_notes(str(tmp_path), ["sft", "dpo"])
    assert ("- rs: 3000 problems x 8 samples at T=0.8 from out/sft, judged by every step: 50.0% of samples correct, "
            "pass@8 90.0%, 100 distinct accepted answers, 50 correct-vs-incorrect pairs.") in lines
    assert any(line.startswith("- rs_dpo: ") and "judged by the answer" in line for line in lines)
    assert "- pts: 600 questions searched, 213 pairs that part at one token (40 at a decision word)." in lines
    assert [line for line in lines if line.startswith("| ") and "stage" not in line] == [
        "| dpo | 12 | 0.650 | 1.000 | 0.50 | -0.50 | 1.00 |"]


def test_the_sweep_table_shows_each_learning_rate_with_its_dev_score_and_interval(tmp_path):
    assert report.sweep_table(str(tmp_path)) == []  # no sweep was run
    for name, correct in (("lr3e-05", 400), ("lr0.0001", 450)):
        (tmp_path / "dpo_sweep" / name).mkdir(parents=True)
        (tmp_path / "dpo_sweep" / name / "eval_dev.json").write_text(json.dumps({
            "accuracy": correct / 1000, "n": 1000, "correct": correct, "ci95": list(stats.wilson_interval(correct, 1000))}))
    table = report.sweep_table(str(tmp_path))
    assert [line for line in table if line.startswith("| ") and "rate" not in line] == [
        "| 0.0001 | 45.0% (41.9-48.1) |", "| 3e-05 | 40.0% (37.0-43.1) |"]
    assert table[-1].startswith("out/dpo is the run with the best dev score (lr 0.0001)")
