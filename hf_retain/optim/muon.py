"""Muon for Hugging Face models: hidden matrices get Muon, everything else gets AdamW, in one optimizer.

Muon (momentum orthogonalised by Newton-Schulz) is defined for the 2-D weight matrices of hidden layers. A
language model also has embeddings, an output head, norms and biases, which Muon's authors (and Moonlight, Kimi K2,
GLM-4.5) train with AdamW. `MuonWithAdamW` holds both halves as param groups of one `torch.optim.Optimizer`, so
transformers' schedulers, gradient clipping, `state_dict()` and checkpoint resume treat it like any optimizer.

The math is torch's, not ours: a Muon group is stepped by a public `torch.optim.Muon`, an AdamW group by a public
`torch.optim.AdamW`, each holding that group's parameters and sharing this optimizer's state (so ``state_dict()``
and resume see one optimizer). A hidden matrix gets exactly the update `torch.optim.Muon` gives it.

Which parameter goes where is decided by `split_params_for_muon`:

* **Muon**: 2-D weights of hidden layers (attention and MLP projections).
* **AdamW**: 0-D/1-D parameters (norm scales, biases), the input embedding and the output head (tied or not;
  found by identity with ``get_input_embeddings()``/``get_output_embeddings()``, by `nn.Embedding` type, and by
  name: ``embed``, ``lm_head``, ``wte``, ``wpe``, ``score``, ``classifier``), and:
* **LoRA factors** (``lora_A``/``lora_B``/``lora_embedding_*``): AdamW by default. They are 2-D, but Muon's
  rationale (steepest descent for a linear map under the spectral norm) applies to the adapted weight
  ``B @ A``, not to each rank-r factor: orthogonalising an ``r x n`` factor sets all r singular values to ~1 and
  so amplifies the factor's weak directions, and ``lora_B`` starts at zero. LoRA learning rates people use are
  AdamW's. ``muon_lora=True`` opts the factors into Muon for those who want to try it.
* **3-D and larger weights** (stacked MoE experts ``[E, out, in]``, convolution kernels): AdamW. torch.optim.Muon
  is defined on 2-D matrices only, and orthogonalising a stacked tensor as one matrix would mix experts; a
  per-expert Muon would need its own math, which we do not re-implement. They are listed in the log.

Distributed: plain and DDP parameters use `torch.optim.Muon` as is. FSDP2 parameters are `DTensor` shards;
orthogonalising a shard is not Muon (the result depends on how the matrix was cut), so for a DTensor we gather the
full momentum-updated matrix, run Newton-Schulz on it (identically on every rank) and keep the local shard
(`_muon_dtensor`; every rank orthogonalises every matrix, redundant work that spreading the matrices over the
ranks would divide by the world size). That path calls two private functions of `torch.optim._muon`
(``_zeropower_via_newtonschulz``, ``_adjust_lr``), whose signatures are checked once at import against those of
torch 2.9 to 2.13 (`SUPPORTED_TORCH`); a torch that changed them makes the FSDP2 path fail at its first use with a
`TorchVersionError` naming the supported versions, while every other path keeps working. DeepSpeed ZeRO flattens
parameters into 1-D partitions this optimizer cannot see as matrices: under DeepSpeed use its native Muon
(`hf_retain.optim.deepspeed`), which `OptimizerMixin` routes to.

Example:
    >>> import torch
    >>> from hf_retain import build_tiny_model
    >>> from hf_retain.optim import MuonWithAdamW, split_params_for_muon
    >>> model = build_tiny_model(num_hidden_layers=2)
    >>> split = split_params_for_muon(model)
    >>> opt = MuonWithAdamW(split.param_groups(), lr=1e-3, weight_decay=0.01)
    >>> [g["name"] for g in opt.param_groups]
    ['muon', 'adamw', 'adamw_no_decay']
    >>> model(torch.tensor([[1, 5, 9]]), labels=torch.tensor([[1, 5, 9]])).loss.backward()
    >>> opt.step()
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from transformers.trainer_pt_utils import get_parameter_names

from hf_retain.errors import TorchVersionError

logger = logging.getLogger(__name__)

__all__ = ["MuonWithAdamW", "MuonSplit", "split_params_for_muon", "ADJUST_LR_FNS", "DEFAULT_ADJUST_LR_FN",
           "SUPPORTED_TORCH", "torch_muon_function"]

ADJUST_LR_FNS = ("original", "match_rms_adamw")
# Our default differs from torch's ("original"): fine-tuning LRs are AdamW LRs (args.learning_rate), and
# Moonlight's "match_rms_adamw" (0.2 * sqrt(max(A, B))) gives Muon updates the RMS of AdamW's, so one LR and one
# weight decay serve both halves and a recipe can switch adamw -> muon without retuning.
DEFAULT_ADJUST_LR_FN = "match_rms_adamw"

# torch.optim.Muon's own defaults (momentum, Newton-Schulz coefficients, steps, eps), read from its public signature.
_TORCH_MUON_DEFAULTS: dict[str, Any] = {
    name: param.default for name, param in inspect.signature(torch.optim.Muon.__init__).parameters.items()
    if param.default is not inspect.Parameter.empty
}

# The torch releases whose private `torch.optim._muon` functions the FSDP2 path was written against.
SUPPORTED_TORCH = "2.9 to 2.13 (tested on 2.13)"
# Private function -> the leading parameters we pass it, positionally, in this order.
_TORCH_PRIVATE: dict[str, tuple[str, ...]] = {
    "_zeropower_via_newtonschulz": ("grad", "ns_coefficients", "ns_steps", "eps"),
    "_adjust_lr": ("lr", "adjust_lr_fn", "param_shape"),
}


def _check_torch_private() -> tuple[dict[str, Callable[..., Any]], str | None]:
    """The private `torch.optim._muon` functions we call, and what is wrong with them (None: nothing)."""
    try:
        import torch.optim._muon as private
    except ImportError as err:  # pragma: no cover - torch without Muon is below our supported range
        return {}, f"no torch.optim._muon ({err})"
    found: dict[str, Callable[..., Any]] = {}
    for name, expected in _TORCH_PRIVATE.items():
        function = getattr(private, name, None)
        if not callable(function):
            return found, f"no torch.optim._muon.{name}"
        try:
            params = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            return found, f"torch.optim._muon.{name} without a readable signature"
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        leading = tuple(p.name for p in params[:len(expected)] if p.kind in positional)
        required_extra = [p.name for p in params[len(expected):] if p.default is inspect.Parameter.empty
                          and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        if leading != expected or required_extra:
            shown = ", ".join(p.name for p in params)
            return found, f"torch.optim._muon.{name}({shown}) where hf_retain passes ({', '.join(expected)})"
        found[name] = function
    return found, None


# Checked once, at import; a mismatch is reported where the functions are first needed.
_TORCH_FUNCTIONS, _TORCH_PROBLEM = _check_torch_private()


def torch_muon_function(name: str) -> Callable[..., Any]:
    """The private `torch.optim._muon` function ``name``, or a `TorchVersionError` naming the torch versions supported
    when this torch's signature differs from the one hf_retain calls."""
    if _TORCH_PROBLEM is not None or name not in _TORCH_FUNCTIONS:
        raise TorchVersionError(
            f"hf_retain's Muon for FSDP2 (DTensor) parameters and its DeepSpeed LR rule call torch's private "
            f"torch.optim._muon.{name}, written for torch {SUPPORTED_TORCH}; this torch {torch.__version__} has "
            f"{_TORCH_PROBLEM or f'no {name}'}. Install a supported torch (pip install 'torch>=2.9,<2.14'), or "
            "train Muon without FSDP2/DeepSpeed (one process or DDP use the public torch.optim.Muon)."
        )
    return _TORCH_FUNCTIONS[name]


