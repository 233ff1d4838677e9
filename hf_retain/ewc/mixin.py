"""`EWCMixin`: add lambda/2 * sum F (theta - theta*)^2 to any Trainer, once per optimizer step, on any backend.

Compose it left of your Trainer and turn it on with ``RetentionConfig(ewc_lambda=...)``:

    >>> from transformers import Trainer
    >>> from hf_retain.ewc import EWCMixin
    >>> class EWCTrainer(EWCMixin, Trainer): ...
    >>> # EWCTrainer(model, args, train_dataset=ds, retention=RetentionConfig(ewc_lambda=100.0,
    >>> #            ewc_fisher_dataset="general.jsonl")).train()

At train begin (before accelerate wraps and shards the model) it loads ``ewc_fisher`` or estimates the Fisher on
``ewc_fisher_dataset`` (else the replay data, else the training data); ``ewc_mode="l2sp"`` uses uniform importance
anchored at the train-begin weights. The Fisher and anchors are then laid out like the parameters:

* one process, DDP, ZeRO-1/2: full tensors; every rank adds the same term and gradient averaging keeps it;
* FSDP2: local shards of the DTensor parameters; the term acts elementwise on each rank's shard and its gradient
  goes straight into that shard's ``.grad`` (no averaging), so the sum over ranks is the single-process gradient;
* ZeRO-3: slices matching each parameter's partition; the term is taken in a forward pre-hook, where DeepSpeed has
  gathered the parameter, on this rank's slice only, scaled by the world size to undo DeepSpeed's gradient mean.

The penalty's gradient is added on the first micro-batch of each optimizer step, weighted so that it counts exactly
once whatever the gradient accumulation; the term is zero-valued, so the Trainer's logged ``loss`` stays the task
loss, and ``ewc_penalty`` (its value at the current weights) is logged beside it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from hf_retain.data.loading import load_text_dataset
from hf_retain.distributed import rank, world_size
from hf_retain.ewc.fisher import FisherError, FisherState, estimate_fisher, trainable_parameters
from hf_retain.mixin import RetentionMixin

logger = logging.getLogger(__name__)

__all__ = ["EWCMixin", "EWCPenalty"]

_FISHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


class _ForeachPenaltyGrad(torch.autograd.Function):
    """Zero-valued in the forward, lam * F * (theta - anchor) in the backward, over many tensors with foreach kernels.

    The training step only needs the penalty's gradient; its value is only for logs, so `EWCPenalty.value` computes
    it when the Trainer logs. This keeps the per-step cost to three fused passes over the parameters."""

    @staticmethod
    def forward(ctx, lam: float, fisher: list, anchors: list, *params: torch.Tensor) -> torch.Tensor:
        ctx.lam, ctx.fisher, ctx.anchors, ctx.params = lam, fisher, anchors, params
        return torch.zeros((), dtype=torch.float32, device=anchors[0].device)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        params = ctx.params
        local = [p.to_local() if _is_dtensor(p) else p for p in params]
        grads = torch._foreach_sub(local, ctx.anchors)  # the one allocation; everything else is in place
        if ctx.fisher:
            if ctx.fisher[0].dtype == grads[0].dtype:
                torch._foreach_mul_(grads, ctx.fisher)
            else:  # a bfloat16 Fisher on float32 parameters: promote
                grads = torch._foreach_mul(grads, ctx.fisher)
        scale = ctx.lam * grad_out
        if not bool(scale == 1):
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        out = []
        for p, g in zip(params, grads):
            if g.dtype != p.dtype:
                g = g.to(p.dtype)
            if _is_dtensor(p):
                from torch.distributed.tensor import DTensor

                g = DTensor.from_local(g, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                       stride=p.stride())
            out.append(g)
        return (None, None, None, *out)


class EWCPenalty:
    """The Fisher and anchors of a `FisherState` laid out like ``model``'s parameters (full, FSDP2 shards or ZeRO-3
    partitions), the penalty's gradient and its value ``lam/2 * sum F (theta - theta*)^2``.

    Per training forward: ``begin()``, run the model, ``term = finish()``, add ``term`` to the loss. ``term`` is zero
    valued (the reported loss stays the task loss) but its gradient w.r.t. the parameters is this rank's share of
    ``lam * F * (theta - theta*)`` (the whole of it on replicated layouts; ZeRO-3 scales its slice by the world size
    to undo DeepSpeed's gradient mean). `value()` is the full penalty, identical on every rank.

    Example:
        >>> import torch
        >>> from hf_retain import FisherState
        >>> model = torch.nn.Linear(2, 1)
        >>> penalty = EWCPenalty(model, FisherState.uniform(model), lam=2.0)
        >>> with torch.no_grad():
        ...     model.bias += 3.0
        >>> penalty.begin(); term = penalty.finish(); term.backward()
        >>> float(term), float(model.bias.grad), penalty.value()   # 0, 2 * 3, 2/2 * 3^2
        (0.0, 6.0, 9.0)
    """

    def __init__(self, model: torch.nn.Module, state: FisherState, lam: float) -> None:
        if not (isinstance(lam, (int, float)) and 0.0 <= lam < float("inf")):
            raise FisherError(f"EWC lambda={lam!r} must be a finite number >= 0.")
        params = trainable_parameters(model)
        state.check_compatible(params)
        self.lam = float(lam)
        self.uniform = state.method == "uniform"
        self.world = 1
        self.sharded = False
        # params, F, anchors; on one process they share storage with the state (`.to` is a no-op there)
        self._replicated: tuple[list, list, list] = ([], [], [])
        self._zero3: dict[int, tuple[torch.nn.Parameter, int, int, torch.Tensor | None, torch.Tensor]] = {}
        self._pending: list[torch.Tensor] = []
        self._seen: set[int] = set()
        self._armed = False
        self._hooks: list[Any] = []
        for name, param in params.items():
            fisher = None if self.uniform else state.fisher[name]
            anchor = state.anchor[name]
            if getattr(param, "ds_id", None) is not None:
                self._add_zero3(param, fisher, anchor)
            elif _is_dtensor(param):
                self.sharded = True
                from torch.distributed.tensor import distribute_tensor

                def shard(t: torch.Tensor, p: torch.Tensor = param) -> torch.Tensor:
                    return distribute_tensor(t.to(p.device), p.device_mesh, p.placements).to_local()

                self._add_replicated(param, None if fisher is None else shard(fisher), shard(anchor.to(param.dtype)))
            else:
                self._add_replicated(param, fisher, anchor)
        if self._zero3:
            self.sharded, self.world = True, world_size()
            self._register_zero3_hooks(model)

    # ---- layouts -----------------------------------------------------------------------------------------------
    def _add_replicated(self, param, fisher, anchor) -> None:
        self._replicated[0].append(param)
        if fisher is not None:
            self._replicated[1].append(fisher.to(param.device))
        self._replicated[2].append(anchor.to(device=param.device, dtype=param.dtype))

    def _add_zero3(self, param, fisher, anchor) -> None:
        part = param.ds_tensor.ds_numel  # every rank holds `part` elements of the flattened parameter (padded)
        start = min(rank() * part, param.ds_numel)
        end = min(start + part, param.ds_numel)
        device = param.ds_tensor.device
        local_f = None if fisher is None else fisher.reshape(-1)[start:end].to(device).clone()
        local_a = anchor.reshape(-1)[start:end].to(device=device, dtype=param.ds_tensor.dtype).clone()
        self._zero3[id(param)] = (param, start, end, local_f, local_a)

    def _register_zero3_hooks(self, model: torch.nn.Module) -> None:
        for module in model.modules():
            owned = [p for p in module.parameters(recurse=False) if id(p) in self._zero3]
            if owned:
                self._hooks.append(module.register_forward_pre_hook(self._make_hook(owned)))

    def _make_hook(self, owned: list[torch.nn.Parameter]):
        def hook(module, args):
            if not self._armed or not torch.is_grad_enabled():  # e.g. a no-grad teacher forward through the model
                return
            for param in owned:
                if id(param) in self._seen:  # tied weights, or a module called twice: count once
                    continue
                self._seen.add(id(param))
                _, start, end, fisher, anchor = self._zero3[id(param)]
                if end <= start:
                    continue
                local = param.reshape(-1)[start:end]  # DeepSpeed has gathered the full parameter here
                with torch.no_grad():
                    grad = local - anchor
                    if fisher is not None:
                        grad.mul_(fisher)
                    grad.mul_(self.lam * self.world)
                surrogate = (local * grad).sum()  # gradient w.r.t. the slice: `grad`; value dropped in finish()
                self._pending.append(surrogate - surrogate.detach())

        return hook

    # ---- penalty -----------------------------------------------------------------------------------------------
    def begin(self) -> None:
        self._armed, self._pending, self._seen = True, [], set()

    def finish(self) -> torch.Tensor:
        """A zero-valued term whose gradient is this rank's share of the penalty gradient."""
        self._armed = False
        params, fisher, anchors = self._replicated
        terms: list[torch.Tensor] = []
        if params:
            terms.append(_ForeachPenaltyGrad.apply(self.lam, fisher, anchors, *params))
        if self._zero3:
            if len(self._seen) != len(self._zero3):
                raise FisherError(f"EWC under ZeRO-3 saw {len(self._seen)} of {len(self._zero3)} parameters in the "
                                  "forward pass; parameters used outside module forwards cannot be penalised.")
            terms.extend(self._pending)
            self._pending = []
        return torch.stack([t.float() for t in terms]).sum() if len(terms) > 1 else terms[0]

    @torch.no_grad()
    def value(self) -> float:
        """``lam/2 * sum F (theta - theta*)^2`` at the current weights (all-reduced when sharded: call it on every
        rank)."""
        total = torch.zeros((), dtype=torch.float64)
        params, fisher, anchors = self._replicated
        if params:
            local = [p.to_local() if _is_dtensor(p) else p for p in params]
            diffs = torch._foreach_sub(local, anchors)
            weighted = torch._foreach_mul(diffs, fisher) if fisher else diffs
            torch._foreach_mul_(weighted, diffs)  # F d^2 >= 0, so its sum is the L1 norm: one fused call
            total += torch.stack([n.double().cpu() for n in torch._foreach_norm(weighted, 1)]).sum()
        for param, start, end, fis, anchor in self._zero3.values():
            if end > start:  # outside forward ZeRO-3 keeps this rank's partition in ds_tensor
                diff = (param.ds_tensor.reshape(-1)[: end - start] - anchor).double()
                total += ((diff.square() * fis.double()).sum() if fis is not None else diff.square().sum()).cpu()
        if self.sharded:
            import torch.distributed as dist

            device = anchors[0].device if anchors else next(iter(self._zero3.values()))[4].device
            total = total.to(device)
            dist.all_reduce(total)
        return float(total) * self.lam / 2.0

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


class EWCMixin(RetentionMixin):
    """EWC / L2-SP penalty for any Trainer subclass, driven by ``retention.ewc_*`` (a no-op when
    ``ewc_lambda == 0``). Use `set_fisher_state` to give it a `FisherState` you estimated yourself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ewc_state: FisherState | None = None
        self._ewc_penalty: EWCPenalty | None = None
        self._ewc_applied_step = -1
        if self._ewc_on:
            self.add_log_gauge("ewc_penalty", self._ewc_penalty_value)

    # ---- public --------------------------------------------------------------------------------------------------
    @property
    def fisher_state(self) -> FisherState | None:
        """The full (unsharded, CPU) Fisher state in use, for saving or `FisherState.merge` after training."""
        return self._ewc_state

    def set_fisher_state(self, state: FisherState) -> None:
        """Use ``state`` (from `estimate_fisher` or `FisherState.load`) instead of estimating at train begin."""
        if not isinstance(state, FisherState):
            raise TypeError(f"set_fisher_state wants a FisherState, got {type(state).__name__}.")
        state.check_compatible(self.model)  # type: ignore[attr-defined]
        self._ewc_state = state.to(device="cpu")
        self._drop_penalty()

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    @property
    def _ewc_on(self) -> bool:
        return self.retention.ewc_lambda > 0

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        self._ewc_applied_step = -1
        if self._ewc_on and self._ewc_state is None and not self._ewc_resume_has_state(resume_from_checkpoint):
            self._ewc_state = self._ewc_initial_state()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _ewc_resume_has_state(self, resume: str | bool | None) -> bool:
        if resume is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume = get_last_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
        return bool(resume) and FisherState.exists(str(resume))

    def _ewc_initial_state(self) -> FisherState:
        cfg = self.retention
        model = self.model  # type: ignore[attr-defined]
        if cfg.ewc_mode == "l2sp":
            return FisherState.uniform(model).to(device="cpu")
        state = None
        if cfg.ewc_fisher:
            state = FisherState.load(cfg.ewc_fisher)
            state.check_compatible(model)
        if state is None or cfg.ewc_fisher_dataset:
            data, collator = self._ewc_fisher_data()
            fresh = estimate_fisher(model, data, method=cfg.ewc_fisher_method, num_samples=cfg.ewc_fisher_samples,
                                    batch_size=self.args.per_device_train_batch_size,  # type: ignore[attr-defined]
                                    collator=collator)
            state = fresh if state is None else state.merge(fresh, cfg.ewc_online_decay)
        state = state.normalized(cfg.ewc_fisher_normalize)
        return state.to(device="cpu", dtype=_FISHER_DTYPES[cfg.ewc_fisher_dtype])

    def _ewc_fisher_data(self) -> tuple[Any, Any]:
        """Rows to estimate on: ``ewc_fisher_dataset``, else ``replay_dataset``, else the training data (collated
        by the Trainer's own collator, so the Fisher sees exactly the labels training uses)."""
        source = self.retention.ewc_fisher_dataset or self.retention.replay_dataset
        if source is None:
            dataset = self.train_dataset  # type: ignore[attr-defined]
            if dataset is None or not hasattr(dataset, "__getitem__"):
                raise FisherError("EWC needs data to estimate the Fisher: set RetentionConfig.ewc_fisher_dataset "
                                  "(or ewc_fisher, a saved FisherState), or give the Trainer a map-style "
                                  "train_dataset.")
            keep = ("input_ids", "attention_mask", "labels", "completion_mask", "assistant_masks")
            count = min(len(dataset), self.retention.ewc_fisher_samples)
            rows = [{k: v for k, v in dataset[i].items() if k in keep} for i in range(count)]
            collator = self.data_collator  # type: ignore[attr-defined]
            from transformers.data.data_collator import default_data_collator

            if collator is None or collator is default_data_collator:  # it cannot pad; estimate_fisher's own can
                return rows, None

            def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
                out = dict(collator(batch))
                return {k: v for k, v in out.items() if k in ("input_ids", "attention_mask", "labels")}

            return rows, collate
        dataset = load_text_dataset(source, max_samples=self.retention.ewc_fisher_samples)
        if "input_ids" in dataset.column_names:
            return [{"input_ids": ids, "labels": ids} for ids in dataset["input_ids"]], None
        tokenizer = self.processing_class  # type: ignore[attr-defined]
        if "text" not in dataset.column_names:
            which = "ewc_fisher_dataset" if self.retention.ewc_fisher_dataset else "replay_dataset"
            raise FisherError(
                f"Cannot estimate the EWC Fisher on {source} (RetentionConfig.{which}): it has columns "
                f"{dataset.column_names}, and EWC reads a 'text' column to tokenise (or pre-tokenised 'input_ids'). "
                "Rename the column holding the text to 'text', or set ewc_fisher_dataset to data that has one."
            )
        if tokenizer is None:
            raise FisherError(f"Cannot tokenize the Fisher dataset {source!r}: the Trainer needs "
                              "processing_class=tokenizer (or give the dataset 'input_ids').")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # processors wrap a tokenizer
        max_length = getattr(self.args, "max_length", None) or 1024  # type: ignore[attr-defined]
        encoded = tokenizer(list(dataset["text"]), truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": ids, "labels": ids} for ids in encoded if len(ids) >= 2], None

    def _drop_penalty(self) -> None:
        if self._ewc_penalty is not None:
            self._ewc_penalty.remove()
        self._ewc_penalty = None

    def _ewc_layout(self, model: Any) -> EWCPenalty:
        if self._ewc_penalty is None:
            if self._ewc_state is None:  # e.g. compute_loss called without train()
                self._ewc_state = self._ewc_initial_state()
            self._ewc_penalty = EWCPenalty(model, self._ewc_state, self.retention.ewc_lambda)
        return self._ewc_penalty

    # ---- loss ----------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = self.state.global_step  # type: ignore[attr-defined]
        if (not self._ewc_on or not (model.training and torch.is_grad_enabled())
                or self._ewc_applied_step == step):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        # First micro-batch of this optimizer step: add the penalty here and only here (theta is fixed during
        # the accumulation window, so once is exact and the other micro-batches skip the work).
        penalty = self._ewc_layout(model)
        penalty.begin()
        try:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        finally:
            penalty._armed = False
        self._ewc_applied_step = step
        term = penalty.finish()  # zero-valued: the reported loss stays the task loss
        # Trainer.training_step divides the loss by the accumulation steps unless it is already normalised over
        # the window; undo that so the gradient holds the penalty exactly once.
        weight = 1.0 if self.loss_is_window_normalized(num_items_in_batch) else float(self.accumulation_steps)
        if return_outputs:
            loss, outputs = result
            return loss + weight * term, outputs
        return result + weight * term

    def _ewc_penalty_value(self) -> float | None:
        """The penalty at the current weights, for the training logs (all-reduced when sharded: every rank logs)."""
        return self._ewc_penalty.value() if self._ewc_penalty is not None else None

    # ---- state ---------------------------------------------------------------------------------------------------
    def save_retention_state(self, checkpoint_dir: str) -> None:
        super().save_retention_state(checkpoint_dir)
        if self._ewc_on and self._ewc_state is not None and self.is_world_process_zero():  # type: ignore[attr-defined]
            self._ewc_state.save(checkpoint_dir)

    def load_retention_state(self, checkpoint_dir: str) -> None:
        super().load_retention_state(checkpoint_dir)
        if self._ewc_on and FisherState.exists(checkpoint_dir):
            # Without the file, train() estimates the state again before the checkpoint's weights are loaded, i.e.
            # from the model as passed to the Trainer (see EWCMixin.train).
            skip = (
                "To resume without it, delete that file: EWC then estimates the Fisher and anchors again when "
                "training resumes (one more estimation pass), from the model passed to the Trainer, before the "
                "checkpoint's weights are loaded, on the same Fisher data. That matches the original run only if you "
                "pass the model the run started from (and for ewc_fisher_method='true' only up to the labels it "
                "samples); from any other model the penalty pulls toward other weights."
            )
            state = FisherState.load(checkpoint_dir, how_to_skip=skip)
            state.check_compatible(self.model)  # type: ignore[attr-defined]
            self._ewc_state = state
            self._drop_penalty()

