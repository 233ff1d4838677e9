"""The optimizer policy: one place that says what an optimizer name means and what to do about a switch.

Everything that compares optimizers calls this module: `OptimizerMixin` (``RetentionConfig.optimizer``, ``auto``,
``mismatch_mitigation``), `OptimizerConsistencyCallback`, the lineage reader and writer, the card parser and the
CLI. It is pure (names in, answers out); looking up which optimizer pretrained a model is the lineage reader's job.

* `SUPPORTED_OPTIMIZERS` / `OPTIMIZER_NAMES`: the optimizers hf_retain builds, and the values
  ``RetentionConfig.optimizer`` takes (those plus ``auto``).
* `canonical_optimizer_name`: any spelling of an optimizer (``adamw_torch_fused``, ``OptimizerNames.PAGED_ADAMW_8BIT``,
  ``AdamWeightDecay``, ``MuonClip``, a class name such as ``AdamWScheduleFree``) -> its family.
  `trainer_optim_family` is the same for a ``TrainingArguments.optim`` value.
* `same_family` and `consistency_status`: whether a fine-tune optimizer matches the pretraining one.
* `resolve_auto`: what ``optimizer="auto"`` builds, given the pretraining family already read.
* `mitigation_scales` and `apply_mitigation`: the LR and weight-decay scaling ``mismatch_mitigation`` applies.

**How names fold into families.** The family is the update rule the name says:

* Implementations of the same update fold into it: 8-bit/4-bit/32-bit optimizer states (bitsandbytes, torchao),
  paged, fused, foreach, XLA and NPU kernels, ``anyprecision``, layer-wise stepping (``*_layerwise``: the step runs
  per layer during backward to save memory) and the class names transformers builds for them (``AdamW8bit``,
  ``PagedLion8bit``, ``NpuFusedAdamW``). StableAdamW (AdamW with per-tensor update clipping) counts as ``adamw``.
* A different update keeps its own family, even when its name contains another's: ``galore`` (GaLore's low-rank
  gradient projection, whatever its inner optimizer), ``apollo``, ``ademamix``, ``lomo``, ``adalomo``, ``adam_mini``,
  ``lion``, ``lamb``, ... (`KNOWN_FAMILIES`). One we do not name is ``other:<name as written>``, e.g.
  ``other:grokadamw``; schedule-free variants are ``other:schedule_free_<base>`` however they are spelled
  (``schedule_free_adamw`` and ``AdamWScheduleFree`` are both ``other:schedule_free_adamw``).
* Families are fixed points: ``canonical_optimizer_name(family) == family``.

**Adam versus AdamW.** The family is what the text names. Older transformers model cards wrote ``Adam with
betas=(0.9,0.999)`` although the Trainer used AdamW; we report ``adam`` for them and `same_family` treats ``adam``
and ``adamw`` as one optimizer, since they differ only in how weight decay enters the update.

>>> canonical_optimizer_name("OptimizerNames.PAGED_ADAMW_8BIT"), trainer_optim_family("galore_adamw_layerwise")
('adamw', 'galore')
>>> resolve_auto("muon", "adamw")
('muon', 'auto -> muon: the model was pretrained with muon')
>>> consistency_status("adamw", "adam"), consistency_status("adamw", "muon"), consistency_status("adamw", None)
('match', 'mismatch', 'unknown')
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from hf_retain.errors import ConfigError

__all__ = [
    "KNOWN_FAMILIES", "OPTIMIZER_NAMES", "SUPPORTED_OPTIMIZERS", "apply_mitigation", "canonical_optimizer_name",
    "consistency_status", "mitigation_scales", "resolve_auto", "same_family", "trainer_optim_family",
]

# The optimizers `hf_retain.optim.create_optimizer` builds; ``auto`` picks one of them (or the fallback).
SUPPORTED_OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "adafactor", "sgd", "muon")
OPTIMIZER_NAMES: tuple[str, ...] = (*SUPPORTED_OPTIMIZERS, "auto")

# Families we name; anything else becomes ``other:<as written>``.
KNOWN_FAMILIES: tuple[str, ...] = (
    "adamw", "adam", "adafactor", "muon", "sgd", "lion", "lamb", "sophia", "adagrad", "rmsprop", "galore", "apollo",
    "ademamix", "lomo", "adalomo", "shampoo", "soap", "lars", "radam", "nadam", "adamax", "adabelief", "adan",
    "novograd", "came", "adadelta", "adam_mini",
)

# Ordered (pattern, family): the first pattern found in the normalised name wins, so specific names come first.
# Look-behinds keep prose words ("million", "camel") from reading as optimizers in model cards.
_FAMILY_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"muon", "muon"),  # Muon, MuonClip, NorMuon, distributed/hybrid Muon
    (r"galore", "galore"),
    (r"^apollo$|apollo_?(?:adamw|mini)", "apollo"),
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
# Different algorithms although their names contain a family's: ``other:<name>``.
_OTHER_MARKERS = ("grokadamw", "apollo")
_SCHEDULE_FREE = re.compile(r"schedule_?free")
# Implementation prefixes that would hide a family from a look-behind (bitsandbytes' ``PagedLion8bit``).
_IMPLEMENTATION_PREFIX = re.compile(r"^paged_?")


def _label(raw: str) -> str:
    """The name as written, lower-cased, without quoting, ``OptimizerNames.`` or a module path."""
    text = raw.strip().strip("`'\"*").strip().lower()
    text = re.sub(r"^optimizernames\.", "", text)
    text = re.sub(r"<class\s+'([^']+)'>", r"\1", text)
    return text.rsplit(".", 1)[-1] if re.fullmatch(r"[a-z_][\w.]*", text) else text  # torch.optim.adamw.AdamW


def _normalise(raw: str) -> str:
    return re.sub(r"[\s\-]+", "_", _label(raw))


def _family_of(text: str) -> str | None:
    text = _IMPLEMENTATION_PREFIX.sub("", text)
    for pattern, family in _FAMILY_PATTERNS:
        if re.search(pattern, text):
            return family
    return None


def canonical_optimizer_name(raw: str) -> str:
    """Fold an optimizer name as written anywhere into its canonical lower-case family (rules in the module doc).

    >>> canonical_optimizer_name("OptimizerNames.PAGED_ADAMW_8BIT")
    'adamw'
    >>> canonical_optimizer_name("Adam"), canonical_optimizer_name("MuonClip"), canonical_optimizer_name("Foo-Opt")
    ('adam', 'muon', 'other:foo-opt')
    >>> canonical_optimizer_name("AdamWScheduleFree"), canonical_optimizer_name("schedule_free_adamw")
    ('other:schedule_free_adamw', 'other:schedule_free_adamw')
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"optimizer name must be a non-empty string, got {raw!r}")
    if raw.strip().lower().startswith("other:"):
        return raw.strip().lower()  # already a family
    text = _normalise(raw)
    if _SCHEDULE_FREE.search(text):
        rest = _SCHEDULE_FREE.sub("_", text).strip("_")
        base = _family_of(rest) if rest else None
        return f"other:schedule_free_{base}" if base else "other:schedule_free"
    family = _family_of(text)
    if any(marker in text for marker in _OTHER_MARKERS) and family != "apollo":
        return f"other:{_label(raw)}"
    return family if family is not None else f"other:{_label(raw)}"


