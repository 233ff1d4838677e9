"""Fisher information for EWC: `estimate_fisher` and the `FisherState` it returns.

EWC weighs each parameter's drift by how much the earlier task's loss depends on it, the diagonal of the Fisher
information. Most implementations square the gradient of a whole *batch*, which is biased (cross terms between
samples cancel) and depends on the batch size. `estimate_fisher(method="empirical")` computes the real thing: the
mean over samples of the squared gradient of each sample's own loss, exactly as the model computes it for a batch of
one, but batched with `torch.func` per-sample gradients (``vmap(grad(...))``) so it runs near training speed.

Example:
    >>> import torch
    >>> from hf_retain import build_tiny_model, estimate_fisher
    >>> model = build_tiny_model(num_hidden_layers=2)
    >>> rows = [{"input_ids": list(range(3, 19)), "labels": list(range(3, 19))}] * 4
    >>> state = estimate_fisher(model, rows, method="empirical", batch_size=2)
    >>> state.num_samples, state.method
    (4, 'empirical')
    >>> bool(all((f >= 0).all() for f in state.fisher.values()))
    True
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_retain.distributed import is_distributed, rank, world_size
from hf_retain.errors import FisherError, StateFileError
from hf_retain.state import load_safetensors_state, save_safetensors_atomic

__all__ = ["FisherState", "FisherError", "estimate_fisher", "trainable_parameters", "FISHER_METHODS"]

FISHER_METHODS = ("empirical", "true", "batch")
_FORMAT_VERSION = 1
_STATE_FILE = "ewc_fisher.safetensors"
IGNORE_INDEX = -100
# Prefixes wrappers add to parameter names (torch.compile, activation checkpointing, FSDP1); the same parameter
# must have the same name before and after the Trainer wraps the model.
_WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")




def clean_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """``{name: parameter}`` of the parameters that train (so a PEFT model yields only its adapters)."""
    model = _unwrap(model)
    return {clean_name(n): p for n, p in model.named_parameters() if p.requires_grad}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DDP / DeepSpeed engines keep the real module in `.module`; estimation works on the real module.
    while isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        model = model.module
    return model


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class FisherState:
    """Per-parameter importance (``fisher``) and the values to stay close to (``anchor``).

    ``fisher`` is empty for ``method="uniform"`` (L2-SP: every parameter weighs 1). ``fingerprint`` lists
    ``(name, shape, dtype)`` of the model's trainable parameters, so a state is never applied to another model.
    Anchors always keep the parameters' own dtype (rounding them would move the anchor by more than fine-tuning
    moves the weights); only the Fisher may be stored in bfloat16.

    Example (online EWC over two tasks, Schwarz et al. 2018):
        >>> import torch
        >>> a = FisherState({"w": torch.ones(2)}, {"w": torch.zeros(2)}, "empirical", 8)
        >>> b = FisherState({"w": torch.full((2,), 2.0)}, {"w": torch.ones(2)}, "empirical", 8)
        >>> merged = a.merge(b, decay=0.5)
        >>> merged.fisher["w"].tolist(), merged.anchor["w"].tolist()
        ([2.5, 2.5], [1.0, 1.0])
    """

    fisher: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]
    method: str
    num_samples: int
    fingerprint: list[tuple[str, list[int], str]] = field(default_factory=list)
    normalization: str | None = None

    def __post_init__(self) -> None:
        if not self.anchor:
            raise FisherError("FisherState has no parameters; the model has no trainable parameters.")
        if self.method != "uniform" and set(self.fisher) != set(self.anchor):
            missing = sorted(set(self.anchor) ^ set(self.fisher))
            raise FisherError(f"FisherState fisher and anchor name different parameters, e.g. {missing[0]!r}.")
        if not self.fingerprint:
            self.fingerprint = [(n, list(t.shape), _dtype_name(t.dtype)) for n, t in self.anchor.items()]
        self.check_finite()

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def uniform(cls, model: torch.nn.Module) -> FisherState:
        """L2-SP: uniform importance, anchored at the model's current trainable weights."""
        return cls({}, _anchors(model), "uniform", 0)

    # ---- checks ----------------------------------------------------------------------------------------------
    def check_finite(self) -> None:
        for name, tensor in self.fisher.items():
            if not torch.isfinite(tensor).all():
                raise FisherError(f"Fisher of parameter {name!r} has NaN/inf values; the estimation diverged "
                                  "(check the data for empty rows and the model for NaN weights) or the file is "
                                  "corrupt. Re-estimate it.")
            if (tensor < 0).any():
                raise FisherError(f"Fisher of parameter {name!r} has negative values; a Fisher is a mean of squares.")
        for name, tensor in self.anchor.items():
            if not torch.isfinite(tensor).all():
                raise FisherError(f"Anchor of parameter {name!r} has NaN/inf values; the model it was taken from "
                                  "had diverged. Use a healthy checkpoint.")

    def check_compatible(self, model_or_params: torch.nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Raise `FisherError` naming the first parameter where the model and this state disagree."""
        params = (trainable_parameters(model_or_params) if isinstance(model_or_params, torch.nn.Module)
                  else dict(model_or_params))
        expected = {name: (shape, dtype) for name, shape, dtype in self.fingerprint}
        for name, param in params.items():
            if name not in expected:
                raise FisherError(f"The Fisher state has no entry for trainable parameter {name!r}: it was estimated "
                                  "on a different model (or with other trainable parameters). Re-estimate it on this "
                                  "model.")
            shape = list(_full_shape(param))
            if shape != list(expected[name][0]):
                raise FisherError(f"Parameter {name!r} has shape {shape} in the model but {expected[name][0]} in the "
                                  "Fisher state: it was estimated on a different model. Re-estimate it.")
        for name in expected:
            if name not in params:
                raise FisherError(f"The Fisher state has parameter {name!r}, which is not a trainable parameter of "
                                  "this model: it was estimated on a different model. Re-estimate it.")

    # ---- transformations -------------------------------------------------------------------------------------
    def merge(self, other: FisherState, decay: float) -> FisherState:
        """Online EWC: ``decay * self.fisher + other.fisher``, anchored at ``other`` (the newer task's weights)."""
        if not 0.0 <= decay <= 1.0 or math.isnan(decay):
            raise FisherError(f"merge decay={decay!r} must be in [0, 1] (1 keeps all past importance).")
        if "uniform" in (self.method, other.method):
            raise FisherError("Cannot merge a uniform (L2-SP) state; merge Fisher estimates only.")
        if [f[:2] for f in self.fingerprint] != [f[:2] for f in other.fingerprint]:
            first = next((a[0] for a, b in zip(self.fingerprint, other.fingerprint) if a[:2] != b[:2]),
                         "(different number of parameters)")
            raise FisherError(f"Cannot merge Fisher states of different models; first mismatch at {first!r}.")
        fisher = {}
        for name, value in other.fisher.items():
            old = self.fisher[name].to(device=value.device, dtype=torch.float32)
            fisher[name] = (old.mul_(decay).add_(value.float())).to(value.dtype)
        return FisherState(fisher, dict(other.anchor), other.method, self.num_samples + other.num_samples,
                           list(other.fingerprint), other.normalization)

    def normalized(self, mode: str | None) -> FisherState:
        """Divide the Fisher by its global ``"max"`` (values in [0, 1]) or ``"mean"`` (mean 1), so one lambda
        transfers between models and datasets; ``None`` returns self."""
        if mode is None or self.method == "uniform":
            return self
        if mode not in ("max", "mean"):
            raise FisherError(f"Fisher normalization {mode!r} is not one of 'max', 'mean', None.")
        values = list(self.fisher.values())
        if mode == "max":
            scale = torch.stack([v.float().max() for v in values]).max()
        else:
            scale = sum(v.float().sum() for v in values) / sum(v.numel() for v in values)
        if not scale > 0:
            raise FisherError("The Fisher is all zeros, so it cannot be normalized; the data gave no gradient.")
        fisher = {n: (v.float() / scale).to(v.dtype) for n, v in self.fisher.items()}
        return FisherState(fisher, self.anchor, self.method, self.num_samples, self.fingerprint, mode)

    def to(self, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> FisherState:
        """Move (e.g. ``device="cpu"`` to offload between tasks) and/or store the Fisher in ``dtype`` (e.g.
        ``torch.bfloat16`` halves it). Anchors only move: they keep the parameters' dtype."""
        fisher = {n: v.to(device=device, dtype=dtype or v.dtype) for n, v in self.fisher.items()}
        anchor = {n: v.to(device=device) for n, v in self.anchor.items()}
        return FisherState(fisher, anchor, self.method, self.num_samples, self.fingerprint, self.normalization)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.fisher.values(), *self.anchor.values()])

    # ---- files -----------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``ewc_fisher.safetensors`` (tensors + JSON metadata) into ``directory`` atomically; returns the
        file."""
        tensors = {f"fisher/{n}": v.detach().contiguous().cpu() for n, v in self.fisher.items()}
        tensors.update({f"anchor/{n}": v.detach().contiguous().cpu() for n, v in self.anchor.items()})
        metadata = {"hf_retain": json.dumps({
            "format_version": _FORMAT_VERSION, "method": self.method, "num_samples": self.num_samples,
            "normalization": self.normalization, "fingerprint": self.fingerprint,
        })}
        return save_safetensors_atomic(tensors, Path(directory) / _STATE_FILE, metadata=metadata)

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], device: torch.device | str = "cpu", *, how_to_skip: str | None = None
    ) -> FisherState:
        """Read what `save` wrote (a folder, or the ``.safetensors`` file itself).

        A truncated or corrupt file raises `StateFileError` naming it and ending with ``how_to_skip`` (by default:
        save or estimate the state again); a checkpoint's loader passes how to resume without it.
        """
        path = Path(directory)
        if path.is_dir():
            path = path / _STATE_FILE
        if not path.is_file():
            raise FisherError(f"No Fisher state at {path}; save one with FisherState.save(dir) or estimate it with "
                              "hf_retain.estimate_fisher(model, data).")
        skip = how_to_skip or ("Write it again with FisherState.save(dir), or estimate a new one with "
                               "hf_retain.estimate_fisher(model, data).")
        tensors, file_meta = load_safetensors_state(path, what="EWC Fisher state", how_to_skip=skip, device=device)

        def corrupt(problem: str) -> StateFileError:
            return StateFileError(f"The EWC Fisher state {path} {problem}. {skip}")

        raw = file_meta.get("hf_retain")
        if raw is None:
            raise FisherError(f"{path} is a safetensors file without hf_retain metadata; it was not written by "
                              "FisherState.save.")
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            raise corrupt("has corrupt hf_retain metadata (not valid JSON)") from None
        if not isinstance(meta, dict):
            raise corrupt("has corrupt hf_retain metadata (not a JSON object)")
        version = meta.get("format_version", 0)
        if isinstance(version, int) and version > _FORMAT_VERSION:
            raise FisherError(f"{path} has format version {meta['format_version']}; upgrade hf_retain.")
        try:
            fingerprint = [(str(n), [int(x) for x in shape], str(dt)) for n, shape, dt in meta["fingerprint"]]
            method, num_samples = str(meta["method"]), int(meta["num_samples"])
        except (KeyError, TypeError, ValueError):
            raise corrupt("has incomplete hf_retain metadata (fingerprint, method or num_samples missing or "
                          "malformed)") from None
        fisher, anchor = {}, {}
        for key, tensor in tensors.items():
            kind, _, name = key.partition("/")
            if kind not in ("fisher", "anchor") or not name:
                raise corrupt(f"holds tensor {key!r}, which FisherState.save never writes")
            (fisher if kind == "fisher" else anchor)[name] = tensor
        order = [n for n, _, _ in fingerprint]
        lacking = [n for n in order if n not in anchor or (method != "uniform" and n not in fisher)]
        if lacking:
            raise corrupt(f"lacks the tensors of parameter {lacking[0]!r} that its fingerprint lists")
        return cls({n: fisher[n] for n in order if n in fisher}, {n: anchor[n] for n in order}, method,
                   num_samples, fingerprint, meta.get("normalization"))

    @staticmethod
    def exists(directory: str | os.PathLike[str]) -> bool:
        return (Path(directory) / _STATE_FILE).is_file()


def _full_shape(param: torch.Tensor) -> torch.Size:
    ds_shape = getattr(param, "ds_shape", None)  # DeepSpeed ZeRO-3 placeholder
    return torch.Size(ds_shape) if ds_shape is not None else param.shape  # DTensor.shape is the global shape


def _anchors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    params = trainable_parameters(model)
    if not params:
        raise FisherError("The model has no trainable parameters (requires_grad=False everywhere); unfreeze the "
                          "parameters to protect, or attach the PEFT adapters first.")
    with _gathered_if_zero3(model):
        for name, param in params.items():
            if type(param).__name__ == "DTensor":
                raise FisherError(f"Parameter {name!r} is an FSDP2 shard; take anchors and estimate the Fisher on "
                                  "the model before fully_shard / accelerator.prepare (EWCMixin does this at train "
                                  "begin).")
        return {n: p.detach().clone() for n, p in params.items()}


# ---- data -------------------------------------------------------------------------------------------------------
def _pad_collate(rows: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (and ``labels`` with -100, ``attention_mask`` with 0)."""
    ids = [torch.as_tensor(r["input_ids"], dtype=torch.long).reshape(-1) for r in rows]
    width = max(len(i) for i in ids)
    batch = {"input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros(len(rows), width, dtype=torch.long)}
    has_labels = ["labels" in r and r["labels"] is not None for r in rows]
    if any(has_labels) and not all(has_labels):
        raise FisherError("Some rows have 'labels' and some do not; give every row labels or none.")
    if all(has_labels):
        batch["labels"] = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for j, (row, row_ids) in enumerate(zip(rows, ids)):
        batch["input_ids"][j, : len(row_ids)] = row_ids
        mask = row.get("attention_mask")
        batch["attention_mask"][j, : len(row_ids)] = (torch.as_tensor(mask).reshape(-1) if mask is not None else 1)
        if all(has_labels):
            labels = torch.as_tensor(row["labels"], dtype=torch.long).reshape(-1)
            if len(labels) != len(row_ids):
                raise FisherError(f"Row {j} has {len(row_ids)} input_ids but {len(labels)} labels; they must align.")
            batch["labels"][j, : len(labels)] = labels
    return batch


def _iter_batches(
    data: Any, num_samples: int | None, batch_size: int, collator: Any, pad_id: int, rank: int, world: int
) -> Iterator[dict[str, Any]]:
    if isinstance(data, torch.utils.data.DataLoader):
        # A DataLoader brings its own batching (and, prepared by accelerate, its own sharding across ranks).
        seen = 0
        for batch in data:
            batch = dict(batch)
            size = len(batch["input_ids"])
            if num_samples is not None and seen + size > num_samples:
                batch = {k: (v[: num_samples - seen] if torch.is_tensor(v) and v.shape[:1] == (size,) else v)
                         for k, v in batch.items()}
            seen += len(batch["input_ids"])
            yield batch
            if num_samples is not None and seen >= num_samples:
                return
        return
    if isinstance(data, (Mapping, str, bytes)):
        raise FisherError("estimate_fisher data must be a datasets.Dataset, a list of dicts with 'input_ids', or a "
                          f"DataLoader; got {type(data).__name__}.")
    total = len(data)
    count = total if num_samples is None else min(num_samples, total)
    column_names = getattr(data, "column_names", None)
    if column_names is not None and "input_ids" not in column_names and collator is None:
        raise FisherError(f"The dataset has columns {column_names} but no 'input_ids'; tokenize it first "
                          "(dataset.map(lambda r: tokenizer(r['text']))) or pass a collator that builds the batch.")
    mine = list(range(rank, count, world))  # each rank takes every world-th row; sums are all-reduced later
    rows = [data[i] for i in mine]
    if collator is None:
        # Sort by length so chunks hold rows of similar length: less padding, same result (a mean is order-free).
        rows.sort(key=lambda r: len(r["input_ids"]))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        yield dict(collator(chunk)) if collator is not None else _pad_collate(chunk, pad_id)


def _right_aligned(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """input_ids/labels with each row's real tokens first (left padding moved right) and labels at padded
    positions set to -100, so a row computed without an attention mask equals the same row alone."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    labels = batch.get("labels")
    if mask is None:
        return {"input_ids": ids, **({"labels": labels} if labels is not None else {})}
    mask = mask.bool()
    if labels is not None:
        labels = labels.masked_fill(~mask, IGNORE_INDEX)
    lengths = mask.sum(1)
    prefix = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]
    if not torch.equal(prefix, mask):  # not right-padded: pack each row's real tokens to the front
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        ids = ids.gather(1, order)
        labels = labels.gather(1, order).masked_fill(~prefix, IGNORE_INDEX) if labels is not None else None
    width = int(lengths.max())
    out = {"input_ids": ids[:, :width]}
    if labels is not None:
        out["labels"] = labels[:, :width]
    out["lengths"] = lengths
    return out


# ---- estimation -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _estimation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout: vmap needs deterministic forwards) and eager attention (SDPA has no vmap batching
    rule on CPU, so it would fall back to a slow per-sample loop); both restored afterwards."""
    was_training = model.training
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    switched = False
    if attn == "sdpa" and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
            switched = True
        except (ValueError, ImportError, AttributeError):
            switched = False
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        if switched:
            model.set_attn_implementation(attn)


def _gathered_if_zero3(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Gather a ``deepspeed.zero.Init``-partitioned model (before its engine exists) for the duration."""
    params = [p for p in _unwrap(model).parameters()
              if getattr(p, "ds_id", None) is not None and getattr(p.ds_status, "name", "") != "AVAILABLE"]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def estimate_fisher(
    model: torch.nn.Module,
    data: Any,
    *,
    method: str = "empirical",
    num_samples: int | None = None,
    batch_size: int = 8,
    collator: Any = None,
) -> FisherState:
    """Estimate the diagonal Fisher of ``model``'s trainable parameters on ``data``; anchors = current weights.

    * ``data``: a `datasets.Dataset` or list of dicts with ``input_ids`` (and ``labels``; ``attention_mask``
      optional), padded by ``collator`` (default: right-pad, labels -100), or a DataLoader of ready batches (its own
      batch size; ``batch_size`` is ignored). Targets at padded positions (attention_mask 0) never count.
    * ``method="empirical"``: mean over samples of the squared gradient of each sample's loss as the model computes
      it for a batch of one (mean token NLL over labels != -100). Equals a loop of batch-of-one backward passes,
      computed ``batch_size`` samples at a time with ``torch.func.vmap(grad(...))``.
    * ``method="true"``: same, with each target token sampled from the model's own prediction (the actual Fisher;
      labels only mark which positions count, and are optional). Seed with ``torch.manual_seed``.
    * ``method="batch"``: mean over batches of the squared mean-batch gradient. Cheap but biased: it drops the
      per-sample variance and scales with 1/batch_size; use it only to compare with other libraries.

    Accumulates in float32; the model runs in eval mode. Under torch.distributed every rank takes every
    world-th row and the sums are all-reduced, so all ranks get the same state. Run it before FSDP2 / ZeRO-3 shard
    the model (`EWCMixin` does); a model partitioned by ``deepspeed.zero.Init`` is gathered for the estimate.
    """
    if method not in FISHER_METHODS:
        raise FisherError(f"method={method!r} is not one of {list(FISHER_METHODS)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FisherError(f"batch_size={batch_size!r} must be a positive integer.")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 1):
        raise FisherError(f"num_samples={num_samples!r} must be a positive integer or None (all rows).")
    if not isinstance(data, torch.utils.data.DataLoader) and hasattr(data, "__len__") and len(data) == 0:
        raise FisherError("estimate_fisher got empty data; pass rows of the task whose knowledge to protect.")
    model = _unwrap(model)
    config = getattr(model, "config", None)
    pad_id = getattr(config, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    with _gathered_if_zero3(model):
        params = trainable_parameters(model)
        anchor = _anchors(model)
        device = next(iter(params.values())).device
        # float32 accumulation at least (float64 models keep float64)
        sums = {n: torch.zeros(p.shape, dtype=_acc_dtype(p), device=device) for n, p in params.items()}
        counts = torch.zeros(2, dtype=torch.float64, device=device)  # [samples, units averaged over]
        # Rows are split across ranks; a DataLoader is used as given (accelerate may have sharded it). Sums and
        # counts are all-reduced either way, so an unsharded loader just averages identical estimates.
        world = world_size() if not isinstance(data, torch.utils.data.DataLoader) else 1
        with _estimation_mode(model):
            for batch in _iter_batches(data, num_samples, batch_size, collator, pad_id, rank(), world):
                batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                if "input_ids" not in batch:
                    raise FisherError(f"A batch has keys {sorted(batch)} but no 'input_ids'.")
                if method != "true" and batch.get("labels") is None:
                    raise FisherError(
                        f"method={method!r} needs labels, but the data has none. For a causal LM use labels = "
                        "input_ids: dataset.map(lambda r: {'labels': r['input_ids']}) or collator="
                        "DataCollatorForLanguageModeling(tokenizer, mlm=False); or use method='true', which "
                        "samples its labels from the model."
                    )
                if method == "batch":
                    _accumulate_batch(model, params, batch, sums, counts)
                else:
                    _accumulate_per_sample(model, params, batch, sums, counts, sample=(method == "true"))
        if is_distributed() and world_size() > 1:
            import torch.distributed as dist

            names = list(sums)
            flat = torch.cat([sums[n].reshape(-1) for n in names] + [counts.to(sums[names[0]].dtype)])
            dist.all_reduce(flat)
            counts = flat[-2:].double()
            offset = 0
            for n in names:
                numel = sums[n].numel()
                sums[n] = flat[offset:offset + numel].view_as(sums[n])
                offset += numel
    if counts[1] == 0:
        raise FisherError("No row of the data has a target token (every label is -100 or every row is shorter "
                          "than 2 tokens), so there is no gradient to estimate the Fisher from.")
    fisher = {n: s.div_(float(counts[1])) for n, s in sums.items()}
    return FisherState(fisher, anchor, method, int(counts[0]))


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _accumulate_batch(model, params, batch, sums, counts) -> None:
    out = model(**{k: v for k, v in batch.items() if k != "lengths"})
    if out.loss is None:
        raise FisherError("The model returned no loss for a batch with labels; estimate_fisher needs a model that "
                          "computes its loss from `labels` (e.g. *ForCausalLM).")
    grads = torch.autograd.grad(out.loss, list(params.values()), allow_unused=True)
    for (name, _), g in zip(params.items(), grads):
        if g is not None:
            sums[name].add_(g.to(sums[name].dtype).square())
    counts[0] += len(batch["input_ids"])
    counts[1] += 1


def _sample_labels(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution at the positions that count."""
    ids = batch["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    drawn = torch.multinomial(torch.softmax(logits[:, :-1].reshape(-1, logits.shape[-1]), -1), 1).view(ids.shape[0],
                                                                                                      -1)
    if batch.get("labels") is not None:
        counted = batch["labels"][:, 1:] != IGNORE_INDEX
    else:
        counted = torch.arange(1, ids.shape[1], device=ids.device)[None] < batch["lengths"][:, None]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 1:] = torch.where(counted, drawn, IGNORE_INDEX)
    return labels


def _accumulate_per_sample(model, params, batch, sums, counts, *, sample: bool) -> None:
    from torch.func import functional_call, grad, vmap

    extra = set(batch) - {"input_ids", "labels", "attention_mask", "position_ids"}
    if extra:
        raise FisherError(f"Per-sample Fisher supports batches of input_ids/labels/attention_mask; got extra keys "
                          f"{sorted(extra)}. Drop them in the collator or use method='batch'.")
    packed = _right_aligned(batch)
    if "lengths" not in packed:
        packed["lengths"] = torch.full((len(packed["input_ids"]),), packed["input_ids"].shape[1])
    labels = _sample_labels(model, packed) if sample else packed["labels"]
    valid = (labels[:, 1:] != IGNORE_INDEX).any(1)  # a row with no target has no loss (NaN for a batch of one)
    if not valid.any():
        return
    ids, labels = packed["input_ids"][valid], labels[valid]
    names = list(params)
    detached = {n: p.detach() for n, p in params.items()}

    def loss_of_one(p: dict[str, torch.Tensor], row_ids: torch.Tensor, row_labels: torch.Tensor) -> torch.Tensor:
        # Right-padded and without an attention mask, a causal row's real positions see exactly what they see
        # alone; padded positions carry label -100, so the loss is the row's own batch-of-one loss.
        out = functional_call(model, p, args=(), kwargs={"input_ids": row_ids[None], "labels": row_labels[None]})
        return out.loss.to(_acc_dtype(out.loss))

    def squared_grad(p, row_ids, row_labels):
        g = grad(loss_of_one)(p, row_ids, row_labels)
        return {n: g[n].to(_acc_dtype(g[n])).square() for n in names}

    per_sample = vmap(squared_grad, in_dims=(None, 0, 0))(detached, ids, labels)
    for n in names:
        sums[n].add_(per_sample[n].sum(0))
    counts[0] += int(valid.sum())
    counts[1] += int(valid.sum())
