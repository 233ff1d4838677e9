"""`OptimizerInfo` and the canonical optimizer families every reader and checker in hf_retain agrees on.

Names are written a hundred ways (``adamw_torch_fused``, ``OptimizerNames.PAGED_ADAMW_8BIT``, ``AdamWeightDecay``,
``MuonClip``, ``torch.optim.adamw.AdamW``); `canonical_optimizer_name` folds them into one lower-case family so a
pretraining optimizer read from a model card can be compared with the optimizer a Trainer builds.

Policy for *Adam versus AdamW*: the family is what the text names. Older transformers model cards wrote
``Adam with betas=(0.9,0.999)`` even though the Trainer used AdamW; we report ``adam`` for them (the evidence keeps the
line) and treat ``adam`` and ``adamw`` as *compatible* when checking consistency (`same_family`), because they differ
only in how weight decay enters the update.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["OptimizerInfo", "canonical_optimizer_name", "same_family", "KNOWN_FAMILIES"]

# Families we name; anything else becomes ``other:<as written>``.
KNOWN_FAMILIES: tuple[str, ...] = (
    "adamw", "adam", "adafactor", "muon", "sgd", "lion", "lamb", "sophia", "adagrad", "rmsprop", "galore",
    "ademamix", "lomo", "adalomo", "shampoo", "soap", "lars", "radam", "nadam", "adamax", "adabelief", "adan",
    "novograd", "came", "adadelta", "adam_mini",
)

# Ordered (pattern, family): the first pattern found in the normalised name wins, so specific names come first.
_FAMILY_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"muon", "muon"),  # Muon, MuonClip, NorMuon, distributed/hybrid Muon
    (r"galore", "galore"),
    (r"ademamix", "ademamix"),
    (r"adalomo", "adalomo"),
    (r"(?<![a-z])lomo", "lomo"),
    (r"adafactor", "adafactor"),
    (r"adam_?mini", "adam_mini"),
    (r"(?<![a-z])lion", "lion"),
    (r"(?<![a-z])lamb", "lamb"),
    (r"sophia", "sophia"),
    (r"adagrad", "adagrad"),
    (r"adadelta", "adadelta"),
    (r"rms_?prop", "rmsprop"),
    (r"shampoo", "shampoo"),
    (r"(?<![a-z])soap", "soap"),
    (r"(?<![a-z])lars", "lars"),
    (r"novograd", "novograd"),
    (r"adabelief", "adabelief"),
    (r"(?<![a-z])came(?![a-z])", "came"),
    (r"(?<![a-z])radam", "radam"),
    (r"(?<![a-z])nadam", "nadam"),
    (r"adamax", "adamax"),
    (r"(?<![a-z])adan(?![a-z])", "adan"),
    (r"adam_?w|adamweightdecay|adam_weight_decay|decoupled_weight_decay", "adamw"),
    (r"adam", "adam"),
    (r"(?<![a-z])sgd|nesterov|momentum_sgd", "sgd"),
)
# Variants that are a different algorithm although they contain "adam": keep them as written.
_OTHER_EXACT = ("schedule_free", "schedulefree", "grokadamw", "apollo")


def _normalise(raw: str) -> str:
    text = raw.strip().strip("`'\"*").lower()
    text = re.sub(r"^optimizernames\.", "", text)
    text = re.sub(r"<class\s+'([^']+)'>", r"\1", text)
    text = text.rsplit(".", 1)[-1] if re.fullmatch(r"[a-z_][\w.]*", text) else text  # torch.optim.adamw.AdamW
    return re.sub(r"[\s\-]+", "_", text)


def canonical_optimizer_name(raw: str) -> str:
    """Fold an optimizer name as written anywhere into its canonical lower-case family.

    >>> canonical_optimizer_name("OptimizerNames.PAGED_ADAMW_8BIT")
    'adamw'
    >>> canonical_optimizer_name("Adam"), canonical_optimizer_name("MuonClip"), canonical_optimizer_name("Foo-Opt")
    ('adam', 'muon', 'other:foo-opt')
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"optimizer name must be a non-empty string, got {raw!r}")
    text = _normalise(raw)
    if any(marker in text for marker in _OTHER_EXACT):
        return f"other:{raw.strip().lower()}"
    for pattern, family in _FAMILY_PATTERNS:
        if re.search(pattern, text):
            return family
    return f"other:{raw.strip().lower()}"


# Families whose updates are close enough that fine-tuning with one after the other is not an optimizer switch.
_COMPATIBLE: tuple[frozenset[str], ...] = (frozenset({"adam", "adamw"}),)


def same_family(a: str, b: str) -> bool:
    """True when two canonical families count as the same optimizer for the consistency check (Adam ~ AdamW)."""
    if a == b:
        return True
    return any(a in group and b in group for group in _COMPATIBLE)


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