def trainer_optim_family(optim: Any) -> str:
    """The family of a ``TrainingArguments.optim`` value (an `OptimizerNames` member or its string).

    >>> trainer_optim_family("adamw_torch_fused"), trainer_optim_family("schedule_free_sgd")
    ('adamw', 'other:schedule_free_sgd')
    """
    return canonical_optimizer_name(str(getattr(optim, "value", optim)))


# Families whose updates are close enough that fine-tuning with one after the other is not an optimizer switch.
_COMPATIBLE: tuple[frozenset[str], ...] = (frozenset({"adam", "adamw"}),)


def same_family(a: str | None, b: str | None) -> bool:
    """Whether two canonical families count as the same optimizer for the consistency check (Adam ~ AdamW).

    An unknown side (None) is never the same.
    """
    if a is None or b is None:
        return False
    return a == b or any(a in group and b in group for group in _COMPATIBLE)


def consistency_status(finetune: str | None, pretrained: str | None) -> str:
    """``"match"``, ``"mismatch"`` or ``"unknown"`` (either family not known) for two canonical families."""
    if finetune is None or pretrained is None:
        return "unknown"
    return "match" if same_family(finetune, pretrained) else "mismatch"


def resolve_auto(pretrained_family: str | None, fallback: str | None, *, found: str = "") -> tuple[str | None, str]:
    """What ``optimizer="auto"`` builds: ``(name, reason)``.

    ``name`` is the pretraining family when hf_retain provides it, else ``fallback`` (None: the Trainer's own
    optimizer). ``found`` says where the family was read (or why it was not), for the reason.
    """
    where = f" ({found})" if found else ""
    if pretrained_family in SUPPORTED_OPTIMIZERS:
        return pretrained_family, f"auto -> {pretrained_family}: the model was pretrained with " \
                                  f"{pretrained_family}{where}"
    if pretrained_family is None:
        why = f"found no pretraining optimizer for this model{where}"
    else:
        why = f"the model was pretrained with {pretrained_family!r}{where}, which hf_retain does not provide"
    shown = fallback if fallback is not None else "the Trainer's own optimizer"
    return fallback, f"auto -> {shown} (fallback): {why}"


