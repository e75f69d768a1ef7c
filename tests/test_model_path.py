"""A model path that cannot load is one line naming the key the user typed (model.path, --model, --model2) and
the fix, exit status 2, no traceback: on `golong train` (and --dry-run), `golong eval`, `golong data calibrate`.

Each broken model is a copy of the tiny model with one thing wrong. Validation cases fail before any engine
starts; the load-time cases (an unknown model_type, a corrupt tokenizer.json) pass validation and fail when
transformers loads the tokenizer, which every command does before it starts an engine. Hub ids are checked
against a local HF cache folder (HF_HUB_CACHE) only: nothing here touches the network.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from golong.configlib import ConfigError
from golong.model_check import check_model_path, gist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUB_ID = "golong-test/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def broken_copy(tiny: str, dest: str, remove: tuple[str, ...] = (), write: dict[str, str] | None = None) -> str:
    shutil.copytree(tiny, dest)
    for name in remove:
        os.remove(os.path.join(dest, name))
    for name, text in (write or {}).items():
        with open(os.path.join(dest, name), "w", encoding="utf-8") as f:
            f.write(text)
    return dest


def unknown_model_type(tiny: str) -> str:
    with open(os.path.join(tiny, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    return json.dumps({**config, "model_type": "no_such_architecture"})


def hub_cache(root: str, tiny: str | None, remove: tuple[str, ...] = ()) -> str:
    """An HF hub cache folder (huggingface_hub's layout: models--ORG--NAME/refs/main naming a snapshot) holding
    HUB_ID as a copy of the tiny model (minus `remove`), or empty when `tiny` is None."""
    os.makedirs(root, exist_ok=True)
    if tiny is not None:
        repo = os.path.join(root, "models--" + HUB_ID.replace("/", "--"))
        broken_copy(tiny, os.path.join(repo, "snapshots", COMMIT), remove)
        os.makedirs(os.path.join(repo, "refs"))
        with open(os.path.join(repo, "refs", "main"), "w") as f:
            f.write(COMMIT)
    return root


@pytest.fixture(scope="module")
def models(tiny_model_path, tmp_path_factory) -> dict[str, str]:
    """Model paths by case."""
    root = tmp_path_factory.mktemp("models")
    return {
        "missing": str(root / "nonexistent" / "model"),
        "file": broken_copy(tiny_model_path, str(root / "file"), write={}) + "/config.json",
        "no_config": broken_copy(tiny_model_path, str(root / "no_config"), remove=("config.json",)),
        "no_tokenizer": broken_copy(tiny_model_path, str(root / "no_tokenizer"), remove=("tokenizer.json",)),
        "no_weights": broken_copy(tiny_model_path, str(root / "no_weights"), remove=("model.safetensors",)),
        "config_not_json": broken_copy(tiny_model_path, str(root / "config_not_json"), write={"config.json": "{oops"}),
        "unknown_model_type": broken_copy(tiny_model_path, str(root / "unknown_model_type"),
                                          write={"config.json": unknown_model_type(tiny_model_path)}),
        "corrupt_tokenizer": broken_copy(tiny_model_path, str(root / "corrupt_tokenizer"),
                                         write={"tokenizer.json": "{not json"}),
        "empty_cache": hub_cache(str(root / "empty_cache"), None),
        "full_cache": hub_cache(str(root / "full_cache"), tiny_model_path),
        "partial_cache": hub_cache(str(root / "partial_cache"), tiny_model_path, remove=("tokenizer.json",)),
    }


# case -> (what is passed as the model, extra environment, fragments of the error line after "KEY: ")
VALIDATION = {
    "missing": ("missing", {}, ["does not exist", "Fix: point KEY at an HF model folder"]),
    "file": ("file", {}, ["is a file, not a model folder"]),
    "no_config": ("no_config", {}, ["has no config.json, so it is not an HF model folder"]),
    "no_tokenizer": ("no_tokenizer", {}, ["has no tokenizer files (tokenizer.json", "Fix: copy the tokenizer"]),
    "no_weights": ("no_weights", {}, ["has no weights (*.safetensors"]),
    "config_not_json": ("config_not_json", {}, ["config.json cannot be read as JSON", "restore the model's config.json"]),
    "hub_offline_not_cached": (HUB_ID, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "empty_cache"},
                               [f"'{HUB_ID}' is not a local folder and not in the local HF cache", "HF_HUB_OFFLINE",
                                f"Fix: download it first (`hf download {HUB_ID}`)"]),
    "transformers_offline_not_cached": (HUB_ID, {"TRANSFORMERS_OFFLINE": "1", "HF_HUB_CACHE": "empty_cache"},
                                        ["is not a local folder and not in the local HF cache"]),
    "hub_offline_partial_cache": (HUB_ID, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "partial_cache"},
                                  [f"'{HUB_ID}' (cached at ", "has no tokenizer files"]),
}
LOAD_TIME = {
    "unknown_model_type": ("unknown_model_type", {}, ["transformers cannot load", "ValueError",
                                                      "no_such_architecture", "Fix: repair or re-download the model"]),
    "corrupt_tokenizer": ("corrupt_tokenizer", {}, ["transformers cannot load", "JSONDecodeError",
                                                    "Expecting property name enclosed in double quotes"]),
}


def golong(args: list[str], env: dict[str, str], cwd: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("WORLD_SIZE", "RANK", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")}
    environment.update(PYTHONPATH=REPO, OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "golong", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=environment)


def assert_one_error_line(out: subprocess.CompletedProcess, key: str, fragments: list[str]) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("golong: error: ")]
    assert len(errors) == 1 and out.stderr.strip().endswith(errors[0]), out.stderr[-3000:]
    assert errors[0].startswith(f"golong: error: {key}: "), errors[0]
    for fragment in fragments:
        assert fragment.replace("KEY", key) in errors[0], (fragment, errors[0])


def write_rows(path: str, n: int = 2) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i}", "task": "T1", "context": f"context {i}", "question": f"q{i}?",
                                "answer": f"a{i}"}) + "\n")
    return path


def command(name: str, model: str, tiny: str, tmp) -> tuple[list[str], str]:
    """(the arguments of `name` run on `model`, the key its error must name)."""
    data = write_rows(str(tmp / "rows.jsonl"))
    if name == "train --dry-run":
        return ["train", "recipes/tiny-cpu.yaml", f"model.path={model}", "--dry-run"], "model.path"
    if name == "train":
        return ["train", "recipes/tiny-cpu.yaml", f"model.path={model}", f"data.train_files=[{data}]",
                f"trainer.output_dir={tmp / 'run'}", "logging.plot=false"], "model.path"
    if name == "eval":
        return ["eval", "--model", model, "--data", data, "--out", str(tmp / "report.json")], "--model"
    if name == "data calibrate --model":
        return ["data", "calibrate", "--train", data, "--model", model, "--out", str(tmp / "out.jsonl")], "--model"
    assert name == "data calibrate --model2"
    return ["data", "calibrate", "--train", data, "--model", tiny, "--model2", model,
            "--out", str(tmp / "out.jsonl")], "--model2"


def resolve(case: tuple, models: dict[str, str]) -> tuple[str, dict[str, str], list[str]]:
    model, env, fragments = case
    return models.get(model, model), {k: models.get(v, v) for k, v in env.items()}, fragments


MODEL_COMMANDS = ["train --dry-run", "eval", "data calibrate --model", "data calibrate --model2"]


@pytest.mark.parametrize("name", MODEL_COMMANDS)
@pytest.mark.parametrize("case", VALIDATION)
def test_a_model_that_cannot_load_is_refused_before_anything_starts(case, name, models, tiny_model_path, tmp_path,
                                                                    capsys, monkeypatch):
    """Every case on every command, through the CLI's own entry point in this process (each fails before any
    engine or world starts); the offline environment is what huggingface_hub read from HF_HUB_OFFLINE and
    HF_HUB_CACHE at import. The subprocess tests below show the same from a real `python -m golong`."""
    from huggingface_hub import constants

    from golong.cli import main

    model, env, fragments = resolve(VALIDATION[case], models)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", bool(env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE")))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", env.get("HF_HUB_CACHE", str(tmp_path / "no_cache")))
    monkeypatch.chdir(REPO)
    args, key = command(name, model, tiny_model_path, tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert_one_error_line(subprocess.CompletedProcess(args, 2, "", err), key, fragments)


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_python_m_golong_prints_the_line_without_a_traceback(name, models, tiny_model_path, tmp_path):
    model, env, fragments = resolve(VALIDATION["no_config"], models)
    args, key = command(name, model, tiny_model_path, tmp_path)
    assert_one_error_line(golong(args, env, REPO), key, fragments)


@pytest.mark.parametrize("case", ["hub_offline_not_cached", "transformers_offline_not_cached",
                                  "hub_offline_partial_cache"])
def test_offline_environment_variables_are_read(case, models, tiny_model_path, tmp_path):
    model, env, fragments = resolve(VALIDATION[case], models)
    args, key = command("train --dry-run", model, tiny_model_path, tmp_path)
    assert_one_error_line(golong(args, env, REPO), key, fragments)


# --model2's model is loaded only after stage 1 has generated with --model (a vLLM engine): its load-time
# errors go through the same collect_for_examples -> load_tokenizer as --model's.
@pytest.mark.parametrize("name", ["train", "eval", "data calibrate --model"])
@pytest.mark.parametrize("case", LOAD_TIME)
def test_a_model_that_fails_to_load_is_one_line_too(case, name, models, tiny_model_path, tmp_path):
    model, env, fragments = resolve(LOAD_TIME[case], models)
    args, key = command(name, model, tiny_model_path, tmp_path)
    assert_one_error_line(golong(args, env, REPO), key, fragments)


def test_a_cached_hub_id_passes_offline(models):
    out = golong(["train", "recipes/tiny-cpu.yaml", f"model.path={HUB_ID}", "--dry-run"],
                 {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": models["full_cache"]}, REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"path: {HUB_ID}" in out.stdout


def test_a_hub_id_not_cached_passes_online_and_says_it_will_be_downloaded(models):
    out = golong(["train", "recipes/tiny-cpu.yaml", f"model.path={HUB_ID}", "--dry-run"],
                 {"HF_HUB_CACHE": models["empty_cache"]}, REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (f"model.path: {HUB_ID} is not a local folder and not in the local HF cache: transformers downloads it "
            "from the hub when the run starts") in out.stderr


def test_the_check_in_process(models, tiny_model_path):
    """check_model_path itself (what `golong selftest` calls): the key it is given names the error."""
    check_model_path(tiny_model_path)
    check_model_path(models["no_weights"], "--model", weights=False)  # a tokenizer-only use (data stats)
    with pytest.raises(ConfigError, match=r"^--model2: '.*no_tokenizer' has no tokenizer files"):
        check_model_path(models["no_tokenizer"], "--model2")
    with pytest.raises(ConfigError, match=r"^model\.path: '\./nowhere' does not exist"):
        check_model_path("./nowhere")


def test_gist_is_one_bounded_line():
    assert gist(ValueError("first line.\n\n  second   line.")) == "first line. second line"
    assert len(gist(OSError("x" * 1000))) == 300
