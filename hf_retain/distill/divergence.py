"""The divergence between the student's and the teacher's next-token distributions, summed over distilled positions.

Both are TRL's math: its chunked generalized JSD (``beta`` 0 = forward KL, 1 = reverse KL) for online teachers, which
projects both models' final hidden states through their LM heads tile by tile and never materialises full-vocabulary
logits; its GKD ``generalized_jsd_loss`` over the ``top_k + 1`` buckets of an offline teacher. What this module adds
is tiling suited to the device and one-pass evaluation off Triton (CPU); see `_OnePassDivergenceSum`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["chunked_divergence_sum", "offline_divergence_sum"]

LOG_FLOOR = -1e4  # log-prob floor for empty buckets: exp() is exactly 0, so 0 * (finite) = 0 instead of NaN
# Off Triton, TRL's torch tile functions create several tile-sized temporaries; a tile holds at most this many
# elements (256 KiB in fp32, cache-sized): the scratch stays far below one [tokens, hidden] activation of the model,
# and on our 2-core CPU it was the fastest of 2**14..2**20 (15 ms against 18-29 ms for 2040 tokens x 259 columns).
_TORCH_TILE_ELEMENTS = 2**16
_MIN_TILE_TOKENS = 16


@contextlib.contextmanager
def _vocab_wide_tiles(vocab: int) -> Iterator[None]:
    """Narrow TRL's tiles to the vocabulary while its kernel runs (tile sizes change no result).

    TRL allocates its scratch tiles ``VOCAB_CHUNK_SIZE`` (32768) columns wide whatever the vocabulary, so a model with
    a smaller vocabulary (byte-level, code models) would pay ``[tokens, 32768]`` fp32 buffers per model.
    """
    from trl.kernels import chunked_divergence as kernel

    vocab_tile = kernel.VOCAB_CHUNK_SIZE
    kernel.VOCAB_CHUNK_SIZE = max(1, min(vocab_tile, int(vocab)))
    try:
        yield
    finally:
        kernel.VOCAB_CHUNK_SIZE = vocab_tile


def _chunked_divergence_function() -> type:
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    class TiledToVocab(ChunkedDivergenceFunction):
        """TRL's ChunkedDivergenceFunction, run with vocabulary-wide tiles (forward and backward)."""

        @staticmethod
        def forward(ctx, *args):  # type: ignore[override]
            weight = args[1]
            ctx.hf_retain_vocab = int((getattr(weight, "ds_shape", None) or weight.shape)[0])
            with _vocab_wide_tiles(ctx.hf_retain_vocab):
                return ChunkedDivergenceFunction.forward(ctx, *args)

        @staticmethod
        def backward(ctx, *grads):  # type: ignore[override]
            with _vocab_wide_tiles(ctx.hf_retain_vocab):
                return ChunkedDivergenceFunction.backward(ctx, *grads)

    return TiledToVocab


class _GradientsInForward(torch.autograd.Function):
    """Base of our divergences that compute their gradients in the forward (w.r.t. hidden states, head weight and head
    bias: the first three inputs) and return a scalar: the backward scales the stashed gradients by the incoming
    scalar. Subclasses save those three (None where not needed) and set ``ctx.dtypes`` and ``ctx.num_inputs``."""

    @staticmethod
    def backward(ctx, grad_total):
        grads = [None if g is None else (g * grad_total).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, *(None,) * (ctx.num_inputs - 3))


