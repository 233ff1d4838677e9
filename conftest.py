"""Test-wide environment, for the tests in tests/ and the doctests in hf_retain/ alike: offline, quiet, CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# DeepSpeed prints an accelerator-detection warning to stdout on import unless told; doctests compare stdout.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