# Name fragments of input embeddings and output heads (first and last layers stay on AdamW).
_EMBED_OR_HEAD = ("embed", "lm_head", "wte", "wpe", "score", "classifier")
_LORA = re.compile(r"(^|\.)lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")
# transformers.Trainer.get_decay_parameter_names' patterns: no weight decay on biases and norms.
_NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]

_MUON_KEYS = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn")
_ADAMW_KEYS = ("lr", "betas", "eps", "weight_decay")


def layer_shape(param: torch.Tensor) -> tuple[int, ...]:
    """A parameter's shape as a layer: under DeepSpeed ZeRO-3 ``param.shape`` is a flat placeholder."""
    ds_shape = getattr(param, "ds_shape", None)
    return tuple(param.shape) if ds_shape is None else tuple(ds_shape)


@dataclass
class MuonSplit:
    """Which parameters get Muon and which AdamW, with the reason for each AdamW one (for the log)."""

    muon: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    adamw: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    no_decay: set[str] = field(default_factory=set)

    @property
    def muon_names(self) -> list[str]:
        return [name for name, _ in self.muon]

    @property
    def adamw_names(self) -> list[str]:
        return [name for name, _ in self.adamw]

    def param_groups(self, *, adamw_lr: float | None = None, adamw_weight_decay: float | None = None
                     ) -> list[dict[str, Any]]:
        """Param groups for `MuonWithAdamW`: one Muon group, AdamW with and without weight decay.

        Biases and norms get no weight decay (transformers.Trainer's rule); ``adamw_lr``/``adamw_weight_decay``
        set the AdamW half's own values (None: the optimizer's defaults).
        """
        decay = [p for n, p in self.adamw if n not in self.no_decay]
        no_decay = [p for n, p in self.adamw if n in self.no_decay]
        adamw_extra: dict[str, Any] = {} if adamw_lr is None else {"lr": adamw_lr}
        groups: list[dict[str, Any]] = []
        if self.muon:
            groups.append({"params": [p for _, p in self.muon], "use_muon": True, "name": "muon"})
        if decay:
            wd = {} if adamw_weight_decay is None else {"weight_decay": adamw_weight_decay}
            groups.append({"params": decay, "use_muon": False, "name": "adamw", **adamw_extra, **wd})
        if no_decay:
            groups.append({"params": no_decay, "use_muon": False, "name": "adamw_no_decay", "weight_decay": 0.0,
                           **adamw_extra})
        return groups

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for reason in self.reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        n_muon = sum(p.numel() if p.numel() else _numel(layer_shape(p)) for _, p in self.muon)
        n_adam = sum(p.numel() if p.numel() else _numel(layer_shape(p)) for _, p in self.adamw)
        detail = ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))
        return (f"Muon on {len(self.muon)} hidden matrices ({n_muon:,} weights); AdamW on {len(self.adamw)} "
                f"parameters ({n_adam:,} weights: {detail or 'none'})")


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for size in shape:
        out *= size
    return out


