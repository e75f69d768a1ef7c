"""The config loader: defaults, overrides, type errors, nested sections, unknown keys, the CLI's --dry-run."""
import subprocess
import sys

import pytest
import yaml

from golong.config import Config, ConfigError, load_config
from golong.configlib import parse_override, reference_markdown, to_dict

RECIPES = ["tiny-cpu", "qwen3-4b-grpo", "qwen3-4b-tmn-reweight", "qwen3-30b-a3b-grpo", "qwen3-30b-a3b-tmn-reweight"]
BASE = ["model.path=some/model"]


def test_defaults_follow_table_12():
    cfg = load_config(None, BASE)
    assert cfg.trainer.lr == 2e-6 and cfg.trainer.warmup_steps == 5 and cfg.trainer.weight_decay == 0.1
    assert cfg.trainer.grad_clip == 1.0 and cfg.algorithm.ppo_epochs == 1
    assert (cfg.algorithm.loss.clip_ratio_low, cfg.algorithm.loss.clip_ratio_high) == (0.2, 0.28)
    assert cfg.algorithm.loss.dual_clip_c == 3.0
    assert (cfg.algorithm.icepop.low, cfg.algorithm.icepop.high, cfg.algorithm.icepop.veto) == (0.5, 5.0, 1e-4)
    assert cfg.rollout.n == 16 and cfg.rollout.max_response_length == 16384
    assert cfg.data.prompts_per_step == 128 and cfg.data.max_prompt_length == 163840
    assert cfg.max_model_len == 163840 + 16384


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_config(None, BASE + ["trainer.total_steps=3", "trainer.lr=2e-6", "data.shuffle=false",
                                    "data.train_files=[a.jsonl, b.parquet]", "rollout.temperature=1"])
    assert cfg.trainer.total_steps == 3
    assert cfg.trainer.lr == 2e-6 and isinstance(cfg.trainer.lr, float)  # YAML reads 2e-6 as a string
    assert cfg.data.shuffle is False
    assert cfg.data.train_files == ["a.jsonl", "b.parquet"]
    assert cfg.rollout.temperature == 1.0 and isinstance(cfg.rollout.temperature, float)


def test_nested_sections_and_free_form_params():
    cfg = load_config(None, BASE + ["algorithm.advantage.name=tmn_reweight", "algorithm.advantage.params.alpha=0.5"])
    assert cfg.algorithm.advantage.name == "tmn_reweight"
    assert cfg.algorithm.advantage.params == {"alpha": 0.5}


def test_command_line_overrides_win_over_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: m}\ntrainer: {total_steps: 7, output_dir: out}\n")
    cfg = load_config(str(recipe), ["trainer.total_steps=3"])
    assert cfg.trainer.total_steps == 3 and cfg.trainer.output_dir == "out"


def test_unknown_key_on_command_line_suggests_the_closest():
    with pytest.raises(ConfigError) as e:
        load_config(None, BASE + ["trainer.totl_steps=3"])
    msg = str(e.value)
    assert "trainer.totl_steps" in msg and "command line" in msg and "trainer.total_steps" in msg


def test_unknown_key_in_recipe_names_the_file(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model: {path: m}\nrollout: {temprature: 0.7}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(recipe))
    msg = str(e.value)
    assert "rollout.temprature" in msg and "typo.yaml" in msg and "temperature" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match=r"trainr.*did you mean `trainer`"):
        load_config(None, BASE + ["trainr.lr=1"])


@pytest.mark.parametrize("override, fragment", [
    ("trainer.total_steps=abc", "expected an integer"),
    ("trainer.total_steps=1.5", "expected an integer"),
    ("trainer.lr=fast", "expected a number"),
    ("data.shuffle=maybe", "expected true or false"),
    ("data.train_files=a.jsonl", "expected a list"),
    ("trainer=3", "expected a mapping"),
    ("algorithm.loss.agg_mode=token_mean", "did you mean 'token-mean'"),
])
def test_type_errors_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, BASE + [override])
    assert override.split("=")[0] in str(e.value) and fragment in str(e.value)


@pytest.mark.parametrize("override, fragment", [
    ("trainer.keep_last=0", "trainer.keep_last"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("algorithm.loss.dual_clip_c=0.5", "algorithm.loss.dual_clip_c"),
    ("model.path=", "model.path"),
])
def test_invalid_values_name_field_reason_and_fix(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, BASE + [override])
    assert fragment in str(e.value) and "Fix:" in str(e.value)


def test_bad_override_syntax_and_bad_recipe(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("trainer.total_steps")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(evil))


def test_resolved_config_round_trips():
    cfg = load_config(None, BASE + ["algorithm.advantage.name=tmn_reweight", "algorithm.advantage.params.alpha=0.8"])
    again = load_config(None, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                               for k, v in _flatten(to_dict(cfg))])
    assert again == cfg


def test_every_field_is_documented():
    table = reference_markdown(Config)
    rows = [r for r in table.splitlines()[2:]]
    assert len(rows) > 50
    assert all(not r.rstrip().endswith("|  |") for r in rows), [r for r in rows if r.rstrip().endswith("|  |")]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_pass_dry_run(recipe, tiny_model_path):
    # tiny-cpu's model is written by `golong prepare-demo`; the Qwen hub ids pass online (downloaded at start)
    model = [f"model.path={tiny_model_path}"] if recipe == "tiny-cpu" else []
    out = subprocess.run([sys.executable, "-m", "golong", "train", f"recipes/{recipe}.yaml", *model, "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["trainer"]["output_dir"]


def test_dry_run_rejects_a_typo_with_a_suggestion():
    out = subprocess.run([sys.executable, "-m", "golong", "train", "recipes/tiny-cpu.yaml", "trainer.totl_steps=3",
                          "--dry-run"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "totl_steps" in out.stderr and "total_steps" in out.stderr


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "golong", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("train", "eval", "data", "plot", "export"):
        assert command in out.stdout


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in ("params", "deepspeed"):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def test_readme_config_reference_is_current():
    readme = open("README.md", encoding="utf-8").read()
    assert reference_markdown(Config) in readme, "regenerate the README table with `golong config-reference`"


def test_top_p_below_one_with_icepop_is_refused():
    with pytest.raises(ConfigError, match=r"rollout.top_p.*Fix:"):
        load_config(None, BASE + ["rollout.top_p=0.95"])
    assert load_config(None, BASE + ["rollout.top_p=0.95", "algorithm.icepop.mode=off"]).rollout.top_p == 0.95


def test_yaml_booleans_map_back_to_off_for_choice_fields(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: m}\nalgorithm: {icepop: {mode: off}}\n")  # YAML 1.1 reads `off` as false
    assert load_config(str(recipe)).algorithm.icepop.mode == "off"
    with pytest.raises(ConfigError, match="not one of"):
        load_config(None, BASE + ["data.on_bad_row=true"])
