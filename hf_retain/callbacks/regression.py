"""`RegressionEarlyStoppingCallback`: stop (or roll back) a fine-tune when general benchmarks regress.

transformers' `EarlyStoppingCallback` watches one eval metric for *improvement*. This one watches a whole
`RetentionSuite` for *regression against a baseline* measured before the first step: every ``every_n_steps`` it
evaluates the suite, logs each benchmark's score and change through the Trainer's logging (so wandb, tensorboard
and mlflow receive them), and when a benchmark has been worse than its bound for ``patience`` evaluations in a row it
warns, stops training, or stops and restores the last weights that stayed within bounds (a copy of the trainable
weights taken at each in-bounds evaluation, gathered from the shards under FSDP2 and ZeRO-3, and kept in CPU memory
or, with ``rollback_store='disk'``, in ``output_dir`` where it also survives a restart).

The decision is taken on rank 0 and broadcast, so every rank stops at the same step and none waits in a collective
the others skipped. Baseline, counters and history are `ExportableState` and survive `resume_from_checkpoint`.

Example:
    >>> from hf_retain import RegressionEarlyStoppingCallback, RetentionSuite, LossEvaluator
    >>> suite = RetentionSuite([LossEvaluator(["held-out general text"], name="general")])
    >>> callback = RegressionEarlyStoppingCallback(suite, threshold=0.02, every_n_steps=500, action="rollback")
    >>> trainer = SFTTrainer(model, args=args, train_dataset=data, callbacks=[callback])   # doctest: +SKIP
    >>> trainer.train(); callback.stopped_at, callback.restored_step                        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from hf_retain.callbacks._handler import report_through_handler
from hf_retain.distributed import broadcast_object, is_distributed, rank
from hf_retain.errors import SuiteError
from hf_retain.evaluation.results import SuiteResult, compare_to_baseline
from hf_retain.evaluation.sharding import fsdp2_modules, reshard_fsdp2
from hf_retain.evaluation.suite import RetentionSuite

logger = logging.getLogger(__name__)

__all__ = ["RegressionEarlyStoppingCallback", "ACTIONS", "ON_ERROR"]

ACTIONS = ("stop", "rollback", "warn")
ROLLBACK_STORES = ("memory", "disk")
ROLLBACK_DIR = "retention_rollback"
ON_ERROR = ("continue", "stop")
LOG_PREFIX = "retention"


class RegressionEarlyStoppingCallback(TrainerCallback, ExportableState):
    """Guard general ability during fine-tuning.

    Args:
        suite: the benchmarks to guard: a `RetentionSuite`, or the path of a suite YAML.
        threshold: largest allowed regression of any benchmark (relative to its baseline when ``relative``).
        relative: measure regression as a fraction of the baseline (True) or in the score's units.
        every_n_steps: evaluate every this many optimizer steps.
        patience: consecutive regressed evaluations before acting.
        action: 'warn', 'stop', or 'rollback' (stop and restore the last weights that stayed within bounds).
        per_benchmark_thresholds: ``{name: threshold}`` overriding ``threshold`` (and the suite file's bounds).
        baseline: a stored baseline (`SuiteResult`, its ``to_dict()``, or a JSON path from `SuiteResult.save` or a
            gate's ``gate.json``) instead of measuring one at train begin.
        on_error: when a benchmark raises: 'continue' (report it, keep training) or 'stop'.
        check_at_end: evaluate once more at train end if the last step was not evaluated (rollback still applies).
        rollback_store: where the rollback target lives between evaluations: 'memory' (a CPU copy on rank 0) or
            'disk' (``output_dir/retention_rollback/weights.safetensors``, written atomically by rank 0): no RAM held
            for a large full fine-tune, and a resumed run keeps its verified target.
    """

    def __init__(
        self,
        suite: RetentionSuite | str,
        *,
        threshold: float = 0.02,
        relative: bool = True,
        every_n_steps: int = 500,
        patience: int = 1,
        action: str = "stop",
        per_benchmark_thresholds: Mapping[str, float] | None = None,
        baseline: SuiteResult | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        on_error: str = "continue",
        check_at_end: bool = True,
        rollback_store: str = "memory",
    ) -> None:
        if isinstance(suite, str):
            suite = RetentionSuite.lookup(suite)
        if not isinstance(suite, RetentionSuite):
            raise TypeError(f"suite must be a RetentionSuite or a suite YAML path, got {type(suite).__name__}.")
        if action not in ACTIONS:
            raise ValueError(f"action={action!r} is not allowed; choose one of {list(ACTIONS)}.")
        if rollback_store not in ROLLBACK_STORES:
            raise ValueError(f"rollback_store={rollback_store!r} is not allowed; choose one of "
                             f"{list(ROLLBACK_STORES)}.")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r} is not allowed; choose one of {list(ON_ERROR)}.")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ValueError(f"threshold={threshold!r} must be a number >= 0.")
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps!r} must be an integer >= 1.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience={patience!r} must be an integer >= 1.")
        thresholds = {**suite.thresholds, **dict(per_benchmark_thresholds or {})}
        unknown = set(per_benchmark_thresholds or {}) - set(suite.names)
        if unknown:
            raise ValueError(f"per_benchmark_thresholds names {sorted(unknown)}, which are not benchmarks of the suite "
                             f"{suite.names}.")
        self.suite = suite
        self.threshold, self.relative, self.every_n_steps = float(threshold), bool(relative), every_n_steps
        self.patience, self.action, self.on_error, self.check_at_end = patience, action, on_error, check_at_end
        self.rollback_store = rollback_store
        self.per_benchmark_thresholds = dict(per_benchmark_thresholds or {})
        self._thresholds = thresholds
        # ---- exported state (JSON-friendly) ----
        self.baseline: dict[str, Any] | None = _as_baseline(baseline)
        self.patience_counter = 0
        self.last_eval_step = -1
        self.best_step: int | None = None  # last evaluated step within bounds (its weights are the rollback target)
        self.stopped_at: int | None = None
        self.restored_step: int | None = None
        self.history: list[dict[str, Any]] = []
        # ---- not exported ----
        self._snapshot: dict[str, torch.Tensor] | None = None  # rollback_store='memory' (rank 0 holds the tensors)
        self._snapshot_file: str | None = None  # rollback_store='disk': the target is this file (written by rank 0)
        self._restored_from_state = False

    @classmethod
    def from_retention_config(cls, retention: Any) -> RegressionEarlyStoppingCallback | None:
        """The guard a `RetentionConfig` declares (``regression_*`` fields), or None when no suite is set."""
        if not retention.regression_suite:
            return None
        return cls(
            RetentionSuite.from_yaml(retention.regression_suite),
            threshold=retention.regression_threshold,
            relative=retention.regression_relative,
            every_n_steps=retention.regression_every_n_steps,
            patience=retention.regression_patience,
            action=retention.regression_action,
            on_error=retention.regression_on_error,
            rollback_store=retention.regression_rollback_store,
        )

    # ---- ExportableState -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "suite": self.suite.source or self.suite.key,
                "threshold": self.threshold,
                "relative": self.relative,
                "every_n_steps": self.every_n_steps,
                "patience": self.patience,
                "action": self.action,
                "per_benchmark_thresholds": self.per_benchmark_thresholds,
                "on_error": self.on_error,
                "check_at_end": self.check_at_end,
                "rollback_store": self.rollback_store,
            },
            "attributes": {
                "baseline": self.baseline,
                "patience_counter": self.patience_counter,
                "last_eval_step": self.last_eval_step,
                "best_step": self.best_step,
                "stopped_at": self.stopped_at,
                "restored_step": self.restored_step,
                "history": self.history,
            },
        }

    def _restore_from_trainer_state(self, state: TrainerState) -> None:
        """Read our attributes back from a resumed TrainerState (transformers only does it itself when
        ``restore_callback_states_from_checkpoint=True``)."""
        stored = (state.stateful_callbacks or {}).get(type(self).__name__)
        if stored is None:
            return
        entries = stored if isinstance(stored, list) else [stored]
        mine = [e for e in entries if e.get("args", {}).get("suite") in (self.suite.source, self.suite.key)]
        entry = (mine or entries)[0]
        for name, value in entry.get("attributes", {}).items():
            setattr(self, name, value)
        self._restored_from_state = True

    # ---- events ----------------------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, processing_class: Any = None, **kwargs: Any) -> None:
        resumed = state.global_step > 0
        if resumed and not self._restored_from_state and self.last_eval_step < 0:
            self._restore_from_trainer_state(state)
        self._snapshot = self._snapshot_file = None
        if self.baseline is None:
            result = self.suite.evaluate(model, processing_class, step=state.global_step)
            self._check_baseline(result)
            self.baseline = result.to_dict()
            self._log(args, state, control, {f"{LOG_PREFIX}/{r.name}": r.score for r in result},
                      f"baseline at step {state.global_step}")
            self.best_step = state.global_step
            if self.action == "rollback":
                self._keep_rollback_target(model, args, state.global_step)
        elif self.action == "rollback" and self.stopped_at is None:
            if self._stored_target_matches(args):  # resumed with rollback_store='disk': the verified target survived
                self._snapshot_file = _rollback_file(args)
                return
            # Resumed (or stored baseline): the weights in memory have not been checked yet; check them now so a
            # rollback has a verified target.
            self._evaluate(args, state, control, model, processing_class)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Any = None, processing_class: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every_n_steps == 0 and state.global_step != self.last_eval_step:
            self._evaluate(args, state, control, model, processing_class)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: Any = None, processing_class: Any = None, **kwargs: Any) -> None:
        if self.check_at_end and self.stopped_at is None and state.global_step != self.last_eval_step:
            self._evaluate(args, state, control, model, processing_class)

    # ---- core ------------------------------------------------------------------------------------------------
    def _check_baseline(self, result: SuiteResult) -> None:
        for r in result:
            if r.error is not None:  # before any training step: a misconfigured benchmark, not a flaky one
                raise SuiteError(f"benchmark {r.name!r} failed while measuring the baseline, before training: "
                                 f"{r.error}. Fix the benchmark (or pass a stored baseline=...) and retry.")
            if math.isnan(r.score):
                raise SuiteError(
                    f"benchmark {r.name!r} scored NaN on the model before training, so there is no baseline to guard. "
                    "Check the evaluator and its data (e.g. texts shorter than 2 tokens), or drop the benchmark."
                )

    def decide(self, result: SuiteResult, step: int) -> dict[str, Any]:
        """What to do after evaluating ``result`` at ``step``, from this callback's state (no side effects).

        Called on rank 0 only; the returned dict is broadcast and applied on every rank.
        """
        checks = compare_to_baseline(SuiteResult.from_dict(self.baseline or {"results": []}), result,
                                     threshold=self.threshold, relative=self.relative,
                                     per_benchmark_thresholds=self._thresholds)
        regressed = [c for c in checks if c.regressed]
        errors = [c for c in checks if c.status == "error"]
        counter = self.patience_counter + 1 if regressed else 0
        act = "none"
        if regressed and counter >= self.patience:
            act = self.action
        elif errors and self.on_error == "stop":
            act = "stop"
        messages = [c.message for c in regressed + errors]
        return {
            "step": step,
            "scores": result.to_dict(),
            "checks": {c.name: {"regression": c.regression, "delta": c.delta, "status": c.status} for c in checks},
            "regressed": [c.name for c in regressed],
            "errors": [c.name for c in errors],
            "within_bounds": not regressed and not errors,
            "counter": counter,
            "act": act,
            "message": "; ".join(messages),
        }

    def _evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any,
                  tokenizer: Any) -> None:
        step = state.global_step
        result = self.suite.evaluate(model, tokenizer, step=step)
        decision = broadcast_object(self.decide(result, step) if rank() == 0 else None)
        self._apply(decision, args, state, control, model)

    def _apply(self, decision: dict[str, Any], args: TrainingArguments, state: TrainerState,
               control: TrainerControl, model: Any) -> None:
        step = decision["step"]
        self.last_eval_step = step
        self.patience_counter = decision["counter"]
        scores = SuiteResult.from_dict(decision["scores"])
        self.history.append({"step": step, "scores": scores.scores, "regressed": decision["regressed"],
                             "errors": decision["errors"], "act": decision["act"],
                             "seconds": round(scores.seconds, 4)})
        logs: dict[str, float] = {}
        for name, check in decision["checks"].items():
            logs[f"{LOG_PREFIX}/{name}"] = scores[name].score
            logs[f"{LOG_PREFIX}/{name}_delta"] = check["delta"]
        logs[f"{LOG_PREFIX}/regressed"] = float(len(decision["regressed"]))
        self._log(args, state, control, logs, f"step {step}")
        if decision["errors"]:
            _warn(f"retention suite at step {step}: {len(decision['errors'])} benchmark(s) failed "
                  f"({', '.join(decision['errors'])}); "
                  + ("stopping training (on_error='stop')." if self.on_error == "stop" else "training continues."))
        if decision["within_bounds"]:
            self.best_step = step
            if self.action == "rollback":
                self._keep_rollback_target(model, args, step)
        act = decision["act"]
        if act == "none":
            if decision["regressed"]:
                _warn(f"retention regression at step {step} ({self.patience_counter}/{self.patience} before acting): "
                      f"{decision['message']}")
            return
        if act == "warn":
            _warn(f"retention regression at step {step}: {decision['message']} (action='warn': training continues)")
            return
        self.stopped_at = step
        control.should_training_stop = True
        if act == "rollback":
            target = self._rollback_target()
            if target is None:
                _warn(f"retention regression at step {step}: {decision['message']}. No in-bounds weights are held, "
                      "so nothing was restored; stopping.")
            else:
                _restore(model, target)
                self.restored_step = self.best_step
                _warn(f"retention regression at step {step}: {decision['message']}. Stopped and restored the weights "
                      f"of step {self.best_step}, the last evaluation within bounds.")
        elif decision["regressed"]:
            _warn(f"retention regression at step {step}: {decision['message']}. Training stopped.")

    # ---- the rollback target ---------------------------------------------------------------------------------
    def _keep_rollback_target(self, model: Any, args: TrainingArguments, step: int) -> None:
        """Copy the trainable weights (every rank takes part in the gather) into memory or, atomically, to disk."""
        snapshot = _snapshot(model)
        if self.rollback_store == "memory":
            self._snapshot = snapshot
            return
        path = _rollback_file(args)
        if rank() == 0:
            _save_snapshot(snapshot, path, step)
        self._snapshot, self._snapshot_file = None, path

    def _rollback_target(self) -> dict[str, torch.Tensor] | None:
        """The weights to restore, on rank 0 (other ranks get ``{}``), or None on every rank when there are none."""
        if self.rollback_store == "memory":
            return self._snapshot
        if self._snapshot_file is None:
            return None
        if rank() != 0:
            return {}
        from safetensors.torch import load_file

        return load_file(self._snapshot_file)

    def _stored_target_matches(self, args: TrainingArguments) -> bool:
        """Whether ``output_dir`` holds the target of ``best_step`` (rank 0 reads the file; all ranks agree)."""
        if self.rollback_store != "disk" or self.best_step is None:
            return False
        found = None
        if rank() == 0 and os.path.isfile(_rollback_file(args)):
            from safetensors import safe_open

            with safe_open(_rollback_file(args), framework="pt") as f:
                found = (f.metadata() or {}).get("step")
        return bool(broadcast_object(found == str(self.best_step)))

    def _log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, float],
             what: str) -> None:
        """Log like `Trainer.log`: into ``state.log_history`` and through every callback's ``on_log`` (the
        reporting integrations), using the CallbackHandler that is calling us.

        `CallbackHandler.on_log` clears ``control.should_log``; we run before the Trainer writes its own logs of this
        step (the training loss), so the flag is put back or that line would be lost."""
        logs = dict(logs)
        if state.epoch is not None:
            logs["epoch"] = state.epoch
        state.log_history.append({**logs, "step": state.global_step})
        report_through_handler(self, args, state, control, logs)
        if rank() == 0:
            shown = ", ".join(f"{k.split('/', 1)[-1]}={v:.4g}" for k, v in logs.items() if k.startswith(LOG_PREFIX))
            logger.info("retention suite (%s): %s", what, shown)


# ---- helpers -------------------------------------------------------------------------------------------------------
def _warn(message: str) -> None:
    if rank() == 0:
        logger.warning(message)


def _as_baseline(baseline: SuiteResult | Mapping[str, Any] | str | os.PathLike[str] | None) -> dict[str, Any] | None:
    if baseline is None:
        return None
    if isinstance(baseline, (str, os.PathLike)):
        return SuiteResult.load(baseline).to_dict()
    if isinstance(baseline, SuiteResult):
        return baseline.to_dict()
    if isinstance(baseline, Mapping):
        return SuiteResult.from_dict(baseline).to_dict()
    raise TypeError(f"baseline must be a SuiteResult, its to_dict() output or a JSON path, got {type(baseline)}.")


def _rollback_file(args: TrainingArguments) -> str:
    return os.path.join(args.output_dir, ROLLBACK_DIR, "weights.safetensors")


def _save_snapshot(snapshot: dict[str, torch.Tensor], path: str, step: int) -> None:
    """Write the rollback target atomically (a crash mid-write leaves the previous target intact)."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    seen: set[int] = set()
    tensors = {}
    for name, tensor in snapshot.items():  # safetensors refuses shared storage (tied weights in a full state dict)
        ptr = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.clone() if ptr in seen else tensor.contiguous()
        seen.add(ptr)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"step": str(step)})
    os.replace(tmp, path)


