"""The console: known-harmless third-party warnings go to the log file only, anything else still shows."""
import logging
import warnings

import pytest

from golong.console import setup_console


@pytest.fixture
def restore_logging():
    names = ("golong", "vllm", "DeepSpeed", "py.warnings")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate, logging.getLogger(n).level)
             for n in names}
    with warnings.catch_warnings():
        yield
    logging.captureWarnings(False)
    for n, (handlers, propagate, level) in saved.items():
        log = logging.getLogger(n)
        for h in log.handlers:
            h.close()
        log.handlers[:], log.propagate = handlers, propagate
        log.setLevel(level)


def test_known_warnings_go_to_the_log_file_and_others_to_the_console(tmp_path, capsys, restore_logging):
    log_file = setup_console(str(tmp_path / "logs"), rank=0)
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").warning(
        "%s: Failed to load weights", "RotaryEmbedding")
    logging.getLogger("vllm.v1.worker.cpu_worker").warning("something new went wrong")
    warnings.warn("`torch.distributed.reduce_op` is deprecated, please use ReduceOp", FutureWarning)
    warnings.warn("an unknown warning", UserWarning)
    logging.getLogger("golong").info("step line")
    err = capsys.readouterr().err
    assert "Failed to load weights" not in err and "reduce_op" not in err
    assert "something new went wrong" in err and "an unknown warning" in err and "[golong] step line" in err
    text = open(log_file, encoding="utf-8").read()
    for line in ("RotaryEmbedding: Failed to load weights", "reduce_op", "something new went wrong", "step line"):
        assert line in text


def test_other_ranks_print_only_warnings_and_verbose_keeps_no_file(tmp_path, capsys, restore_logging, monkeypatch):
    setup_console(str(tmp_path / "logs"), rank=1)
    logging.getLogger("golong").info("rank 1 info")
    logging.getLogger("golong").warning("rank 1 warning")
    err = capsys.readouterr().err
    assert "rank 1 info" not in err and "[golong rank 1] rank 1 warning" in err
    monkeypatch.setenv("GOLONG_VERBOSE", "1")
    assert setup_console(str(tmp_path / "logs2"), rank=0) is None and not (tmp_path / "logs2").exists()
