"""`registry.yaml`: the pretraining optimizers of well-known families, each with the public source that states it.

A family whose source does not name the optimizer has ``optimizer: null``: we report it as unknown (with a note)
instead of guessing. Matching by repo id (or `base_model`) is reliable; matching by ``config.json`` ``model_type``
is a last resort and gets a low confidence, because many families share an architecture.

>>> entry = match_repo_id("meta-llama/Llama-2-7b-hf")
>>> entry.family, entry.info().name
('Llama 2', 'adamw')
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from hf_retain.errors import RegistryError
from hf_retain.lineage.card import safe_yaml_load
from hf_retain.lineage.info import OptimizerInfo, canonical_optimizer_name

__all__ = ["RegistryEntry", "load_registry", "match_repo_id", "match_model_type", "RegistryError"]

REPO_ID_CONFIDENCE = 0.7
MODEL_TYPE_CONFIDENCE = 0.3




@dataclass(frozen=True)
class RegistryEntry:
    family: str
    optimizer: str | None
    source: str
    repo_ids: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    hyper: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    variant: str | None = None

    def info(self, *, confidence: float = REPO_ID_CONFIDENCE, how: str = "repo id") -> OptimizerInfo | None:
        """The entry as an `OptimizerInfo`, or None when the source does not state the optimizer."""
        if self.optimizer is None:
            return None
        betas = self.hyper.get("betas")
        return OptimizerInfo(
            name=self.optimizer, betas=tuple(float(b) for b in betas) if betas else None,
            eps=_maybe_float(self.hyper.get("eps")), weight_decay=_maybe_float(self.hyper.get("weight_decay")),
            lr=_maybe_float(self.hyper.get("lr")), schedule=self.hyper.get("schedule"),
            source=f"hf_retain registry ({self.family}, matched by {how})", evidence=self.source,
            confidence=confidence, variant=self.variant or self.optimizer, stage="pretrain",
        )


def _maybe_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


_ALLOWED_KEYS = {"family", "optimizer", "source", "match", "betas", "eps", "weight_decay", "lr", "schedule", "note",
                 "variant"}


def _parse_entry(raw: Any, index: int) -> RegistryEntry:
    if not isinstance(raw, dict):
        raise RegistryError(f"registry entry #{index} must be a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _ALLOWED_KEYS
    if unknown:
        raise RegistryError(f"registry entry #{index} ({raw.get('family')}) has unknown keys {sorted(unknown)}")
    family, source = raw.get("family"), raw.get("source")
    if not isinstance(family, str) or not isinstance(source, str) or not source.strip():
        raise RegistryError(f"registry entry #{index} needs a 'family' and a non-empty 'source' citation")
    optimizer = raw.get("optimizer")
    if optimizer is not None and (not isinstance(optimizer, str) or canonical_optimizer_name(optimizer) != optimizer):
        raise RegistryError(f"registry entry {family!r}: optimizer {optimizer!r} must be a canonical family name")
    match = raw.get("match") or {}
    hyper = {k: raw[k] for k in ("betas", "eps", "weight_decay", "lr", "schedule") if raw.get(k) is not None}
    return RegistryEntry(
        family=family, optimizer=optimizer, source=source.strip(),
        repo_ids=tuple(str(p) for p in match.get("repo_ids", ())),
        model_types=tuple(str(t) for t in match.get("model_types", ())), hyper=hyper,
        note=str(raw.get("note") or ""), variant=raw.get("variant"),
    )


@functools.lru_cache(maxsize=1)
def load_registry() -> tuple[RegistryEntry, ...]:
    """Load and validate the shipped registry.yaml (cached)."""
    text = resources.files("hf_retain.lineage").joinpath("registry.yaml").read_text(encoding="utf-8")
    data = safe_yaml_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("families"), list):
        raise RegistryError("registry.yaml must be a mapping with a 'families' list")
    return tuple(_parse_entry(raw, i) for i, raw in enumerate(data["families"]))


def match_repo_id(repo_id: str) -> RegistryEntry | None:
    """The registry entry whose repo-id patterns match ``repo_id`` (case-insensitive), if any."""
    wanted = repo_id.strip().lower()
    for entry in load_registry():
        if any(fnmatch.fnmatchcase(wanted, pattern.lower()) for pattern in entry.repo_ids):
            return entry
    return None


def match_model_type(model_type: str) -> RegistryEntry | None:
    """Last-resort match on config.json ``model_type`` (only types listed in exactly one entry)."""
    wanted = model_type.strip().lower()
    hits = [e for e in load_registry() if wanted in (t.lower() for t in e.model_types)]
    return hits[0] if len(hits) == 1 else None