def mitigation_scales(status: str | bool, lr_scale: float = 0.5, wd_scale: float = 0.5) -> tuple[float, float]:
    """``(lr_scale, wd_scale)`` to apply for a consistency ``status`` (or a mismatch flag); ``(1.0, 1.0)`` unless
    it is a mismatch. Lowering both after an optimizer switch keeps the new optimizer from moving the pretrained
    weights as far as its own, differently scaled, first steps would."""
    if isinstance(lr_scale, bool) or not isinstance(lr_scale, (int, float)) or not 0.0 < lr_scale <= 1.0:
        raise ConfigError(f"mismatch_lr_scale={lr_scale!r} must be a number in (0, 1].")
    if isinstance(wd_scale, bool) or not isinstance(wd_scale, (int, float)) or not 0.0 <= wd_scale <= 1.0:
        raise ConfigError(f"mismatch_wd_scale={wd_scale!r} must be a number in [0, 1].")
    mismatch = status is True or status == "mismatch"
    return (float(lr_scale), float(wd_scale)) if mismatch else (1.0, 1.0)


_LR_KEYS = ("lr", "initial_lr", "adamw_lr")
_WD_KEYS = ("weight_decay", "adamw_weight_decay")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def apply_mitigation(groups: Iterable[MutableMapping[str, Any]], lr_scale: float, wd_scale: float, *,
                     scheduler: Any = None) -> int:
    """Scale learning rates and weight decays in place; returns how many groups were scaled.

    ``groups`` are optimizer param groups (``optimizer.param_groups``) or any dicts of hyperparameters: ``lr``,
    ``initial_lr`` and ``adamw_lr`` are multiplied by ``lr_scale``, ``weight_decay`` and ``adamw_weight_decay`` by
    ``wd_scale``, where present. ``scheduler``: an LR scheduler already built on those groups, whose ``base_lrs``
    are scaled too (it would otherwise restore the unscaled LRs at its next step).

    >>> groups = [{"lr": 1e-3, "weight_decay": 0.1}, {"lr": 1e-3, "weight_decay": 0.0}]
    >>> apply_mitigation(groups, 0.5, 0.5), groups[0]
    (2, {'lr': 0.0005, 'weight_decay': 0.05})
    """
    count = 0
    for group in groups:
        for key in _LR_KEYS:
            if _number(group.get(key)):
                group[key] = group[key] * lr_scale
        for key in _WD_KEYS:
            if _number(group.get(key)):
                group[key] = group[key] * wd_scale
        count += 1
    base_lrs = getattr(scheduler, "base_lrs", None)
    if isinstance(base_lrs, list):
        scheduler.base_lrs = [lr * lr_scale if _number(lr) else lr for lr in base_lrs]
    return count
