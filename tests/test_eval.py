"""`golong eval`: the report's metrics from fixed scores, response decoding, and a run with the tiny model."""
import json
import os

import pytest
from transformers import AutoTokenizer

from golong.data.config import DataConfig
from golong.data.loader import load_examples
from golong.data.schema import Example
from golong.eval import eval_report, format_table, main as eval_main
from golong.rollout.collect import response_text
from golong.rewards import compute_score

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def example(task: str, i: int) -> Example:
    return Example(id=f"{task}-{i}", task=task, reward_type="em", ground_truth="x", messages=[], source="t",
                   file="f", row=i)


def test_report_from_fixed_scores():
    examples = [example("T1", 0), example("T1", 1), example("T3", 2), example("T3", 3)]
    scores = [[1.0, 0.0, 1.0, 1.0],  # T1: mean 0.75, passes 3/4
              [0.0, 0.0, 0.0, 0.0],  # T1: 0, 0/4
              [0.6, 0.4, 0.2, 1.0],  # T3: mean 0.55, passes (>= 0.5) 2/4
              []]                    # T3: not generated (prompt too long): left out of every metric
    report = eval_report(examples, scores, pass_threshold=0.5)
    t1, t3, overall, macro = report["tasks"]["T1"], report["tasks"]["T3"], report["overall"], report["macro"]
    assert (t1["rows"], t1["responses"]) == (2, 8) and (t3["rows"], t3["responses"]) == (1, 4)
    assert t1["mean_score"] == pytest.approx(3 / 8) and t1["avg@G"] == pytest.approx((0.75 + 0) / 2)
    assert t1["pass@1"] == pytest.approx((3 / 4 + 0) / 2)
    assert t3["mean_score"] == pytest.approx(0.55) and t3["pass@1"] == pytest.approx(0.5)
    assert overall["rows"] == 3 and overall["mean_score"] == pytest.approx((3 + 2.2) / 12)
    assert overall["avg@G"] == pytest.approx((0.75 + 0 + 0.55) / 3)
    assert overall["pass@1"] == pytest.approx((0.75 + 0 + 0.5) / 3)
    assert macro["avg@G"] == pytest.approx((0.375 + 0.55) / 2) and macro["pass@1"] == pytest.approx((0.375 + 0.5) / 2)
    table = format_table(report)
    assert table.splitlines()[1].split() == ["T1", "2", "8", "0.3750", "0.3750", "0.3750"]
    assert table.splitlines()[-1].split() == ["macro", "0.4625", "0.4625", "0.4375"]


def test_rows_with_unequal_group_sizes_separate_mean_score_from_avg_at_g():
    examples = [example("T1", 0), example("T1", 1)]
    report = eval_report(examples, [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0]], pass_threshold=1.0)
    assert report["tasks"]["T1"]["mean_score"] == pytest.approx(4 / 6)
    assert report["tasks"]["T1"]["avg@G"] == pytest.approx(0.5)


def test_response_text_drops_the_stop_token_and_keeps_think_tags(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    ids = tok("</think>\n[Answer] red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert response_text(tok, ids, {tok.eos_token_id}) == "</think>\n[Answer] red"
    assert compute_score("em", response_text(tok, ids, {tok.eos_token_id}), "red") == 1.0
    assert response_text(tok, ids[:-1], {tok.eos_token_id}) == "</think>\n[Answer] red"  # truncated: nothing to drop


@pytest.mark.slow
def test_eval_report_with_the_tiny_model(tiny_model_path, tmp_path, capsys):
    """Native rows (CJK among them) and released records: G responses per row are generated, scored,
    and reported; the report equals the one recomputed from the written samples."""
    files = [os.path.join(FIXTURES, "native.jsonl"), os.path.join(FIXTURES, "released.jsonl")]
    out, samples = tmp_path / "report.json", tmp_path / "samples.jsonl"
    code = eval_main(["--model", tiny_model_path, "--data", *files, "--g", "3", "--max-tokens", "8",
                      "--gpu-memory-utilization", "0.3", "--out", str(out), "--samples-out", str(samples)])
    assert code == 0
    report = json.loads(out.read_text())
    examples = load_examples(files, DataConfig()).examples
    rows = [json.loads(line) for line in open(samples, encoding="utf-8")]
    assert [(r["id"], r["task"]) for r in rows] == [(e.id, e.task) for e in examples]
    assert all(len(r["responses"]) == 3 for r in rows)
    for r, e in zip(rows, examples):  # each score is the reward of the response that was written
        assert r["scores"] == [compute_score(e.reward_type, text, e.ground_truth) for text in r["responses"]]
    expected = eval_report(examples, [r["scores"] for r in rows], pass_threshold=0.5)
    assert {k: report[k] for k in ("tasks", "overall", "macro")} == json.loads(json.dumps(expected))
    assert report["overall"]["rows"] == 17 and report["overall"]["responses"] == 51
    assert sorted(report["tasks"]) == [f"T{i}" for i in range(1, 10)]
    assert (report["g"], report["temperature"], report["top_p"], report["max_tokens"]) == (3, 0.6, 0.95, 8)
    assert report["rows_skipped_too_long"] == 0
    printed = capsys.readouterr().out.splitlines()  # vLLM logs to stdout too
    header = next(i for i, line in enumerate(printed) if line.startswith("task "))
    assert printed[header].split() == ["task", "rows", "responses", "mean_score", "avg@G", "pass@1"]
    assert [line.split()[0] for line in printed[header + 1:header + 12]] == [f"T{i}" for i in range(1, 10)] + [
        "overall", "macro"]


@pytest.mark.slow
@pytest.mark.multiproc
def test_eval_under_torchrun_shards_rows_and_gathers_every_score(tiny_model_path, tmp_path):
    """Two ranks, each its own vLLM engine over half of the rows; rank 0 writes the whole report."""
    import subprocess
    import sys

    from conftest import REPO, free_port

    files = [os.path.join(FIXTURES, "native.jsonl"), os.path.join(FIXTURES, "released.jsonl")]
    out, samples = tmp_path / "report.json", tmp_path / "samples.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         "-m", "golong", "eval", "--model", tiny_model_path, "--data", *files, "--g", "2", "--max-tokens", "6",
         "--gpu-memory-utilization", "0.3", "--out", str(out), "--samples-out", str(samples)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-6000:]
    report = json.loads(out.read_text())
    assert report["overall"]["rows"] == 17 and report["overall"]["responses"] == 34
    examples = load_examples(files, DataConfig()).examples
    rows = [json.loads(line) for line in open(samples, encoding="utf-8")]
    assert [r["id"] for r in rows] == [e.id for e in examples]  # every row, in file order, from both ranks
    for r, e in zip(rows, examples):
        assert len(r["responses"]) == 2
        assert r["scores"] == [compute_score(e.reward_type, text, e.ground_truth) for text in r["responses"]]
