"""Pass-rate calibration (section 3.4): labels from fixed pass rates, and one run with the tiny model."""
import json
import os
import subprocess
import sys

import pytest

from golong.data.calibrate import annotate, difficulty, pass_rate, stage1_label, stage2_label, summarize
from golong.data.cli import main as data_main

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_stage_labels_at_every_pass_rate_of_g8():
    rates = [k / 8 for k in range(9)]
    assert [stage1_label(p) for p in rates] == ["unsolved"] * 4 + ["medium"] * 3 + ["easy"] * 2
    assert [stage2_label(p) for p in rates] == ["discarded"] * 2 + ["hard"] * 5 + ["medium"] * 2
    # exact boundaries: 0.75 is medium (stage 1) / hard (stage 2), 0.5 medium, 0.25 hard
    assert (stage1_label(0.75), stage1_label(0.5), stage1_label(0.4999)) == ("medium", "medium", "unsolved")
    assert (stage2_label(0.75), stage2_label(0.25), stage2_label(0.2499)) == ("hard", "hard", "discarded")


def test_final_label_uses_stage2_only_for_unsolved_rows():
    assert difficulty(1.0, None) == "easy" and difficulty(0.875, 0.0) == "easy"  # stage 2 ignored when solved
    assert difficulty(0.625, None) == "medium"
    assert difficulty(0.25, None) == "unsolved"  # no second model
    assert [difficulty(0.0, p2) for p2 in (1.0, 0.5, 0.125)] == ["medium", "hard", "discarded"]


def test_pass_rate_thresholds_continuous_rewards():
    scores = [1.0, 0.4, 0.5, 0.0, 0.75, 0.2, 0.9, 0.49]
    assert pass_rate(scores, 0.5) == 4 / 8
    assert pass_rate(scores, 1.0) == 1 / 8
    assert pass_rate(scores, 0.2) == 7 / 8
    with pytest.raises(ValueError, match="no scored responses"):
        pass_rate([], 0.5)


def test_ratio_line():
    labels = ["easy"] * 3 + ["medium"] * 6 + ["hard"] + ["discarded"] * 2
    summary = summarize(labels)
    assert summary.counts == {"easy": 3, "medium": 6, "hard": 1, "unsolved": 0, "discarded": 2}
    assert summary.ratio_line() == ("easy:medium:hard = 3:6:1 (= 3.0:6.0:1.0 out of 10; the paper's was about 3:6:1)"
                                    "; discarded 2")


def test_annotate_native_top_level_released_in_extra_info():
    assert annotate({"id": 1}, False, "hard", 0.25, 0.5) == \
        {"id": 1, "difficulty": "hard", "pass_rate": 0.25, "pass_rate_stage2": 0.5}
    record = {"prompt": [], "extra_info": {"index": 3}}
    assert annotate(record, True, "easy", 1.0, None) == \
        {"prompt": [], "extra_info": {"index": 3, "difficulty": "easy", "pass_rate": 1.0}}


def released(index, data_source, gold, mode=None, content="Read the text and answer. [Answer]"):
    truth = {"golden_label": gold} if data_source == "EM" else {"doc_ids": gold, "summary": "English"}
    return {"data_source": data_source, "prompt": [{"role": "user", "content": content}],
            "reward_model": {"ground_truth": truth}, "extra_info": {"index": index, "reward_mode": mode}}


ROWS = [released(0, "EM", "Fredville"),
        released(1, "longbench_pro", ["e"], "SubEM", content="长上下文：请回答。"),
        released(2, "longbench_pro", ["a"], "SubEM"),
        released(3, "longbench_pro", ["zzqxj"], "SubEM")]
CALIBRATE_ARGS = ["--g", "4", "--max-tokens", "8", "--pass-threshold", "1e-9", "--gpu-memory-utilization", "0.3"]


def write_rows(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    return train


def check_labelled(out, rows=ROWS) -> list[dict]:
    """The written rows: discarded ones left out, labels consistent with the pass rates written in."""
    labelled = [json.loads(line) for line in open(out, encoding="utf-8")]
    kept = {r["extra_info"]["index"] for r in labelled}
    assert kept <= {1, 2}  # rows 0 and 3 can earn nothing: discarded, left out
    for row in labelled:
        info = row["extra_info"]
        assert row["prompt"] == rows[info["index"]]["prompt"]  # the record itself is unchanged
        assert info["pass_rate"] in {0.0, 0.25, 0.5, 0.75, 1.0}
        assert ("pass_rate_stage2" in info) == (stage1_label(info["pass_rate"]) == "unsolved")
        assert info["difficulty"] == difficulty(info["pass_rate"], info.get("pass_rate_stage2"))
    return labelled


@pytest.mark.slow
@pytest.mark.multiproc
def test_calibrate_with_a_second_model_under_torchrun(tiny_model_path, tmp_path):
    """Two ranks, two models: stage 2's engine starts after stage 1's, whose shutdown destroyed the
    process group (vLLM's external_launcher teardown); the collectives of stage 2 need the world back."""
    from conftest import REPO, free_port
    from golong.tiny_model import TinyModelSpec, build_tiny_model

    model2 = build_tiny_model(str(tmp_path / "model2"), spec=TinyModelSpec(seed=1))
    train, out = write_rows(tmp_path), tmp_path / "labelled.jsonl"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", "-m", "golong", "data", "calibrate", "--train", str(train),
                           "--model", tiny_model_path, "--model2", model2, *CALIBRATE_ARGS, "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    labelled = check_labelled(out)
    assert f"discarded {4 - len(labelled)}" in proc.stdout


@pytest.mark.slow
def test_calibrate_released_records_with_the_tiny_model(tiny_model_path, tmp_path, capsys):
    """Both stages with real engines. The random tiny model never writes `Fredville` or `zzqxj`, so
    those rows fail both stages and are discarded; with `--pass-threshold 1e-9` any partial SubEM
    credit passes, so rows whose gold is one common letter get real, varied pass rates."""
    train, out = write_rows(tmp_path), tmp_path / "labelled.jsonl"
    code = data_main(["calibrate", "--train", str(train), "--model", tiny_model_path, "--model2", tiny_model_path,
                      *CALIBRATE_ARGS, "--out", str(out)])
    assert code == 0
    labelled = check_labelled(out)
    counts = {label: sum(r["extra_info"]["difficulty"] == label for r in labelled) for label in ("easy", "medium", "hard")}
    printed = capsys.readouterr().out
    assert f"easy:medium:hard = {counts['easy']}:{counts['medium']}:{counts['hard']} " in printed
    assert f"discarded {4 - len(labelled)}" in printed
