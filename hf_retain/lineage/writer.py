"""Write a run's optimizer lineage into a model card's YAML metadata (``hf_retain_lineage``), keeping the card.

The block is what `parse_model_card` reads first, so `read_pretraining_optimizer` on our output finds exactly the
optimizer (and hyperparameters) the run used, and a later fine-tune of it can be checked against it.

>>> import tempfile, pathlib
>>> card = pathlib.Path(tempfile.mkdtemp()) / "README.md"
>>> _ = card.write_text("---\\nlicense: mit\\n---\\n# My model\\nNotes.\\n")
>>> write_lineage(card, {"optimizer": {"name": "adamw", "lr": 0.001, "betas": [0.9, 0.999]}})
>>> from hf_retain.lineage import parse_model_card
>>> info = parse_model_card(card.read_text())
>>> info.name, info.lr, "# My model" in card.read_text()
('adamw', 0.001, True)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from hf_retain.lineage.card import LINEAGE_KEY, MAX_CARD_CHARS, split_front_matter

__all__ = ["write_lineage", "LINEAGE_KEY", "yaml_safe"]


def yaml_safe(value: Any, depth: int = 0) -> Any:
    """Turn tuples, numpy/torch scalars, enums and paths into plain YAML types (drop what cannot be written)."""
    if depth > 8:
        return None
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):
        try:
            return yaml_safe(value.item(), depth + 1)
        except (RuntimeError, ValueError, TypeError):
            return None
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), (str, int, float)):
        return value.value  # enums such as SchedulerType
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): yaml_safe(v, depth + 1) for k, v in value.items() if yaml_safe(v, depth + 1) is not None}
    if isinstance(value, (list, tuple, set)):
        return [yaml_safe(v, depth + 1) for v in value]
    return str(value)


def write_lineage(card_path: str | os.PathLike, lineage: dict[str, Any], *, base_model: str | None = None) -> None:
    """Set ``hf_retain_lineage`` in the card's metadata (creating the card if needed) and save it.

    Everything else in the card (other metadata, the markdown body) is kept. ``base_model`` is added to the metadata
    when the card has none, so the chain can be followed later.
    """
    from huggingface_hub import ModelCard

    path = Path(card_path)
    if not isinstance(lineage, dict) or not isinstance(lineage.get("optimizer"), dict):
        raise ValueError("lineage must be a mapping with an 'optimizer' mapping (at least {'name': ...}).")
    text = ""
    if path.is_file():
        with open(path, "rb") as handle:
            text = handle.read(MAX_CARD_CHARS * 4).decode("utf-8", errors="replace")
    meta, body = split_front_matter(text)
    if text and not meta and text.lstrip().startswith("---"):
        body = text  # unreadable metadata: keep the original text as the body rather than lose it
    # build from our own alias-free parse of the metadata rather than letting ModelCard re-parse hostile YAML
    card = ModelCard("---\n{}\n---\n" + body.lstrip("\n"))
    for key, value in meta.items():
        card.data[str(key)] = value
    card.data[LINEAGE_KEY] = yaml_safe(lineage)
    if base_model and not card.data.get("base_model") and not os.path.isabs(base_model):
        card.data["base_model"] = base_model
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(str(path))
