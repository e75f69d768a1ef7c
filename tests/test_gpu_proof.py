"""bench/gpu_proof.py prepared on CPU: `--tiny` runs every section with tiny shapes and writes real figures,
and the trainer path it drives imports without vLLM (absent on the GPU machine)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "gpu_proof.py")


def clean_env() -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def test_trainer_path_imports_without_vllm_or_flash_attn():
    # sys.modules[name] = None: `import name` raises ModuleNotFoundError and importlib.util.find_spec(name)
    # returns None, as on a machine where the package is not installed.
    code = ("import sys\n"
            "for name in ('vllm', 'flash_attn'): sys.modules[name] = None\n"
            "import golong.trainer.engine, golong.trainer.loss, golong.trainer.batch, golong.config\n"
            "import bench.gpu_proof as proof\n"
            "proof.section_logprobs, proof.section_attention, proof.section_train_step, proof.section_long_seq\n"
            "print('imported', sorted(m for m, v in sys.modules.items() if m.startswith('vllm') and v is not None))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=clean_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "imported []" in out.stdout


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
def test_tiny_run_writes_every_sections_figures(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", str(out), "--budget", "1500",
                           "--budget-scale", "6"], capture_output=True, text=True, timeout=1600, cwd=REPO,
                          env=clean_env())
    report = json.loads((out / "gpu_proof.json").read_text())
    sections = report["sections"]
    failed = {n: s.get("error") or s["status"] for n, s in sections.items() if s["status"].get("returncode") != 0}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:], proc.stderr[-3000:])
    assert report["versions"]["torch"] and report["versions"]["device"] == "cpu"

    lp = sections["logprobs"]
    assert [r["tokens"] for r in lp["chunked"]] == [256, 1024]
    for r in lp["chunked"] + [lp["baseline"]["chunked"], lp["baseline"]["naive"]]:
        assert r["forward_s"] > 0 and r["backward_s"] > 0 and finite(r["peak_extra_bytes"])
    # the chunked path equals the naive log-softmax on the same inputs (fp32 on CPU)
    assert lp["baseline"]["max_abs_diff_logprobs"] < 1e-4 and lp["baseline"]["max_abs_diff_grad_weight"] < 1e-4

    att = sections["attention"]
    assert att["setup"]["sequences"] == 5 and att["setup"]["row_tokens"] == 240
    assert att["per_sequence_packed"]["seconds"] > 0 and att["separate_sdpa"]["seconds"] > 0
    assert att["per_sequence_packed"]["max_abs_diff_vs_separate"] < 1e-4  # packing changes nothing
    assert "needs CUDA" in att["torch_varlen_packed"]["skipped"]
    once = att["prompt_once"]  # one prompt + 4 responses computed once vs replicated per response
    assert once["row_tokens"] == 48 + 4 * 6 and once["replicated_row_tokens"] == 4 * (48 + 6)
    assert once["max_abs_diff_vs_replicated"] < 1e-4 and once["seconds"] > 0

    grad = sections["prompt_once_grad"]["result"]  # prompt-once unit vs replicated rows: same log-probs, gradients
    assert grad["parameters_compared"] == 2 * 11 + 2 and grad["unit_row_tokens"] == 40 + 3 * 5
    assert grad["max_abs_diff_logprobs"] < 1e-5 and grad["max_rel_grad_diff"] < 1e-4

    train = sections["train_step"]
    assert train["setup"]["parameters"] > 0 and train["setup"]["zero_stage"] == 3 and train["setup"]["share_prompt"]
    assert [s["tokens"] for s in train["steps"]] == [256, 512]
    for s in train["steps"]:
        assert s["tokens_per_s"] > 0 and 0 < s["mfu"] < 1 and s["peak_memory_gib"] > 0
        assert s["mfu"] == pytest.approx(6 * train["setup"]["parameters"] * s["tokens"] / s["seconds"] / 989e12,
                                         rel=1e-2, abs=1e-4)
        assert finite(s["grad_norm"]) and s["grad_norm"] > 0

    once = train["prompt_once_step"]  # one group as one unit vs replicated per response
    assert once["once"]["tokens"] == 64 + 4 * 16 and once["replicated"]["tokens"] == 4 * (64 + 16)
    assert once["once"]["loss"] == pytest.approx(once["replicated"]["loss"], rel=1e-4)

    long = sections["long_seq"]
    assert [r["tokens"] for r in long["lengths"]] == [256, 512, 1024]
    assert all(r["fits"] and r["peak_memory_gib"] > 0 and r["seconds"] > 0 for r in long["lengths"])
    assert long["longest_trained_tokens"] == 1024

    text = (out / "gpu_proof.txt").read_text()
    for name in ("logprobs", "attention", "prompt_once_grad", "train_step", "long_seq"):
        assert f"[{name}] ok" in text


def test_a_failing_section_leaves_the_others_figures(tmp_path):
    out = tmp_path / "out"
    # a time box too short for `attention` to import torch (killed) while `logprobs` runs normally
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", str(out), "--sections", "logprobs,attention",
                           "--budget", "600", "--budget-scale", "5", "--time-box", "attention=0.5"],
                          capture_output=True, text=True, timeout=900, cwd=REPO, env=clean_env())
    report = json.loads((out / "gpu_proof.json").read_text())
    assert proc.returncode == 1
    assert report["sections"]["attention"]["status"]["timed_out"] is True
    logprobs = report["sections"]["logprobs"]
    assert logprobs["status"]["returncode"] == 0 and len(logprobs["chunked"]) == 2
    text = (out / "gpu_proof.txt").read_text()
    assert "[attention] timed out" in text and "[logprobs] ok" in text