def _is_zero3(model: Any) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _is_fsdp2(model: Any) -> bool:
    """FSDP2 is recognised by its modules, not its parameters: after an evaluation forward the root's parameters
    are gathered plain tensors, and writing into those would be lost at the next reshard."""
    if not fsdp2_modules(model):
        return False
    reshard_fsdp2(model)
    return True


@torch.no_grad()
def _snapshot(model: Any) -> dict[str, torch.Tensor]:
    """A CPU copy of the full trainable weights, kept on rank 0 only (every rank calls this): gathered from ZeRO-3
    partitions or FSDP2 shards, copied locally from replicated (DDP, ZeRO-1/2) or single-process weights."""
    if _is_zero3(model):
        import deepspeed

        named = _trainable(model)
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().to("cpu", copy=True) for n, p in named} if rank() == 0 else {}
    if _is_fsdp2(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Replicated weights are identical on every rank: one copy on rank 0 is enough (`_restore` broadcasts it).
    return {n: p.detach().to("cpu", copy=True) for n, p in _trainable(model)} if rank() == 0 else {}


def _trainable(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters training can change; frozen ones (a PEFT base model) need no copy."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@torch.no_grad()
def _restore(model: Any, snapshot: dict[str, torch.Tensor]) -> None:
    """Write a `_snapshot` back into the (possibly sharded) model; every rank calls it."""
    if _is_zero3(model):
        import deepspeed

        named = _trainable(model)
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=0):
            if rank() == 0:
                for n, p in named:
                    p.data.copy_(snapshot[n].to(p.device, p.dtype))
        return
    if _is_fsdp2(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, snapshot,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return
    for n, p in _trainable(model):
        if rank() == 0:
            p.data.copy_(snapshot[n].to(p.device, p.dtype))
        if is_distributed():
            torch.distributed.broadcast(p.data, src=0)
