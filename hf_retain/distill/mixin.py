"""`DistillationMixin`: keep the fine-tuned model's next-token distributions close to the model as it was.

Regularising outputs toward the pre-update model (Hinton et al. 2015; LwF) preserves *function* rather than weights;
on the retention benchmark it forgets far less than EWC (README). The mixin adds

    loss = task_loss + distill_alpha * sum_{distilled tokens} D(teacher || student) / (task-loss token count)

so ``distill_alpha`` weighs the per-token divergence against the per-token task loss, and the denominator is the very
one the task loss uses (``num_items_in_batch`` under gradient accumulation, across devices when the Trainer averages
tokens across devices; the local token count otherwise). Distilled tokens are the task-loss tokens (labels != -100
after the shift: SFT completion-only and assistant-only masks, padding), restricted to replayed rows
(`REPLAY_MASK_KEY`) when ``distill_on='replay'``.

The divergence is TRL's math (`hf_retain.distill.divergence`): its chunked generalized-JSD kernel (``beta`` 0 =
forward KL, 1 = reverse KL) for online teachers, which projects the student's and the teacher's final hidden states
through their LM heads tile by tile and never materialises full-vocabulary logits; TRL's GKD ``generalized_jsd_loss``
over the ``top_k + 1`` buckets for the offline teacher. The divergence is computed inside the student's forward (a
hook on its backbone), where FSDP2 and DeepSpeed ZeRO-3 hold the LM head gathered, and works with TRL's fused LM head
(SFTTrainer never builds logits).
``distill_loss`` (mean divergence per distilled token, before ``distill_alpha``) is logged beside ``loss``.

Example (a full fine-tune: the teacher is a frozen snapshot taken when training begins):
    >>> import tempfile, torch
    >>> from datasets import Dataset
    >>> from transformers import PrinterCallback, Trainer, TrainingArguments
    >>> from hf_retain import RetentionConfig, build_tiny_model
    >>> from hf_retain.distill import DistillationMixin
    >>> class DistilTrainer(DistillationMixin, Trainer): ...
    >>> ids = torch.randint(3, 259, (8, 16)).tolist()
    >>> args = TrainingArguments(tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=4, report_to=[],
    ...                          logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True)
    >>> trainer = DistilTrainer(model=build_tiny_model(num_hidden_layers=1), args=args,
    ...                         train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
    ...                         retention=RetentionConfig(distill_alpha=1.0))
    >>> trainer.remove_callback(PrinterCallback)
    >>> _ = trainer.train()
    >>> logged = [row["distill_loss"] for row in trainer.state.log_history if "distill_loss" in row]
    >>> len(logged), logged[0] < 1e-3   # the student starts equal to its teacher
    (2, True)
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from hf_retain.distill.cache import DistillCacheError, OfflineTeacherCache
from hf_retain.distill.divergence import LOG_FLOOR, chunked_divergence_sum, offline_divergence_sum
from hf_retain.distill.teachers import (
    TeacherError,
    TeacherMode,
    backbone_of,
    head_adapter,
    head_parameters,
    is_peft,
    load_path_teacher,
    logit_transform,
    snapshot_teacher,
    teacher_hidden_states,
    vocab_rows,
)
from hf_retain.errors import StateFileError
from hf_retain.mixin import REPLAY_MASK_KEY, RetentionMixin
from hf_retain.state import load_module_state, read_json_state, save_module_atomic, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["DistillationMixin"]

STATE_FILE = "distill_teacher.json"
SNAPSHOT_DIR = "distill_teacher_snapshot"
SNAPSHOT_FILE = "model.safetensors"
# Keys of a batch that are targets or bookkeeping, not model inputs for the teacher's forward.
_NON_INPUT_KEYS = ("labels", "shift_labels", "num_items_in_batch", "completion_mask", "assistant_masks",
                   REPLAY_MASK_KEY)


def _divergence_beta(divergence: str, beta: float) -> float:
    """TRL's convention: beta 0 = forward KL(teacher||student), 1 = reverse KL(student||teacher), else JSD."""
    return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(divergence, float(beta))


def _rows_of(inputs: dict[str, Any], rows: torch.Tensor, batch: int) -> dict[str, Any]:
    """The teacher's model inputs for the selected rows (tensors with a batch dimension are indexed)."""
    out = {}
    for key, value in inputs.items():
        if key in _NON_INPUT_KEYS:
            continue
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
            value = value.index_select(0, rows.to(value.device))
        out[key] = value
    return out


