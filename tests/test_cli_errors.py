"""The CLI's one error path: a user's mistake is one line naming the fix and exit status 2, on every command."""
import pytest

from golong.cli import main


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("golong: error: ")
    return err[0]


def test_train_with_an_unknown_key(capsys):
    assert main(["train", "recipes/tiny-cpu.yaml", "trainer.total_stpes=3"]) == 2
    assert "did you mean `trainer.total_steps`" in one_error_line(capsys)


def test_train_with_the_old_dynamic_sampling_flag(capsys):
    assert main(["train", "recipes/tiny-cpu.yaml", "algorithm.dynamic_sampling=true", "--dry-run"]) == 2
    assert "algorithm.dynamic_sampling" in one_error_line(capsys)


def test_dynamic_sampling_bounds_are_validated(capsys):
    assert main(["train", "recipes/tiny-cpu.yaml", "algorithm.dynamic_sampling.max_rounds=0", "--dry-run"]) == 2
    line = one_error_line(capsys)
    assert "max_rounds" in line and "Fix:" in line


def test_export_of_a_folder_without_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "Fix: pass a run folder" in one_error_line(capsys)


def test_eval_and_data_commands_with_a_missing_file(tmp_path, capsys):
    missing = str(tmp_path / "nope.jsonl")
    assert main(["eval", "--model", str(tmp_path), "--data", missing]) == 2
    assert "file not found" in one_error_line(capsys)
    assert main(["data", "stats", missing]) == 2
    assert "file not found" in one_error_line(capsys)


def test_a_bug_keeps_its_traceback(monkeypatch):
    import golong.data.cli as data_cli

    def broken(args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(data_cli, "cmd_stats", broken)
    with pytest.raises(KeyError):
        main(["data", "stats", "x.jsonl"])
