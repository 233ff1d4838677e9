"""Distillation toward the model as it was: the loss mixin, its teachers, their divergences, and the offline cache.

Example:
    >>> from hf_retain.distill import DistillationMixin
    >>> from transformers import Trainer
    >>> class DistilTrainer(DistillationMixin, Trainer): ...
"""

from hf_retain.distill.cache import (
    DistillCacheError,
    OfflineTeacherCache,
    build_distill_cache,
    dataset_fingerprint,
    tokenizer_fingerprint,
)
from hf_retain.distill.divergence import chunked_divergence_sum, offline_divergence_sum
from hf_retain.distill.mixin import DistillationMixin
from hf_retain.distill.teachers import (
    TeacherError,
    TeacherMode,
    load_path_teacher,
    snapshot_teacher,
    teacher_hidden_states,
)

__all__ = [
    "DistillCacheError",
    "DistillationMixin",
    "OfflineTeacherCache",
    "TeacherError",
    "TeacherMode",
    "build_distill_cache",
    "chunked_divergence_sum",
    "dataset_fingerprint",
    "load_path_teacher",
    "offline_divergence_sum",
    "snapshot_teacher",
    "teacher_hidden_states",
    "tokenizer_fingerprint",
]
