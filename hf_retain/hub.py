"""Offline mode and the one message for "this model or dataset could not be fetched from the Hub".

Models and datasets both come from the Hugging Face Hub, so their loaders share how they tell a user what to do
when a name is neither local nor downloadable: run online once, point to a local folder, or unset HF_HUB_OFFLINE.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hf_retain.errors import ModelLoadError, RecipeError

__all__ = ["offline", "hub_error", "looks_like_path"]


def looks_like_path(name: str, suffixes: Iterable[str] = ()) -> bool:
    """Whether ``name`` is meant as a local path, not a hub id ('org/name'): it starts like a path, has more than one
    '/', or ends in one of ``suffixes`` (e.g. data-file suffixes). A path that does not exist is then reported as a
    missing file, not looked up on the Hub."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1
            or Path(name).suffix.lower() in {s.lower() for s in suffixes})


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads in this process."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_error(kind: str, name: str, err: Exception, cls: type[RecipeError] = ModelLoadError) -> RecipeError:
    """The error to raise when the ``kind`` (model, tokenizer, dataset) ``name`` could not be loaded."""
    if offline():
        return cls(
            f"The {kind} {name!r} is not a local path and is not in the Hugging Face cache, and HF_HUB_OFFLINE=1 "
            f"forbids downloading it. Download it once with network access (`hf download {name}`), or point to a "
            f"local folder, or unset HF_HUB_OFFLINE. ({type(err).__name__}: {err})"
        )
    return cls(f"Could not load the {kind} {name!r}: {type(err).__name__}: {err}. Check the name on the Hugging Face "
               "Hub, your network and your token.")
