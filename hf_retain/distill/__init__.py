"""Distillation toward the model as it was: the loss mixin, its teachers, and the offline teacher cache.

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
from hf_retain.distill.mixin import DistillationMixin
from hf_retain.distill.teachers import TeacherError, load_path_teacher, snapshot_teacher

__all__ = [
    "DistillCacheError",
    "DistillationMixin",
    "OfflineTeacherCache",
    "TeacherError",
    "build_distill_cache",
    "dataset_fingerprint",
    "load_path_teacher",
    "snapshot_teacher",
    "tokenizer_fingerprint",
]
