"""Every error hf_retain raises on purpose, under one base class, `RetentionError`.

Each message is meant to be shown to a user as it is: it names what was wrong (the file, key or value) and how to
fix it. The CLI prints any `RetentionError` as one clean paragraph and exits 2, with no traceback. Each class also
derives from the builtin it replaces (mostly `ValueError`), so ``except ValueError`` keeps working.

Example:
    >>> from hf_retain.errors import RecipeError, RetentionError
    >>> issubclass(RecipeError, RetentionError), issubclass(RecipeError, ValueError)
    (True, True)
"""

from __future__ import annotations

__all__ = [
    "RetentionError", "ConfigError", "RecipeError", "ModelLoadError", "DatasetError", "StateFileError",
    "SuiteError", "TeacherError", "DistillCacheError", "FisherError", "ReplayColumnError", "RegistryError",
    "ArmSpecError", "MergeError", "OptimizerMismatchError", "TorchVersionError", "MixinOrderError",
]


class RetentionError(Exception):
    """Base of every hf_retain error; its message says what was wrong and how to fix it."""


class ConfigError(RetentionError, ValueError):
    """A retention setting has a value outside what it allows."""


class RecipeError(RetentionError, ValueError):
    """A recipe, model or dataset cannot be used as given."""


class ModelLoadError(RecipeError):
    """A model or tokenizer cannot be resolved or loaded (missing path, not cached offline, unknown builtin)."""


class DatasetError(RecipeError):
    """A dataset cannot be loaded, is empty, or lacks the columns it is used for."""


class StateFileError(RetentionError, ValueError):
    """A state file hf_retain wrote into a checkpoint is missing, truncated or corrupt."""


class SuiteError(RetentionError, ValueError):
    """A retention suite (YAML, benchmark or evaluator) cannot be built or run as given."""


class TeacherError(RetentionError, ValueError):
    """The distillation teacher cannot be built or used as configured."""


class DistillCacheError(RetentionError, ValueError):
    """An offline teacher cache is missing, incomplete, or does not match the training data."""


class FisherError(RetentionError, ValueError):
    """A Fisher estimate cannot be computed, loaded or applied to this model."""


class ReplayColumnError(RetentionError, ValueError):
    """Replay data lacks the column the training data is read from."""


class RegistryError(RetentionError, ValueError):
    """The optimizer-lineage registry file is malformed."""


class ArmSpecError(RetentionError, ValueError):
    """An arm specification such as ``adamw+replay=0.5+distill`` cannot be parsed."""


class MergeError(RetentionError, ValueError):
    """Models, adapters or merge parameters that cannot be merged as given."""


class OptimizerMismatchError(RetentionError, RuntimeError):
    """The fine-tune optimizer differs from the pretraining one and the consistency policy is 'error'."""


class TorchVersionError(RetentionError, RuntimeError):
    """This torch's private API differs from the one hf_retain was written and tested against."""


class MixinOrderError(RetentionError, TypeError):
    """A Trainer class composes hf_retain's mixins in an order that cannot work."""