def _embedding_and_head_ids(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)() if hasattr(model, getter) else None
        except (NotImplementedError, AttributeError):
            module = None
        weight = getattr(module, "weight", None) if module is not None else None
        if isinstance(weight, torch.Tensor):
            ids.add(id(weight))
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            ids.update(id(p) for p in module.parameters(recurse=False))
    return ids


def split_params_for_muon(model: nn.Module, *, muon_lora: bool = False) -> MuonSplit:
    """Assign each trainable parameter of ``model`` to Muon or AdamW (rules in this module's docstring)."""
    embeds = _embedding_and_head_ids(model)
    decay = set(get_parameter_names(model, [nn.LayerNorm], _NO_DECAY_PATTERNS))
    split = MuonSplit()
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        ndim = len(layer_shape(param))
        lowered = name.lower()
        reason = None
        if ndim < 2:
            reason = "non-matrix (norm/bias/scalar)"
        elif ndim > 2:
            reason = "3-D+ weight (experts/conv)"
        elif id(param) in embeds or any(key in lowered for key in _EMBED_OR_HEAD):
            reason = "embedding/output head"
        elif _LORA.search(name) and not muon_lora:
            reason = "LoRA factor"
        if name not in decay:
            split.no_decay.add(name)
        if reason is None:
            split.muon.append((name, param))
        else:
            split.adamw.append((name, param))
            split.reasons[name] = reason
    return split


