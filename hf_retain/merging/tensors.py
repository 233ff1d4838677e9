"""`merge_task_vectors`: merge one tensor of several fine-tunes of one base, by task vectors.

A task vector is ``finetuned[i] - base``. Every method combines the task vectors and adds the result back to the
base, so every method returns ``base + merged task vector`` (in ``base.dtype``, computed in float32):

* ``task_arithmetic``  ``sum_i w_i * tv_i``
* ``magnitude_prune``  the same after keeping each tv's ``density`` largest-magnitude entries
* ``ties``             magnitude-prune, elect a sign per entry (``majority_sign_method``), average the agreeing entries
* ``dare_linear``      drop entries at random (keep probability ``density``, survivors rescaled by 1/density), sum
* ``dare_ties``        DARE's random drop, then TIES' sign election and disjoint mean
* ``slerp``            spherical interpolation of exactly two task vectors: ``t=0`` gives ``finetuned[0]``, ``t=1``
                       ``finetuned[1]``; nearly parallel (or zero) task vectors fall back to linear interpolation

The first five are `peft.utils.merge_utils` (the functions behind PEFT's ``add_weighted_adapter``), called on the task
vectors, so the numbers are PEFT's. SLERP treats one tensor as one flat vector (mergekit's per-tensor treatment), on
the task vectors rather than on the raw weights: merging two specialists of one base then keeps one rule for every
method, and interpolating the (nearly orthogonal) task vectors by angle keeps their norm, where the raw weights of two
close fine-tunes are nearly parallel and SLERP on them would be linear interpolation.

Example:
    >>> import torch
    >>> base = torch.zeros(4)
    >>> merge_task_vectors(base, [torch.tensor([1., 0, 0, 0]), torch.tensor([0., 1, 0, 0])], "slerp", t=0.5)
    tensor([0.7071, 0.7071, 0.0000, 0.0000])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from peft.utils import merge_utils

from hf_retain.errors import MergeError

__all__ = ["MergeError", "MERGE_METHODS", "DENSITY_METHODS", "SIGN_METHODS", "merge_task_vectors", "slerp",
           "check_merge_parameters"]


# Method -> the peft.utils.merge_utils function computing it (None: implemented here).
MERGE_METHODS: dict[str, Any] = {
    "task_arithmetic": merge_utils.task_arithmetic,
    "magnitude_prune": merge_utils.magnitude_prune,
    "ties": merge_utils.ties,
    "dare_linear": merge_utils.dare_linear,
    "dare_ties": merge_utils.dare_ties,
    "slerp": None,
}
DENSITY_METHODS = frozenset({"magnitude_prune", "ties", "dare_linear", "dare_ties"})
SIGN_METHODS = frozenset({"ties", "dare_ties"})
RANDOM_METHODS = frozenset({"dare_linear", "dare_ties"})
MAJORITY_SIGN_METHODS = ("total", "frequency")
# |cos| above this: the two vectors are (anti)parallel and SLERP's 1/sin(theta) is unstable; interpolate linearly.
DOT_THRESHOLD = 0.9995


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_merge_parameters(method: str, n_models: int, *, weights: Sequence[float] | None = None,
                           density: float | None = None, t: float | None = None,
                           majority_sign_method: str = "total") -> list[float] | None:
    """Raise `MergeError` for parameters ``method`` cannot use; return the weights as floats (None for SLERP).

    Weights default to 1.0 per model (PEFT's and mergekit's scaling factors: task arithmetic then adds every task
    vector in full). Checked before any tensor is read or written, by `merge_models` as well.
    """
    if method not in MERGE_METHODS:
        raise MergeError(f"Unknown merge method {method!r}; choose one of {sorted(MERGE_METHODS)}.")
    if n_models < 1:
        raise MergeError("A merge needs at least one fine-tuned model besides the base.")
    if method == "slerp":
        if n_models != 2:
            raise MergeError(f"slerp interpolates exactly two models; got {n_models}. Use task_arithmetic, ties or "
                             "dare_* for more, or merge two at a time.")
        if weights is not None:
            raise MergeError("slerp takes no weights; set t (0 = the first model, 1 = the second) instead.")
        if t is None:
            raise MergeError("slerp needs t in [0, 1] (0 = the first model, 1 = the second), e.g. t: 0.5.")
        if not _is_number(t) or not 0.0 <= t <= 1.0:
            raise MergeError(f"t={t!r} is outside [0, 1]; 0 gives the first model, 1 the second.")
    elif t is not None:
        raise MergeError(f"t is a slerp parameter; {method} does not use it. Remove t or use method: slerp.")
    if method in DENSITY_METHODS:
        if density is None:
            raise MergeError(f"{method} needs density in (0, 1] (the fraction of each task vector kept), e.g. 0.5.")
        if not _is_number(density) or not 0.0 < density <= 1.0:
            raise MergeError(f"density={density!r} is outside (0, 1]: it is the fraction of each task vector's "
                             "entries kept (1 keeps all). Use e.g. 0.5.")
    elif density is not None:
        raise MergeError(f"density is used by {sorted(DENSITY_METHODS)}; {method} does not use it. Remove it.")
    if method in SIGN_METHODS and majority_sign_method not in MAJORITY_SIGN_METHODS:
        raise MergeError(f"majority_sign_method={majority_sign_method!r}; choose one of {list(MAJORITY_SIGN_METHODS)}.")
    if method == "slerp":
        return None
    if weights is None:
        return [1.0] * n_models
    values = list(weights.tolist() if isinstance(weights, torch.Tensor) else weights)
    if len(values) != n_models:
        raise MergeError(f"{len(values)} weights for {n_models} models; give one weight per model (in order).")
    if not all(_is_number(w) for w in values):
        raise MergeError(f"weights {values!r} must all be finite numbers.")
    return [float(w) for w in values]


@contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Fix torch's RNG (CPU, and the tensor's CUDA device) for DARE's random drop, restoring it afterwards."""
    if seed is None:
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dot_threshold: float = DOT_THRESHOLD,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation between two same-shape tensors, each taken as one flat vector.

    ``theta = arccos(cos(v0, v1))``; ``slerp = sin((1-t) theta)/sin(theta) v0 + sin(t theta)/sin(theta) v1``. When
    ``|cos| > dot_threshold`` or either vector is (near) zero, returns the linear ``(1-t) v0 + t v1``. Equal-norm
    inputs give an output of that norm; ``slerp(0.5, a, b) == slerp(0.5, b, a)``.
    """
    a, b = v0.float(), v1.float()
    na, nb = a.norm(), b.norm()
    if na <= eps or nb <= eps:
        return torch.lerp(a, b, t)
    dot = float(torch.sum((a / na) * (b / nb)).clamp(-1.0, 1.0))
    if abs(dot) > dot_threshold:
        return torch.lerp(a, b, t)
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return (math.sin((1.0 - t) * theta) / sin_theta) * a + (math.sin(t * theta) / sin_theta) * b


def merge_task_vectors(base: torch.Tensor, finetuned: Sequence[torch.Tensor], method: str, *,
                       weights: Sequence[float] | torch.Tensor | None = None, density: float | None = None,
                       t: float | None = None, majority_sign_method: str = "total",
                       seed: int | None = None) -> torch.Tensor:
    """``base`` plus the merge of the task vectors ``finetuned[i] - base`` by ``method``; same shape and dtype as
    ``base``.

    ``weights`` (one per model, default 1.0) scale the task vectors; ``density`` in (0, 1] is the fraction kept by
    the pruning methods; ``t`` in [0, 1] is SLERP's position; ``majority_sign_method`` ('total' or 'frequency')
    is TIES' sign election; ``seed`` fixes DARE's random drop (the global RNG is left as it was).
    """
    finetuned = list(finetuned)
    weight_list = check_merge_parameters(method, len(finetuned), weights=weights, density=density, t=t,
                                         majority_sign_method=majority_sign_method)
    for i, tensor in enumerate(finetuned):
        if tuple(tensor.shape) != tuple(base.shape):
            raise MergeError(f"finetuned[{i}] has shape {tuple(tensor.shape)} but base has {tuple(base.shape)}; "
                             "task vectors need the same shape.")
    if not (base.is_floating_point() and all(x.is_floating_point() for x in finetuned)):
        raise MergeError(f"Only floating-point tensors can be merged; got base {base.dtype} and "
                         f"{[x.dtype for x in finetuned]}.")
    base32 = base.float()
    vectors = [x.to(device=base.device, dtype=torch.float32) - base32 for x in finetuned]
    if method == "slerp":
        merged = slerp(float(t), vectors[0], vectors[1])  # type: ignore[arg-type]
    else:
        scale = torch.tensor(weight_list, dtype=torch.float32, device=base.device)
        kwargs: dict[str, Any] = {}
        if method in DENSITY_METHODS:
            kwargs["density"] = float(density)  # type: ignore[arg-type]
        if method in SIGN_METHODS:
            kwargs["majority_sign_method"] = majority_sign_method
        with warnings.catch_warnings(), _seeded(seed if method in RANDOM_METHODS else None, base.device):
            # density == 1 is valid (no pruning); PEFT warns about it on every call
            warnings.filterwarnings("ignore", message=r"The density .* no pruning will be performed")
            merged = MERGE_METHODS[method](vectors, scale, **kwargs)
    return (base32 + merged).to(base.dtype)
