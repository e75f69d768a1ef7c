"""`golong data validate` and `golong data stats` on small files (CJK text, released records)."""
import json
import os

from transformers import AutoTokenizer

from golong.data.cli import main as data_main
from golong.data.config import DataConfig
from golong.data.loader import load_examples
from golong.data.stats import BIN_LABELS, approx_tokens, compute_stats, length_bin, prompt_text

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NATIVE = os.path.join(FIXTURES, "native.jsonl")
RELEASED = os.path.join(FIXTURES, "released.jsonl")


def test_validate_good_files(capsys):
    assert data_main(["validate", NATIVE, RELEASED]) == 0
    out = capsys.readouterr().out
    assert f"{NATIVE} (native), {RELEASED} (released): 17 valid rows, 0 bad rows" in out
    assert "tasks: T1 2, T2 2, T3 2, T4 2, T5 2, T6 1, T7 2, T8 2, T9 2" in out


def test_validate_reports_every_bad_row_and_fails(tmp_path, capsys):
    good = json.loads(open(NATIVE, encoding="utf-8").readline())
    lines = [good, {**good, "task": "T11"}, {**good, "task": "T7", "question": "问题？"},
             {k: v for k, v in good.items() if k != "context"}]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    assert data_main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}: row 2: field `task`: unknown task 'T11'; valid tasks: T1, T2, T3, T4, T5, T6, T7, T8, T9",
                      f"error: {path}: row 3: field `answer`: a `ndcg` answer must be list, got str",
                      f"error: {path}: row 4: field `context`: missing"]
    assert "1 valid rows, 3 bad rows" in captured.out


def test_validate_missing_file(tmp_path, capsys):
    assert data_main(["validate", str(tmp_path / "nope.jsonl")]) == 2  # a user error: one line, exit 2
    assert "file not found" in capsys.readouterr().err


def test_length_bins_and_approximate_tokens():
    assert [length_bin(n) for n in (0, 1023, 1024, 4095, 4096, 262143, 262144, 10**7)] == [0, 0, 1, 1, 2, 7, 8, 8]
    assert len(BIN_LABELS) == 9
    assert approx_tokens("Hello, world! 长上下文 test") == 2 + 4 + 1  # "Hello," "world!" + 4 CJK + "test"


def test_stats_counts_lengths_and_plot(tmp_path, capsys):
    png = tmp_path / "stats.png"
    assert data_main(["stats", NATIVE, RELEASED, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("17 rows; prompt lengths in approx. tokens")
    assert "rows per reward type: accuracy 2, em 2, f1 2, iou 2, math_verify 2, ndcg 2, pairwise 2, rouge_l 2, subem 1" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    examples = load_examples([NATIVE, RELEASED], DataConfig()).examples
    stats = compute_stats(examples, [approx_tokens(prompt_text(e)) for e in examples], "approx. tokens")
    assert stats.rows_per_task == {"T1": 2, "T2": 2, "T3": 2, "T4": 2, "T5": 2, "T6": 1, "T7": 2, "T8": 2, "T9": 2}
    assert stats.bin_counts["T6"] == [1, 0, 0, 0, 0, 0, 0, 0, 0]  # short fixtures: all under 1K
    t9 = [approx_tokens(prompt_text(e)) for e in examples if e.task == "T9"]
    assert stats.length_by_task["T9"] == {"min": min(t9), "median": sum(t9) / 2, "mean": sum(t9) / 2, "max": max(t9)}


def test_stats_in_model_tokens(tiny_model_path, tmp_path, capsys):
    png = tmp_path / "stats.png"
    assert data_main(["stats", NATIVE, "--model", tiny_model_path, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    example = load_examples([NATIVE], DataConfig()).examples[8]  # T9, Chinese: one row
    n = len(tok(prompt_text(example), add_special_tokens=False)["input_ids"])
    t9_line = next(line for line in out.splitlines() if line.startswith("T9 "))
    assert t9_line.split() == ["T9", "1", "11.1%", str(n), str(n), str(n), str(n)]
    assert "prompt lengths in tokens" in out and png.exists()