class _OnePassDivergenceSum(_GradientsInForward):
    """The summed divergence and its gradients, all computed in the forward from TRL's torch tile functions.

    TRL's ChunkedDivergenceFunction folds vocabulary tiles into online-logsumexp statistics in the forward and
    projects both models again in the backward, because a tile narrower than the vocabulary cannot know the
    normalisers. Off Triton we make every tile span the whole vocabulary (few tokens, all columns), so one pass knows
    them: TRL's ``_stats_tile`` (and ``_jsd_tile``) give the divergence, then its ``_backward_tile`` gives
    d(divergence)/d(student logits) on the same tile. Two of the four projections disappear, and the backward keeps
    only the ``[N, H]`` hidden-state gradient instead of both models' hidden states (and, for a trainable head, the
    ``[V, H]`` head gradient, which the backward would allocate anyway). The output is one scalar, so the gradient is
    that stashed gradient times the incoming scalar: exact. Cost measured in benchmarks/distill.py.
    """

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, beta, temperature, s_scale, s_softcap, t_scale, t_softcap):
        from trl.kernels import chunked_divergence as kernel
        from trl.kernels.chunked_logprob import _BLOCK_SIZE, _addmm_fp32
        from trl.trainer.utils import maybe_gather_lm_head_ctx

        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        kernel_args = {
            "s_scale": s_scale, "s_softcap": s_softcap or 1.0, "t_scale": t_scale, "t_softcap": t_softcap or 1.0,
            "inv_t": 1 / temperature, "S_HAS_SOFTCAP": s_softcap is not None, "T_HAS_SOFTCAP": t_softcap is not None,
            "BLOCK_SIZE": _BLOCK_SIZE,
        }
        mode = 0 if beta == 0.0 else 1 if beta == 1.0 else 2
        s_dtype, t_dtype = kernel._compute_dtype(h_s), kernel._compute_dtype(h_t)
        n_tokens, device = h_s.shape[0], h_s.device
        total = torch.zeros((), device=device, dtype=torch.float32)
        grad_hidden = torch.zeros(h_s.shape, device=device, dtype=torch.float32) if needs_hidden else None
        grad_weight = grad_bias = None
        with maybe_gather_lm_head_ctx(w_s, b_s), maybe_gather_lm_head_ctx(w_t, b_t):
            vocab = w_s.shape[0]
            if needs_weight:
                grad_weight = torch.zeros(w_s.shape, device=device, dtype=torch.float32)
            if needs_bias:
                grad_bias = torch.zeros(b_s.shape, device=device, dtype=torch.float32)
            step = max(_MIN_TILE_TOKENS, _TORCH_TILE_ELEMENTS // vocab)
            for start in range(0, n_tokens, step):
                rows = slice(start, min(start + step, n_tokens))
                n = rows.stop - start
                h_s_rows = h_s[rows].to(s_dtype)
                s_tile = torch.empty((n, vocab), device=device, dtype=torch.float32)
                t_tile = torch.empty((n, vocab), device=device, dtype=torch.float32)
                kernel._project(s_tile, h_s_rows, w_s, b_s, 0, vocab, s_dtype)
                kernel._project(t_tile, h_t[rows].to(t_dtype), w_t, b_t, 0, vocab, t_dtype)
                s_max, t_max = torch.full((n,), -math.inf, device=device), torch.full((n,), -math.inf, device=device)
                s_sum, s_x_sum, t_sum, t_gap, s_gap = (torch.zeros(n, device=device) for _ in range(5))
                kernel._stats_tile(s_tile, vocab, t_tile, vocab, s_max, s_sum, s_x_sum, t_max, t_sum, t_gap, s_gap,
                                   vocab, **kernel_args)
                s_log_z, t_log_z = s_max + torch.log(s_sum), t_max + torch.log(t_sum)
                if mode == 0:
                    divergence = aux = t_gap / t_sum - t_log_z + s_log_z
                elif mode == 1:
                    divergence = aux = s_gap / s_sum - s_log_z + t_log_z
                else:
                    divergence, aux = torch.zeros(n, device=device), torch.zeros(n, device=device)
                    kernel._jsd_tile(s_tile, vocab, t_tile, vocab, s_log_z, t_log_z, divergence, aux, vocab, beta,
                                     **kernel_args)
                total += divergence.sum()
                if not (needs_hidden or needs_weight or needs_bias):
                    continue
                kernel._backward_tile(s_tile, vocab, t_tile, vocab, s_log_z, t_log_z, aux,
                                      torch.ones(n, device=device), vocab, beta, MODE=mode, **kernel_args)
                grad_tile = s_tile.to(s_dtype)  # d(divergence) / d(student logits), in place of the logits
                if grad_hidden is not None:
                    _addmm_fp32(grad_hidden[rows], grad_tile, w_s.to(s_dtype))
                if grad_weight is not None:
                    _addmm_fp32(grad_weight, grad_tile.t(), h_s_rows)
                if grad_bias is not None:
                    grad_bias += s_tile.sum(dim=0, dtype=torch.float32)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (h_s.dtype, w_s.dtype, b_s.dtype if b_s is not None else None)
        ctx.num_inputs = 12
        return total


def chunked_divergence_sum(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_weight: torch.Tensor,
    teacher_weight: torch.Tensor, mask: torch.Tensor, beta: float, *, student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None, student_scale: float = 1.0, teacher_scale: float = 1.0,
    student_softcap: float | None = None, teacher_softcap: float | None = None, temperature: float = 1.0,
) -> torch.Tensor:
    """Sum over ``mask`` positions of TRL's generalized JSD (beta 0 = forward KL, 1 = reverse KL) between the student's
    and the teacher's next-token distributions, from hidden states ``[B, K, H]`` and LM heads ``[V, H]``.

    The math is TRL's: its ChunkedDivergenceFunction with Triton (tiles at most vocabulary-wide, see
    `_vocab_wide_tiles`), and its torch tile functions in one pass elsewhere (see `_OnePassDivergenceSum`). Only the
    masked positions are projected (TRL's private ``_chunked_divergence_loss`` projects all of them off-Triton, to
    avoid recompilation on Neuron, which does not apply here).

    Example (equal models diverge by zero; the gradient reaches the student's hidden states):
        >>> import torch
        >>> from hf_retain.distill import chunked_divergence_sum
        >>> hidden, head = torch.randn(2, 5, 8, requires_grad=True), torch.randn(11, 8)
        >>> mask = torch.ones(2, 5, dtype=torch.bool)
        >>> loss = chunked_divergence_sum(hidden, hidden.detach(), head, head, mask, beta=0.0)
        >>> round(float(loss), 6), loss.requires_grad
        (0.0, True)
    """
    from torch.distributed.tensor import DTensor

    # FSDP2 outside the root forward: gather the head once (differentiably), as TRL does.
    if isinstance(student_weight, DTensor):
        student_weight = student_weight.full_tensor().to(student_hidden.dtype)
        student_bias = student_bias.full_tensor() if student_bias is not None else None
    if isinstance(teacher_weight, DTensor):
        teacher_weight = teacher_weight.full_tensor().to(teacher_hidden.dtype)
        teacher_bias = teacher_bias.full_tensor() if teacher_bias is not None else None
    valid = mask.reshape(-1).to(student_hidden.device)
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])[valid]
    h_t = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])[valid.to(teacher_hidden.device)].to(h_s.device)
    args = (h_s, student_weight, student_bias, h_t, teacher_weight, teacher_bias, beta, temperature, student_scale,
            student_softcap, teacher_scale, teacher_softcap)
    from trl.kernels.chunked_logprob import _use_triton

    if not _use_triton(h_s.device):
        return _OnePassDivergenceSum.apply(*args)
    per_token, _entropy = _chunked_divergence_function().apply(*args)
    return per_token.sum()


