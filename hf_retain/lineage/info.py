"""`OptimizerInfo`: which optimizer trained a model, with its hyperparameters and the evidence found.

Families are `hf_retain.optim.policy`'s (`canonical_optimizer_name`, `same_family`, `KNOWN_FAMILIES`), re-exported
here because the readers and writers of this package speak in them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hf_retain.optim.policy import KNOWN_FAMILIES, canonical_optimizer_name, same_family

__all__ = ["OptimizerInfo", "canonical_optimizer_name", "same_family", "KNOWN_FAMILIES"]


@dataclass(frozen=True)
class OptimizerInfo:
    """Which optimizer trained a model, with the hyperparameters and the evidence we found.

    ``name`` is the canonical family (`canonical_optimizer_name`); ``variant`` keeps the name as written
    (``paged_adamw_8bit``, ``AdamWeightDecay``); ``source`` says where it was found, ``evidence`` quotes the span or
    names the file and key; ``chain`` lists the models walked (the model asked about first).

    >>> info = OptimizerInfo(name="adamw", betas=(0.9, 0.95), source="registry", confidence=0.7)
    >>> info.name, info.betas
    ('adamw', (0.9, 0.95))
    """

    name: str
    betas: tuple[float, ...] | None = None
    eps: float | None = None
    weight_decay: float | None = None
    lr: float | None = None
    schedule: str | None = None
    source: str = ""
    evidence: str = ""
    confidence: float = 0.0
    chain: list[str] = field(default_factory=list)
    variant: str | None = None
    stage: str | None = None

    def __hash__(self) -> int:
        return hash((self.name, self.betas, self.eps, self.weight_decay, self.lr, self.schedule, self.source,
                     self.evidence, self.confidence, tuple(self.chain), self.variant, self.stage))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict (tuples become lists)."""
        out = asdict(self)
        out["betas"] = list(self.betas) if self.betas is not None else None
        out["chain"] = list(self.chain)
        return out

    def with_updates(self, **changes: Any) -> OptimizerInfo:
        """A copy with some fields replaced (the dataclass is frozen)."""
        values = {**asdict(self), **changes}
        if values.get("betas") is not None:
            values["betas"] = tuple(values["betas"])
        values["chain"] = list(values.get("chain") or [])
        return OptimizerInfo(**values)

    def describe(self) -> str:
        """One line for warnings and the CLI: family, hyperparameters, where it came from."""
        hp = []
        if self.variant and self.variant.lower() != self.name:
            hp.append(f"as {self.variant}")
        for key in ("lr", "betas", "eps", "weight_decay", "schedule"):
            value = getattr(self, key)
            if value is not None:
                hp.append(f"{key}={value}")
        extra = f" ({', '.join(hp)})" if hp else ""
        return f"{self.name}{extra}"
