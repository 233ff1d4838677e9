"""`RetentionConfig`: every retention knob in one validated dataclass.

It sits beside TRL's `SFTConfig` in a recipe YAML (both are parsed by `TrlParser`), so every field has a
`metadata={"help": ...}` that `hf-retain train --help` prints, and `__post_init__` rejects bad values with an
error that names the field, the value and what is allowed.

Example:
    >>> from hf_retain import RetentionConfig
    >>> cfg = RetentionConfig(replay_ratio=0.3, distill_alpha=1.0, distill_on="replay")
    >>> cfg.replay_ratio
    0.3
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hf_retain.errors import ConfigError
from hf_retain.optim.policy import OPTIMIZER_NAMES, SUPPORTED_OPTIMIZERS
from hf_retain.replay.curriculum import CurriculumSchedule

__all__ = ["RetentionConfig", "ConfigError"]




def _check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"RetentionConfig.{name}={value!r} is not allowed; choose one of {list(allowed)}.")


def _check_range(
    name: str, value: float | int | None, low: float, high: float = math.inf, *, low_open: bool = False,
    high_open: bool = False, optional: bool = False,
) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"RetentionConfig.{name}={value!r} must be a number.")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left, right = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"RetentionConfig.{name}={value!r} is out of range; allowed: {left}{low}, {high}{right}.")


@dataclass
class RetentionConfig:
    """All retention settings for one fine-tuning run.

    Every method is off by default (``*_alpha``/``*_lambda``/``*_ratio`` of 0), so a `RetentionConfig()` changes
    nothing about training; turn on what you want. `hf-retain demo` prints the gains of the recommended mix
    (replay with distillation on the replayed rows; see `RetentionConfig.recommended()`).
    """

    # ---- optimizer consistency and lineage -------------------------------------------------------------------
    consistency_policy: str = field(
        default="warn",
        metadata={"help": "What to do when the fine-tune optimizer differs from the one that pretrained the model: "
                          "'warn', 'error' (raise before the first step) or 'off'."},
    )
    record_lineage: bool = field(
        default=True,
        metadata={"help": "Write the optimizer lineage of this run into the output model card's YAML metadata."},
    )
    optimizer: str | None = field(
        default=None,
        metadata={"help": "Optimizer to fine-tune with, overriding TrainingArguments.optim: one of "
                          f"{', '.join(repr(n) for n in SUPPORTED_OPTIMIZERS)}, or 'auto' (the optimizer that "
                          "pretrained the model, when known). None keeps the Trainer's own choice."},
    )
    optimizer_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Extra hyperparameters for `optimizer` (e.g. {'momentum': 0.95, 'adamw_lr': 3e-4})."},
    )
    mismatch_mitigation: bool = field(
        default=False,
        metadata={"help": "When the fine-tune optimizer differs from the pretraining one, scale LR and weight "
                          "decay down by `mismatch_lr_scale` and `mismatch_wd_scale`."},
    )
    mismatch_lr_scale: float = field(
        default=0.5, metadata={"help": "LR multiplier applied on an optimizer mismatch, in (0, 1]."}
    )
    mismatch_wd_scale: float = field(
        default=0.5, metadata={"help": "Weight-decay multiplier applied on an optimizer mismatch, in [0, 1]."}
    )

    # ---- EWC / L2-SP -------------------------------------------------------------------------------------------
    ewc_lambda: float = field(
        default=0.0,
        metadata={"help": "Strength of the EWC penalty lambda/2 * sum F (theta - theta*)^2; 0 turns EWC off."},
    )
    ewc_mode: str = field(
        default="ewc",
        metadata={"help": "'ewc' (Fisher-weighted) or 'l2sp' (uniform importance, anchored to the start weights)."},
    )
    ewc_fisher: str | None = field(
        default=None,
        metadata={"help": "Folder of a saved FisherState to use; None estimates it at train begin."},
    )
    ewc_fisher_dataset: str | None = field(
        default=None,
        metadata={"help": "Dataset (hub id, local folder or text/JSON file) to estimate the Fisher on at train "
                          "begin; None uses the replay dataset, else the training data."},
    )
    ewc_fisher_method: str = field(
        default="empirical",
        metadata={"help": "Fisher estimator: 'empirical' (per-sample gradients), 'true' (labels sampled from the "
                          "model) or 'batch' (squared batch gradients: cheap and biased)."},
    )
    ewc_fisher_samples: int = field(
        default=256, metadata={"help": "Number of examples used to estimate the Fisher."}
    )
    ewc_fisher_normalize: str | None = field(
        default=None,
        metadata={"help": "Divide the Fisher by its global 'max' or 'mean' so one ewc_lambda transfers between "
                          "models and datasets; None keeps raw values."},
    )
    ewc_fisher_dtype: str = field(
        default="float32",
        metadata={"help": "Storage dtype of the Fisher: 'float32' or 'bfloat16' (halves it; anchors always keep "
                          "the parameters' dtype)."},
    )
    ewc_online_decay: float = field(
        default=1.0,
        metadata={"help": "Online EWC across tasks: with both ewc_fisher (earlier tasks) and ewc_fisher_dataset "
                          "(the last task), the Fisher is decay * saved + new, anchored at the train-begin weights."},
    )

    # ---- distillation toward the pre-update model -----------------------------------------------------------
    distill_alpha: float = field(
        default=0.0, metadata={"help": "Weight of the distillation loss; 0 turns distillation off."}
    )
    distill_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature applied to student and teacher logits, > 0. As in TRL, "
                                       "the divergence is not multiplied by T^2; multiply distill_alpha by T^2 to "
                                       "keep Hinton et al.'s gradient scale at T > 1."}
    )
    distill_divergence: str = field(
        default="forward_kl",
        metadata={"help": "'forward_kl' (KL(teacher||student)), 'reverse_kl' (KL(student||teacher)) or 'jsd' "
                          "(generalized Jensen-Shannon with `distill_beta`)."},
    )
    distill_beta: float = field(
        default=0.5, metadata={"help": "Interpolation of the generalized JSD, in [0, 1]."}
    )
    distill_on: str = field(
        default="train",
        metadata={"help": "Which rows get the distillation loss: 'train' (all rows), 'replay' (replayed rows only) "
                          "or 'both' (same as 'train', kept for recipes that name it)."},
    )
    distill_teacher: str = field(
        default="base",
        metadata={"help": "'base' (the model as it was at train begin: adapters disabled for PEFT, a frozen snapshot "
                          "otherwise), 'path' (another checkpoint, `distill_teacher_path`) or 'offline' (cached "
                          "top-k log-probs from `hf-retain distill-cache`, folder in `distill_teacher_path`)."},
    )
    distill_teacher_path: str | None = field(
        default=None, metadata={"help": "Checkpoint (teacher='path') or cache folder (teacher='offline')."}
    )
    distill_teacher_device: str | None = field(
        default=None,
        metadata={"help": "Device for a separate teacher (snapshot or 'path'), e.g. 'cpu' to keep it off the "
                          "accelerator; None places it with the student (under DeepSpeed/FSDP the engine decides)."},
    )
    distill_teacher_dtype: str | None = field(
        default=None,
        metadata={"help": "Dtype of a separate teacher: 'bfloat16', 'float16' or 'float32'; None keeps the "
                          "student's. A bf16 snapshot halves its memory."},
    )

    # ---- replay and data mixing ----------------------------------------------------------------------------
    replay_ratio: float = field(
        default=0.0,
        metadata={"help": "Share of every batch drawn from the replay data, in [0, 1); 0 turns replay off."},
    )
    replay_unit: str = field(
        default="examples", metadata={"help": "Measure the replay share in 'examples' or in 'tokens'."}
    )
    replay_dataset: str | None = field(
        default=None,
        metadata={"help": "General/earlier data to replay: hub id, local folder, or text/JSON/JSONL/parquet file."},
    )
    replay_capacity: int = field(
        default=10_000, metadata={"help": "Maximum number of examples kept in the replay buffer."}
    )
    curriculum: list[Any] | None = field(
        default=None,
        metadata={"help": "Replay-share phases over training, e.g. [{'until': 0.8, 'replay_ratio': 0.5}, "
                          "{'until': 1.0, 'replay_ratio': 0.2}]: each phase ends at 'until' (fraction of max_steps, "
                          "increasing, last = 1.0); 'general'/'domain' shares may replace 'replay_ratio'. Overrides "
                          "replay_ratio and turns replay on."},
    )
    replay_generate_tokens: int = field(
        default=0,
        metadata={"help": "Generative replay: when > 0, replay_dataset rows are prompts ('prompt' or 'text' column) "
                          "and the buffer holds the model's own completions of this many new tokens, generated at "
                          "train begin. 0 replays the rows themselves."},
    )

    # ---- regression early stopping -------------------------------------------------------------------------
    regression_suite: str | None = field(
        default=None, metadata={"help": "Suite YAML of general benchmarks to guard; None turns the guard off."}
    )
    regression_threshold: float = field(
        default=0.02, metadata={"help": "Largest allowed regression of any benchmark versus its baseline, >= 0."}
    )
    regression_relative: bool = field(
        default=True, metadata={"help": "Measure regression relative to the baseline (True) or in absolute units."}
    )
    regression_every_n_steps: int = field(
        default=500, metadata={"help": "Evaluate the suite every this many optimizer steps."}
    )
    regression_patience: int = field(
        default=1, metadata={"help": "Number of consecutive regressed evaluations before acting."}
    )
    regression_action: str = field(
        default="stop",
        metadata={"help": "On regression: 'warn', 'stop', or 'rollback' (stop and restore the best weights)."},
    )
    regression_on_error: str = field(
        default="continue",
        metadata={"help": "When a guarded benchmark raises during training: 'continue' (report it and keep "
                          "training) or 'stop'."},
    )
    regression_rollback_store: str = field(
        default="memory",
        metadata={"help": "Where the rollback target is kept between evaluations: 'memory' (a CPU copy on rank 0) or "
                          "'disk' (output_dir/retention_rollback/, no RAM held, survives a restart)."},
    )

    def __post_init__(self) -> None:
        _check_choice("consistency_policy", self.consistency_policy, ("warn", "error", "off"))
        if self.optimizer is not None:
            if not isinstance(self.optimizer, str) or not self.optimizer.strip():
                raise ConfigError(f"RetentionConfig.optimizer={self.optimizer!r} must be an optimizer name or None.")
            self.optimizer = self.optimizer.strip().lower()
            _check_choice("optimizer", self.optimizer, OPTIMIZER_NAMES)
        if self.optimizer_kwargs is not None and not isinstance(self.optimizer_kwargs, dict):
            raise ConfigError(f"RetentionConfig.optimizer_kwargs={self.optimizer_kwargs!r} must be a mapping.")
        _check_range("mismatch_lr_scale", self.mismatch_lr_scale, 0.0, 1.0, low_open=True)
        _check_range("mismatch_wd_scale", self.mismatch_wd_scale, 0.0, 1.0)

        _check_range("ewc_lambda", self.ewc_lambda, 0.0)
        _check_choice("ewc_mode", self.ewc_mode, ("ewc", "l2sp"))
        _check_choice("ewc_fisher_method", self.ewc_fisher_method, ("empirical", "true", "batch"))
        _check_range("ewc_fisher_samples", self.ewc_fisher_samples, 1)
        _check_choice("ewc_fisher_normalize", self.ewc_fisher_normalize, (None, "max", "mean"))
        _check_choice("ewc_fisher_dtype", self.ewc_fisher_dtype, ("float32", "bfloat16"))
        _check_range("ewc_online_decay", self.ewc_online_decay, 0.0, 1.0)

        _check_range("distill_alpha", self.distill_alpha, 0.0)
        _check_range("distill_temperature", self.distill_temperature, 0.0, low_open=True)
        _check_choice("distill_divergence", self.distill_divergence, ("forward_kl", "reverse_kl", "jsd"))
        _check_range("distill_beta", self.distill_beta, 0.0, 1.0)
        _check_choice("distill_on", self.distill_on, ("train", "replay", "both"))
        _check_choice("distill_teacher", self.distill_teacher, ("base", "path", "offline"))
        if self.distill_teacher in ("path", "offline") and not self.distill_teacher_path:
            raise ConfigError(
                f"RetentionConfig.distill_teacher={self.distill_teacher!r} needs distill_teacher_path "
                "(a checkpoint folder for 'path', a cache folder from `hf-retain distill-cache` for 'offline')."
            )
        if self.distill_teacher == "base" and self.distill_teacher_path:
            raise ConfigError(
                f"RetentionConfig.distill_teacher_path={self.distill_teacher_path!r} is set, but distill_teacher="
                "'base' distils toward the model as it was at train begin and would ignore it. Set "
                "distill_teacher='path' (the path is a checkpoint) or distill_teacher='offline' (it is a cache folder "
                "from `hf-retain distill-cache`), or drop distill_teacher_path."
            )
        if self.distill_teacher_dtype is not None:
            _check_choice("distill_teacher_dtype", self.distill_teacher_dtype, ("bfloat16", "float16", "float32"))
        if self.distill_teacher_device is not None and (
            not isinstance(self.distill_teacher_device, str) or not self.distill_teacher_device.strip()
        ):
            raise ConfigError(
                f"RetentionConfig.distill_teacher_device={self.distill_teacher_device!r} must be a device name "
                "such as 'cpu' or 'cuda:0', or None."
            )

        _check_range("replay_ratio", self.replay_ratio, 0.0, 1.0, high_open=True)
        _check_choice("replay_unit", self.replay_unit, ("examples", "tokens"))
        _check_range("replay_capacity", self.replay_capacity, 1)
        _check_range("replay_generate_tokens", self.replay_generate_tokens, 0)
        # replay_dataset is checked by ReplayMixin, since a ready ReplayBuffer may be passed to the trainer instead.
        if self.distill_on == "replay" and self.distill_alpha > 0 and self.replay_ratio == 0 and not self.curriculum:
            raise ConfigError(
                "RetentionConfig.distill_on='replay' distils only replayed rows, but replay_ratio=0 replays none; "
                "set replay_ratio > 0 (with replay_dataset) or distill_on='train'."
            )
        if self.curriculum is not None:
            if not isinstance(self.curriculum, list):
                raise ConfigError(f"RetentionConfig.curriculum={self.curriculum!r} must be a list of phases.")
            try:
                CurriculumSchedule(self.curriculum)
            except ValueError as err:
                raise ConfigError(f"RetentionConfig.curriculum: {err}") from err

        _check_range("regression_threshold", self.regression_threshold, 0.0)
        _check_range("regression_every_n_steps", self.regression_every_n_steps, 1)
        _check_range("regression_patience", self.regression_patience, 1)
        _check_choice("regression_action", self.regression_action, ("warn", "stop", "rollback"))
        _check_choice("regression_on_error", self.regression_on_error, ("continue", "stop"))
        _check_choice("regression_rollback_store", self.regression_rollback_store, ("memory", "disk"))

    # ------------------------------------------------------------------------------------------------------------
    @property
    def methods(self) -> list[str]:
        """Names of the retention methods this config turns on (recorded in lineage and reports)."""
        used = []
        if self.ewc_lambda > 0:
            used.append(self.ewc_mode)
        if self.distill_alpha > 0:
            used.append(f"distill[{self.distill_on}]")
        if self.curriculum:
            used.append(f"replay[curriculum {self.replay_unit}]")
        elif self.replay_ratio > 0:
            used.append(f"replay[{self.replay_ratio:g} {self.replay_unit}]")
        if self.regression_suite:
            used.append(f"regression-guard[{self.regression_action}]")
        if self.optimizer:
            used.append(f"optimizer[{self.optimizer}]")
        return used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def recommended(cls, replay_dataset: str, **overrides: Any) -> RetentionConfig:
        """The default mix, chosen from measurements (`hf-retain demo`, `hf-retain bench`): 30% replay of general
        data plus distillation toward the pre-update model on the replayed rows only."""
        settings: dict[str, Any] = dict(
            replay_ratio=0.3, replay_dataset=replay_dataset, distill_alpha=1.0, distill_on="replay"
        )
        settings.update(overrides)
        return cls(**settings)
