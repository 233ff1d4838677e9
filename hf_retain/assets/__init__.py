"""The embedded tiny model: a byte-level Llama (~0.9M parameters, 4 layers, d=128) defined by files shipped here.

It is the same shape as the model behind the project's shared forgetting measurements, so the demo, the tests and
the benchmarks run offline and their numbers compare. The tokenizer maps every UTF-8 byte to one token (ids 3-258)
after three special tokens (`<pad>`=0, `<s>`=1, `</s>`=2), so any text round-trips.

Example:
    >>> from hf_retain.assets import build_tiny_model, load_tiny_tokenizer
    >>> model, tok = build_tiny_model(seed=0), load_tiny_tokenizer()
    >>> tok.decode(tok("héllo")["input_ids"])
    'héllo'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_LLAMA_DIR = Path(__file__).resolve().parent / "tiny_llama"

__all__ = ["TINY_LLAMA_DIR", "tiny_llama_config", "load_tiny_tokenizer", "build_tiny_model"]


def tiny_llama_config(**overrides: Any):
    """The shipped `LlamaConfig`, with any field overridden (e.g. ``num_hidden_layers=2`` for faster tests)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(TINY_LLAMA_DIR)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise AttributeError(f"LlamaConfig has no field {key!r}; see {TINY_LLAMA_DIR / 'config.json'}.")
        setattr(config, key, value)
    return config


def load_tiny_tokenizer():
    """The byte-level tokenizer (a `PreTrainedTokenizerFast`; no network, no sentencepiece)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_LLAMA_DIR)


def build_tiny_model(seed: int = 0, **overrides: Any):
    """A freshly initialised tiny `LlamaForCausalLM`, deterministic for a seed."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_llama_config(**overrides)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)
