"""Resolve and load the causal LM and tokenizer a run names: a hub id, a local folder, or a ``builtin:`` name.

``builtin:`` names come from a registry of `ModelResolver` s. ``builtin:tiny-llama-init`` (the shipped, untrained
tiny Llama) is registered here; packages register more through the ``hf_retain.models`` entry-point group, which is
how ``builtin:tiny-llama`` (the tiny model pretrained on the built-in general corpus, built once per machine) is
provided by `hf_retain.pretrain` without this module importing the code that trains it. A resolver may name a
tokenizer apart from its model, so loading the tokenizer never builds the model.

Example:
    >>> from hf_retain.models import load_tokenizer, resolve_model
    >>> load_tokenizer("builtin:tiny-llama").vocab_size          # shipped files: nothing is built
    259
    >>> resolve_model("HuggingFaceTB/SmolLM2-135M")              # a hub id passes through unchanged
    'HuggingFaceTB/SmolLM2-135M'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from hf_retain.assets import TINY_LLAMA_DIR, build_tiny_model
from hf_retain.constants import BUILTIN_PREFIX
from hf_retain.errors import ModelLoadError
from hf_retain.hub import hub_error, looks_like_path, offline

__all__ = ["BUILTIN_PREFIX", "ModelResolver", "register_model_resolver", "builtin_models", "resolve_model",
           "resolve_tokenizer", "load_model", "load_tokenizer"]

ENTRY_POINT_GROUP = "hf_retain.models"


@dataclass(frozen=True)
class ModelResolver:
    """How a ``builtin:<name>`` model is found.

    ``path`` returns a folder `from_pretrained` loads (it may build and cache one, once per machine); ``tokenizer``
    is the tokenizer's folder when it needs no build; ``build`` makes the model in memory instead of loading one.
    """

    name: str
    path: Callable[[], str | Path]
    description: str = ""
    tokenizer: str | Path | None = None
    build: Callable[[], Any] | None = None


_RESOLVERS: dict[str, ModelResolver] = {}
_entry_points_loaded = False


def register_model_resolver(resolver: ModelResolver) -> ModelResolver:
    """Make ``builtin:<resolver.name>`` loadable in this process; returns the resolver."""
    if not isinstance(resolver, ModelResolver):
        raise TypeError(f"register_model_resolver wants a ModelResolver, got {type(resolver).__name__}.")
    _RESOLVERS[resolver.name] = resolver
    return resolver


register_model_resolver(ModelResolver(
    "tiny-llama-init", path=lambda: TINY_LLAMA_DIR, tokenizer=TINY_LLAMA_DIR, build=lambda: build_tiny_model(seed=0),
    description="the shipped tiny byte-level Llama, freshly initialised (seed 0)",
))


def builtin_models() -> dict[str, ModelResolver]:
    """Every registered ``builtin:`` model, those of installed entry points included."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for point in entry_points(group=ENTRY_POINT_GROUP):
            if point.name not in _RESOLVERS:
                register_model_resolver(point.load())
    return dict(_RESOLVERS)


def _builtin(name: str) -> ModelResolver:
    which = name[len(BUILTIN_PREFIX):]
    if which in _RESOLVERS:  # no need to import the entry points' packages
        return _RESOLVERS[which]
    known = builtin_models()
    if which not in known:
        raise ModelLoadError(f"Unknown builtin model {name!r}; builtin models are "
                             f"{sorted(BUILTIN_PREFIX + m for m in known)}.")
    return known[which]


def resolve_model(name: str) -> str:
    """A loadable model path (or hub id) for ``name``; a ``builtin:`` name may build and cache its model."""
    if name.startswith(BUILTIN_PREFIX):
        return str(_builtin(name).path())
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"Model path {name} exists but has no config.json, so it is not a saved model. Point "
                                 "model_name_or_path at a folder written by save_pretrained (or a hub id).")
        return str(local)
    if looks_like_path(name):
        raise ModelLoadError(f"Model path {name} does not exist. Check the path, or use a hub id like "
                             "'HuggingFaceTB/SmolLM2-135M' or 'builtin:tiny-llama'.")
    return name


def resolve_tokenizer(name: str) -> str:
    """Where the tokenizer of ``name`` loads from; for a builtin with its own tokenizer folder, nothing is built."""
    if name.startswith(BUILTIN_PREFIX):
        resolver = _builtin(name)
        if resolver.tokenizer is not None:
            return str(resolver.tokenizer)
    return resolve_model(name)


def load_tokenizer(name: str):
    """The tokenizer ``name`` names, with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    path = resolve_tokenizer(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline())
    except OSError as err:
        raise hub_error("tokenizer", name, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_args: Any):
    """Load (or, for a builtin with ``build``, make) the causal LM ``model_args.model_name_or_path`` names.

    ``model_args`` is TRL's `ModelConfig` (``model_revision``, ``dtype``, ``attn_implementation`` are honoured).
    """
    import torch
    from transformers import AutoModelForCausalLM

    name = model_args.model_name_or_path
    if not name:
        raise ModelLoadError("No model_name_or_path is set. Add e.g. `model_name_or_path: builtin:tiny-llama`.")
    build = _builtin(name).build if name.startswith(BUILTIN_PREFIX) else None
    if build is not None:
        return build()
    path = resolve_model(name)
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(
            path, revision=model_args.model_revision, dtype=dtype, attn_implementation=model_args.attn_implementation,
            local_files_only=offline(),
        )
    except OSError as err:
        raise hub_error("model", name, err) from err