def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(tensor, DTensor)


class MuonWithAdamW(Optimizer):
    """One optimizer: Muon for param groups with ``use_muon=True``, AdamW for the rest.

    Args:
        params: param groups, each with a bool ``use_muon`` (`MuonSplit.param_groups()` builds them). Group keys
            override the defaults below, e.g. an AdamW group with its own ``lr``.
        lr, weight_decay: defaults of both halves (decoupled weight decay, as in torch.optim.Muon/AdamW).
        momentum, nesterov, ns_coefficients, eps, ns_steps: torch.optim.Muon's, with its defaults.
        adjust_lr_fn: ``"original"`` (Keller Jordan's sqrt(max(1, A/B)), torch's default) or ``"match_rms_adamw"``
            (Moonlight's 0.2 * sqrt(max(A, B)), our default: AdamW's LR and weight decay carry over).
        betas, adamw_eps: the AdamW half's (torch.optim.AdamW defaults). In an AdamW group ``eps`` means AdamW's.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = _TORCH_MUON_DEFAULTS["momentum"],
        nesterov: bool = _TORCH_MUON_DEFAULTS["nesterov"],
        ns_coefficients: tuple[float, float, float] = _TORCH_MUON_DEFAULTS["ns_coefficients"],
        eps: float = _TORCH_MUON_DEFAULTS["eps"],
        ns_steps: int = _TORCH_MUON_DEFAULTS["ns_steps"],
        adjust_lr_fn: str | None = DEFAULT_ADJUST_LR_FN,
        betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
    ) -> None:
        if not lr >= 0.0:  # also rejects NaN
            raise ValueError(f"lr={lr} must be >= 0.")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} must be in [0, 1).")
        if adjust_lr_fn is not None and adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r} is not supported; choose one of {list(ADJUST_LR_FNS)}.")
        if not (len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"betas={betas} must be two numbers in [0, 1).")
        if len(ns_coefficients) != 3:
            raise ValueError(f"ns_coefficients={ns_coefficients} must be three numbers (a, b, c).")
        self._half_defaults = {
            True: {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                   "ns_coefficients": tuple(ns_coefficients), "eps": eps, "ns_steps": ns_steps,
                   "adjust_lr_fn": adjust_lr_fn},
            False: {"lr": lr, "weight_decay": weight_decay, "betas": tuple(betas), "eps": adamw_eps},
        }
        groups = list(params)
        if not groups or not all(isinstance(g, dict) for g in groups):
            raise ValueError("MuonWithAdamW takes param groups (dicts with 'params' and 'use_muon'); build them "
                             "with hf_retain.optim.split_params_for_muon(model).param_groups().")
        super().__init__(groups, {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "use_muon" not in param_group:
            raise ValueError("Every MuonWithAdamW param group needs 'use_muon': True (hidden 2-D matrices) or False "
                             "(everything else).")
        use_muon = bool(param_group["use_muon"])
        allowed = set(_MUON_KEYS if use_muon else _ADAMW_KEYS) | {"params", "use_muon", "name", "initial_lr"}
        unknown = sorted(set(param_group) - allowed)
        if unknown:
            half = "Muon" if use_muon else "AdamW"
            raise ValueError(f"A {half} param group has keys {unknown} it does not use; allowed: {sorted(allowed)}.")
        for key, value in self._half_defaults[use_muon].items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)
        if use_muon:
            for p in self.param_groups[-1]["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"A Muon param group holds a parameter of shape {tuple(p.shape)}; Muon is defined on 2-D "
                        "matrices. Under DeepSpeed ZeRO, parameters are flattened partitions: use DeepSpeed's "
                        "native Muon (hf_retain.optim.deepspeed_muon_config, or OptimizerMixin, which routes there)."
                    )
            if any(_is_dtensor(p) for p in self.param_groups[-1]["params"]):
                torch_muon_function("_zeropower_via_newtonschulz")  # fail now, not at the first step

    def _torch_stepper(self, index: int, use_muon: bool, params: list[torch.Tensor]) -> Optimizer:
        """The public torch optimizer that steps group ``index``'s ``params``, built once and reused.

        It shares this optimizer's ``state`` (reassigned at every step, since ``load_state_dict`` replaces it), so
        momentum buffers and Adam moments live here, in this optimizer's ``state_dict()``.
        """
        steppers: dict[int, Optimizer] = self.__dict__.setdefault("_torch_steppers", {})
        stepper = steppers.get(index)
        held = stepper.param_groups[0]["params"] if stepper is not None else None
        if held is None or len(held) != len(params) or any(a is not b for a, b in zip(held, params)):
            stepper = torch.optim.Muon(params) if use_muon else torch.optim.AdamW(params)
            steppers[index] = stepper
        stepper.state = self.state
        return stepper

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            if group["use_muon"]:
                self._step_muon(index, group)
            else:
                self._step_adamw(index, group)
        return loss

    def _step_muon(self, index: int, group: dict[str, Any]) -> None:
        plain, sharded = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse or torch.is_complex(p):
                raise RuntimeError("Muon does not support sparse gradients or complex parameters.")
            if p.grad.ndim != 2:
                raise RuntimeError(
                    f"Muon got a gradient of shape {tuple(p.grad.shape)} for a 2-D parameter group: under DeepSpeed "
                    "ZeRO the optimizer sees flat partitions. Use DeepSpeed's native Muon instead "
                    "(hf_retain.optim.deepspeed_muon_config or OptimizerMixin)."
                )
            (sharded if _is_dtensor(p) else plain).append(p)
        settings = {key: group[key] for key in _MUON_KEYS}
        if plain:
            stepper = self._torch_stepper(index, True, plain)
            stepper.param_groups[0].update(settings)
            stepper.step()
        for p in sharded:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            _muon_dtensor(p, p.grad, state["momentum_buffer"], **settings)

    def _step_adamw(self, index: int, group: dict[str, Any]) -> None:
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamW does not support sparse gradients.")
            params.append(p)
        if not params:
            return
        stepper = self._torch_stepper(index, False, params)
        stepper.param_groups[0].update({key: group[key] for key in _ADAMW_KEYS})
        stepper.step()


def _muon_dtensor(
    param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, *, lr: float, weight_decay: float, momentum: float,
    nesterov: bool, ns_coefficients: tuple[float, float, float], eps: float, ns_steps: int,
    adjust_lr_fn: str | None,
) -> None:
    """torch.optim.Muon's step for one FSDP2/DTensor parameter, orthogonalising the *full* matrix.

    Momentum and weight decay are elementwise, so they run on the local shard. Newton-Schulz is not: we all-gather
    the momentum-updated matrix, orthogonalise it on every rank (same input, same result), and keep the local shard.
    Same steps and the same torch functions as `torch.optim._muon._single_tensor_muon`.
    """
    newton_schulz = torch_muon_function("_zeropower_via_newtonschulz")
    adjust_lr = torch_muon_function("_adjust_lr")
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    if any(not isinstance(placement, (Shard, Replicate)) for placement in param.placements):
        raise NotImplementedError(
            f"Muon under FSDP2 supports Shard/Replicate placements, got {param.placements}; orthogonalising a "
            "differently laid-out shard would not be Muon. Use plain FSDP2 data parallelism or DeepSpeed's Muon."
        )
    buf.lerp_(grad, 1 - momentum)
    update = grad.lerp(buf, momentum) if nesterov else buf
    full = update.full_tensor()
    ortho = newton_schulz(full, ns_coefficients, ns_steps, eps)
    local = distribute_tensor(ortho, update.device_mesh, update.placements, src_data_rank=None)
    adjusted_lr = adjust_lr(lr, adjust_lr_fn, param.shape)
    param.mul_(1 - lr * weight_decay)
    param.add_(local, alpha=-adjusted_lr)
