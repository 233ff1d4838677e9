"""Distillation toward the model as it was: the loss mixin, its teachers, their divergences, and the offline cache.

Names load on first use, so importing one piece (the cache, say) does not import the Trainer mixin.

Example:
    >>> from hf_retain.distill import DistillationMixin
    >>> from transformers import Trainer
    >>> class DistilTrainer(DistillationMixin, Trainer): ...
"""

from __future__ import annotations

from hf_retain._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "DistillCacheError": "hf_retain.errors",
    "DistillationMixin": "hf_retain.distill.mixin",
    "OfflineTeacherCache": "hf_retain.distill.cache",
    "TeacherError": "hf_retain.errors",
    "TeacherMode": "hf_retain.distill.teachers",
    "build_distill_cache": "hf_retain.distill.cache",
    "chunked_divergence_sum": "hf_retain.distill.divergence",
    "dataset_fingerprint": "hf_retain.distill.cache",
    "load_path_teacher": "hf_retain.distill.teachers",
    "offline_divergence_sum": "hf_retain.distill.divergence",
    "snapshot_teacher": "hf_retain.distill.teachers",
    "teacher_hidden_states": "hf_retain.distill.teachers",
    "teacher_source": "hf_retain.distill.teachers",
    "tokenizer_fingerprint": "hf_retain.distill.cache",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("hf_retain.distill", _EXPORTS, globals())