def head_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float, softcap: float | None,
    temperature: float,
) -> torch.Tensor:
    """Next-token log-probs ``[n, V]`` (fp32) of hidden states ``[n, H]`` through an LM head, with the model's logit
    scaling and soft-capping, at ``temperature``. Callers keep ``n`` small: this is one tile."""
    logits = hidden.float() @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(logits / temperature, dim=-1)


def _bucket_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor, scale: float,
    softcap: float | None, temperature: float,
) -> torch.Tensor:
    """Student log-probs over the teacher's top-k buckets plus the tail bucket: ``[n, k + 1]``."""
    logprobs = head_logprobs(hidden, weight, bias, scale, softcap, temperature)
    top = logprobs.gather(-1, ids)
    tail = torch.logsumexp(logprobs.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([top, tail], dim=-1)


def _generalized_jsd_sum() -> Any:
    import warnings

    with warnings.catch_warnings():  # TRL flags its experimental namespace; GKD's divergence itself is stable
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss


class _OfflineDivergenceSum(_GradientsInForward):
    """The summed bucket divergence and its gradients, computed in the forward one token tile at a time.

    Each tile is projected, scored and differentiated at once (one ``[tile, V]`` block alive), and only the gradients
    are kept for the backward, so the LM head is read in the forward alone: under DeepSpeed ZeRO-3 it is gathered
    there, as TRL does for its fused losses, and the backward needs no second gather or recomputation.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher_ids, teacher, beta, temperature, scale, softcap):
        from trl.trainer.utils import maybe_gather_lm_head_ctx

        divergence = _generalized_jsd_sum()
        needs = ctx.needs_input_grad[:3]
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grads: list[torch.Tensor | None] = [None, None, None]
        with maybe_gather_lm_head_ctx(weight, bias):
            leaves = [t.detach().requires_grad_(need) if t is not None else None
                      for t, need in zip((hidden, weight, bias), needs)]
            grads = [torch.zeros(t.shape, device=t.device, dtype=torch.float32) if t is not None and need else None
                     for t, need in zip(leaves, needs)]
            step = max(_MIN_TILE_TOKENS, _TORCH_TILE_ELEMENTS // leaves[1].shape[0])
            for start in range(0, hidden.shape[0], step):
                rows = slice(start, start + step)
                h = leaves[0][rows].detach().requires_grad_(needs[0])
                with torch.enable_grad():
                    student = _bucket_logprobs(h, leaves[1], leaves[2], teacher_ids[rows], scale, softcap,
                                               temperature).clamp(min=LOG_FLOOR)
                    # Buckets are normalised at the training temperature already, so temperature=1 here;
                    # num_items_in_batch=1 makes TRL return the plain sum, which the caller normalises.
                    part = divergence(student, teacher[rows], beta=beta, temperature=1.0, num_items_in_batch=1)
                inputs = [t for t, need in zip((h, leaves[1], leaves[2]), needs) if need]
                if inputs:
                    it = iter(torch.autograd.grad(part, inputs))
                    if needs[0]:
                        grads[0][rows] = next(it)
                    if needs[1]:
                        grads[1] += next(it)
                    if needs[2]:
                        grads[2] += next(it)
                total += part.detach().float()
        ctx.save_for_backward(*grads)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.num_inputs = 9
        return total


def offline_divergence_sum(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor, teacher_tail: torch.Tensor, *, beta: float, temperature: float, scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Sum over positions ``[n, H]`` of D(teacher || student) on the ``top_k + 1`` buckets of an offline teacher.

    TRL's chunked kernel needs the teacher's hidden states and LM head, which an offline cache does not have, so the
    student is projected here, tile by tile (`_OfflineDivergenceSum`); the divergence itself is TRL's GKD
    ``generalized_jsd_loss`` applied to the bucket log-probs.
    """
    if isinstance(weight, torch.distributed.tensor.DTensor):  # FSDP2 outside the root forward: gather, as TRL does
        weight = weight.full_tensor()
        bias = bias.full_tensor() if bias is not None else None
    teacher = torch.cat([teacher_logprobs.float(), teacher_tail.float().unsqueeze(-1)], dim=-1).clamp(min=LOG_FLOOR)
    return _OfflineDivergenceSum.apply(hidden, weight, bias, teacher_ids, teacher.to(hidden.device), beta,
                                       temperature, scale, softcap)