def _to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}


class DistillationMixin(RetentionMixin):
    """Adds ``distill_alpha * D(teacher || student)`` to any Trainer's loss; a strict no-op when distill_alpha is 0.

    Compose it left of the Trainer class: ``class T(EWCMixin, DistillationMixin, SFTTrainer): ...``. Settings come
    from ``RetentionConfig.distill_*``; see this module's docstring for the loss and an example.
    """

    _distill_mode: str | None = None  # "adapters" | "model" | "offline"
    _distill_teacher: Any = None  # as prepared for the engine (a DeepSpeed engine under ZeRO-3)
    _distill_teacher_module: Any = None  # the teacher model itself
    _distill_teacher_mode: TeacherMode | None = None
    _distill_cache: OfflineTeacherCache | None = None
    _distill_prepared: bool = False
    _distill_snapshot_file: str | None = None

    # ---- setup -------------------------------------------------------------------------------------------------
    @property
    def _distill_on(self) -> bool:
        return self.retention.distill_alpha > 0

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if self._distill_on:
            self._distill_begin(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _distill_begin(self, resume_from_checkpoint: str | bool | None) -> None:
        """Build the teacher from the model *before* any step (and before a resume loads newer weights)."""
        cfg = self.retention
        student = self.model  # type: ignore[attr-defined]
        self._distill_prepared, self._distill_teacher, self._distill_cache = False, None, None
        self._distill_teacher_module = self._distill_teacher_mode = None
        if head_adapter(student) and self._sharded():  # head_adapter raises for adapters it cannot project through
            raise TeacherError(
                "the PEFT adapter trains the LM head (LoRA or modules_to_save on it), which distillation supports in "
                "one process and under DDP, not yet under FSDP or DeepSpeed ZeRO-3; leave the head out of the adapter "
                "or train with DDP."
            )
        if cfg.distill_teacher == "base" and is_peft(student):
            self._distill_mode = "adapters"
        elif cfg.distill_teacher == "base":
            self._distill_mode = "model"
            self._distill_teacher = snapshot_teacher(
                student, device=cfg.distill_teacher_device, dtype=cfg.distill_teacher_dtype
            )
            if not resume_from_checkpoint:
                self._write_snapshot()
        elif cfg.distill_teacher == "path":
            self._distill_mode = "model"
            self._distill_teacher = load_path_teacher(
                str(cfg.distill_teacher_path), student, student_tokenizer=self._distill_tokenizer(),
                device=cfg.distill_teacher_device, dtype=cfg.distill_teacher_dtype,
            )
        else:
            self._distill_mode = "offline"
            cache = OfflineTeacherCache(str(cfg.distill_teacher_path))
            cache.check_compatible(
                tokenizer=self._distill_tokenizer(), temperature=cfg.distill_temperature,
                vocab_size=vocab_rows(student), rows=self._train_rows() if cfg.distill_on != "replay" else None,
            )
            self._distill_cache = cache

    def _distill_tokenizer(self) -> Any:
        tok = getattr(self, "processing_class", None)
        tok = getattr(tok, "tokenizer", tok)  # processors wrap their tokenizer
        return tok if hasattr(tok, "get_vocab") else None

    def _train_rows(self) -> list[list[int]] | None:
        """Token rows of the training set, for the cache's dataset fingerprint (None when not a sized dataset)."""
        data = getattr(self, "train_dataset", None)
        if data is None or "input_ids" not in (getattr(data, "column_names", None) or []):
            return None
        try:
            return [list(r) for r in data["input_ids"]]
        except TypeError:  # an IterableDataset cannot be listed; rows are checked one by one while training
            return None

    def _sharded(self) -> bool:
        return bool(getattr(self, "is_fsdp_enabled", False)) or (
            bool(getattr(self, "is_deepspeed_enabled", False)) and self._zero_stage() == 3
        )

    def _zero_stage(self) -> int:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)  # type: ignore[attr-defined]
        return int(plugin.zero_stage) if plugin is not None else 0

    def _write_snapshot(self) -> None:
        """Save the snapshot teacher once per run, so a resume distils toward the original model, not step k."""
        args = self.args  # type: ignore[attr-defined]
        if getattr(args, "save_strategy", "no") == "no" or not args.output_dir:
            return
        folder = os.path.join(args.output_dir, SNAPSHOT_DIR)
        self._distill_snapshot_file = os.path.abspath(os.path.join(folder, SNAPSHOT_FILE))
        if args.should_save:
            save_module_atomic(self._distill_teacher, self._distill_snapshot_file)

    def _distill_prepare(self) -> None:
        """Place a separate teacher under the training engine, for inference (as TRL does for its teachers)."""
        self._distill_prepared = True
        teacher = self._distill_teacher
        if teacher is None:
            if self._distill_mode == "adapters":
                self._distill_teacher_mode = TeacherMode(self.model, disable_adapters=True)  # type: ignore[attr-defined]
            return
        if getattr(self, "is_deepspeed_enabled", False):
            from trl.models import prepare_deepspeed

            self._distill_teacher = prepare_deepspeed(teacher, self.accelerator)  # type: ignore[attr-defined]
        elif getattr(self, "is_fsdp_enabled", False):
            from trl.models.utils import prepare_fsdp

            # Sharded like the student (accelerate's evaluation-mode prepare_model would keep a full replica).
            self._distill_teacher = prepare_fsdp(teacher, self.accelerator)  # type: ignore[attr-defined]
        elif self.retention.distill_teacher_device is None:
            teacher.to(self.args.device)  # type: ignore[attr-defined]
        self._distill_teacher_module = self.accelerator.unwrap_model(self._distill_teacher)  # type: ignore[attr-defined]
        self._distill_teacher_mode = TeacherMode(self._distill_teacher_module)

    # ---- loss --------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._distill_on or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if self._distill_mode is None:
            raise RuntimeError("DistillationMixin was not set up; train through trainer.train().")
        if not self._distill_prepared:
            self._distill_prepare()
        cfg = self.retention
        # Read, not popped: mixins further right may need it too; RetentionMixin drops it before the model's forward.
        replay_rows = inputs.get(REPLAY_MASK_KEY)
        if inputs.get("shift_labels") is not None:
            targets, pre_shifted = inputs["shift_labels"], True
        elif inputs.get("labels") is not None:
            targets, pre_shifted = inputs["labels"][:, 1:], False
        else:
            raise ValueError(
                "DistillationMixin distils the positions of the task loss, but the batch has no 'labels'; use a "
                "collator that sets labels (e.g. DataCollatorForLanguageModeling or SFTTrainer's)."
            )
        task_mask = targets != -100
        mask = task_mask
        if cfg.distill_on == "replay":
            if replay_rows is None:
                raise ValueError(
                    f"distill_on='replay' distils replayed rows only, but the batch has no {REPLAY_MASK_KEY!r}; "
                    "train with hf_retain's ReplayCollator (replay_ratio > 0), or set distill_on='train'."
                )
            mask = mask & replay_rows.to(mask.device).bool().view(-1, 1)

        batch = mask.shape[0]
        rows = mask.any(dim=1).nonzero().flatten()
        distributed = self.accelerator.num_processes > 1  # type: ignore[attr-defined]
        if rows.numel() == 0 and not distributed:  # nothing to distil: skip the teacher entirely
            self.record_metric("distill_loss", torch.zeros((), device=mask.device), 0)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if rows.numel() == 0:  # keep collectives in step across ranks: run one fully masked row
            rows = torch.zeros(1, dtype=torch.long, device=mask.device)
        row_mask = mask.index_select(0, rows)

        student = self.model  # type: ignore[attr-defined]  # the unwrapped model (accelerate's unwrap costs ~4 ms)
        teacher_side = self._teacher_side(student, inputs, rows, batch, pre_shifted)
        if self._distill_mode == "offline":
            row_mask = row_mask & teacher_side["covered"].to(row_mask.device)
        stash: dict[str, Any] = {}
        handle = backbone_of(student).register_forward_hook(
            self._distill_hook(student, rows, row_mask, teacher_side, pre_shifted, stash)
        )
        try:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        finally:
            handle.remove()
        if "sum" not in stash:
            raise RuntimeError("the student's backbone did not run in compute_loss; cannot add the distillation loss.")
        loss, outputs = (result if return_outputs else (result, None))
        denominator, factor = self._distill_denominator(num_items_in_batch, task_mask)
        loss = loss + cfg.distill_alpha * stash["sum"].to(loss.device) * (factor / denominator)
        self.record_metric("distill_loss", stash["sum"].detach(), stash["count"])
        return (loss, outputs) if return_outputs else loss

    def _distill_denominator(self, num_items_in_batch: Any, task_mask: torch.Tensor) -> tuple[Any, float]:
        """The task loss's own normaliser, so alpha weighs per-token divergence against per-token task loss."""
        if self.loss_is_window_normalized(num_items_in_batch) and num_items_in_batch is not None:
            factor = 1.0
            if self.args.average_tokens_across_devices:  # type: ignore[attr-defined]
                tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
                factor = float(self.accelerator.num_processes // tp)  # type: ignore[attr-defined]
            denominator = num_items_in_batch
            if torch.is_tensor(denominator):
                denominator = denominator.clamp(min=1)
            return denominator, factor
        return task_mask.sum().clamp(min=1), 1.0

    @torch.no_grad()
    def _teacher_side(
        self, student: Any, inputs: dict[str, Any], rows: torch.Tensor, batch: int, pre_shifted: bool
    ) -> dict[str, Any]:
        """Everything the teacher contributes, computed before the student's forward (no gradients)."""
        if self._distill_mode == "offline":
            return self._offline_targets(inputs, rows, pre_shifted)
        sub = _rows_of(inputs, rows, batch)
        if self._distill_mode == "adapters":
            hidden = teacher_hidden_states(student, sub, mode=self._distill_teacher_mode)
            return {"hidden": hidden, "model": student}
        teacher = self._distill_teacher_module
        device = next(teacher.parameters()).device
        hidden = teacher_hidden_states(teacher, _to_device(sub, device), mode=self._distill_teacher_mode)
        return {"hidden": hidden, "model": teacher}

    def _offline_targets(self, inputs: dict[str, Any], rows: torch.Tensor, pre_shifted: bool) -> dict[str, Any]:
        if pre_shifted:
            raise DistillCacheError("distill_teacher='offline' does not support pre-shifted labels (packed, "
                                    "context-parallel batches); use an online teacher.")
        cache = self._distill_cache
        assert cache is not None
        input_ids = inputs["input_ids"].index_select(0, rows.to(inputs["input_ids"].device)).cpu()
        attention = inputs.get("attention_mask")
        attention = (attention.index_select(0, rows.to(attention.device)).cpu().bool() if attention is not None
                     else torch.ones_like(input_ids, dtype=torch.bool))
        n_rows, width = input_ids.shape
        k = cache.top_k
        ids = torch.zeros(n_rows, width - 1, k, dtype=torch.long)
        logprobs = torch.full((n_rows, width - 1, k), LOG_FLOOR)
        tail = torch.zeros(n_rows, width - 1)
        covered = torch.zeros(n_rows, width - 1, dtype=torch.bool)
        for r in range(n_rows):
            positions = attention[r].nonzero().flatten()
            if positions.numel() < 2:
                continue
            r_ids, r_lp, r_tail = cache.row(input_ids[r, positions])
            where = positions[:-1]
            ids[r, where], logprobs[r, where], tail[r, where] = r_ids, r_lp, r_tail
            covered[r, where] = True
        return {"ids": ids, "logprobs": logprobs, "tail": tail, "covered": covered}

    def _distill_hook(
        self, student: Any, rows: torch.Tensor, row_mask: torch.Tensor, teacher_side: dict[str, Any],
        pre_shifted: bool, stash: dict[str, Any],
    ):
        """Forward hook on the student's backbone: runs inside the model's forward, where FSDP2/ZeRO-3 have the LM
        head available and register its gradient, and before (or instead of, with TRL's fused head) the logits."""
        cfg = self.retention
        beta = _divergence_beta(cfg.distill_divergence, cfg.distill_beta)

        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if "sum" in stash or not torch.is_grad_enabled():  # a second, metrics-only forward (SFT) is ignored
                return
            hidden = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state
            hidden = hidden.index_select(0, rows.to(hidden.device))
            if not pre_shifted:
                hidden = hidden[:, :-1]
            weight, bias = head_parameters(student)
            scale, softcap = logit_transform(student)
            mask = row_mask.to(hidden.device)
            if self._distill_mode == "offline":
                total = offline_divergence_sum(
                    hidden[mask], weight, bias, teacher_side["ids"].to(hidden.device)[mask],
                    teacher_side["logprobs"].to(hidden.device)[mask], teacher_side["tail"].to(hidden.device)[mask],
                    beta=beta, temperature=cfg.distill_temperature, scale=scale, softcap=softcap,
                )
            else:
                t_model = teacher_side["model"]
                t_hidden = teacher_side["hidden"] if pre_shifted else teacher_side["hidden"][:, :-1]
                # With the adapters teacher and an unadapted head this is the student's own (frozen) head, the same
                # Parameter, so ZeRO-3 gathers it once; the kernel returns no gradient for its teacher inputs.
                t_weight, t_bias = head_parameters(t_model, adapters=self._distill_mode != "adapters")
                t_scale, t_softcap = logit_transform(t_model)
                if not isinstance(t_weight, torch.distributed.tensor.DTensor) and t_weight.device != hidden.device:
                    t_weight = t_weight.to(hidden.device)  # a CPU-offloaded teacher head joins the student's device
                    t_bias = t_bias.to(hidden.device) if t_bias is not None else None
                total = chunked_divergence_sum(
                    hidden, t_hidden, weight, t_weight, mask, beta, student_bias=bias,
                    teacher_bias=t_bias, student_scale=scale, teacher_scale=t_scale, student_softcap=softcap,
                    teacher_softcap=t_softcap, temperature=cfg.distill_temperature,
                )
            stash["sum"] = total
            stash["count"] = int(mask.sum())

        return hook

    # ---- state -------------------------------------------------------------------------------------------------
    def save_retention_state(self, checkpoint_dir: str) -> None:
        if self._distill_on and self.args.should_save:  # type: ignore[attr-defined]
            cfg = self.retention
            state: dict[str, Any] = {"teacher": cfg.distill_teacher, "mode": self._distill_mode, "snapshot": None}
            if self._distill_mode == "model" and cfg.distill_teacher == "base" and self._distill_snapshot_file:
                state["snapshot"] = os.path.relpath(self._distill_snapshot_file, checkpoint_dir)
            if cfg.distill_teacher in ("path", "offline"):
                state["path"] = cfg.distill_teacher_path
            write_json_atomic(os.path.join(checkpoint_dir, STATE_FILE), state, indent=2)
        super().save_retention_state(checkpoint_dir)

    def load_retention_state(self, checkpoint_dir: str) -> None:
        super().load_retention_state(checkpoint_dir)
        if not self._distill_on or self._distill_mode != "model" or self.retention.distill_teacher != "base":
            return
        state_path = os.path.join(checkpoint_dir, STATE_FILE)
        # Without the record, the teacher stays the snapshot _distill_begin took of the model as passed.
        passed = ("the teacher is then the model passed to the Trainer, as it is before the checkpoint's weights "
                  "load, which is right only if that is the model the run started from")
        relative = None
        if os.path.isfile(state_path):
            skip_record = (f"To resume without it, delete that file: {passed}. Or set distill_teacher='path' with "
                           "distill_teacher_path=<the model the run started from>.")
            record = read_json_state(state_path, what="distillation teacher record", how_to_skip=skip_record)
            relative = record.get("snapshot")
            if relative is not None and not isinstance(relative, str):
                raise StateFileError(f"The distillation teacher record {state_path} is corrupt: its 'snapshot' is "
                                     f"{relative!r}, not a file path. {skip_record}")
        if not relative:
            logger.warning(
                "hf_retain: %s has no saved distillation teacher; distilling toward the model as passed to the "
                "Trainer (correct only if that is the original, pre-training model).", checkpoint_dir,
            )
            return
        snapshot = os.path.normpath(os.path.join(checkpoint_dir, relative))
        if not os.path.isfile(snapshot):
            raise TeacherError(
                f"resuming from {checkpoint_dir} needs the teacher snapshot taken when training first began, "
                f"expected at {snapshot} (written once per run). Restore that file, or set distill_teacher='path' "
                "with distill_teacher_path=<the original model>."
            )
        load_module_state(
            self._distill_teacher, snapshot, what="distillation teacher snapshot",
            how_to_skip=(f"It is a copy of the model the run started from, taken once per run. To resume without "
                         f"it, set distill_teacher='path' with distill_teacher_path=<that model>; or delete "
                         f"{state_path}: {passed}."),
        )
        self._distill_snapshot_file = os.path.abspath(snapshot)

