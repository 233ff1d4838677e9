"""Where the teacher ("the model as it was") comes from, and how a teacher forward yields its final hidden states.

Three kinds, chosen by `RetentionConfig.distill_teacher`:

* ``base`` on a PEFT model: the *same* model with its adapters disabled (``with model.disable_adapter():``), so no
  second copy exists; on a full fine-tune: a frozen snapshot taken at train begin (`snapshot_teacher`), optionally
  on another device or in bf16, after checking there is room for it.
* ``path``: another checkpoint with the same vocabulary (`load_path_teacher`).
* ``offline``: no model at all, cached top-k log-probs (`hf_retain.distill.cache`).

Online teachers never produce full-vocabulary logits: we capture the output of the teacher's backbone (the input of
its LM head) and TRL's chunked divergence projects it tile by tile.

Example:
    >>> from hf_retain import build_tiny_model
    >>> from hf_retain.distill.teachers import snapshot_teacher
    >>> student = build_tiny_model(num_hidden_layers=1)
    >>> teacher = snapshot_teacher(student)
    >>> teacher is not student, teacher.training, next(teacher.parameters()).requires_grad
    (True, False, False)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_retain.constants import BUILTIN_PREFIX
from hf_retain.errors import ModelLoadError, TeacherError
from hf_retain.hub import offline
from hf_retain.models import resolve_model

logger = logging.getLogger(__name__)

__all__ = [
    "TeacherError",
    "TeacherMode",
    "available_bytes",
    "backbone_of",
    "capture_backbone_output",
    "causal_lm_of",
    "check_same_vocab",
    "head_adapter",
    "head_parameters",
    "is_peft",
    "load_path_teacher",
    "logit_transform",
    "snapshot_teacher",
    "teacher_hidden_states",
    "teacher_source",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}




@functools.cache
def _peft_model_class() -> type | None:
    try:
        from peft import PeftModel
    except ImportError:
        return None
    return PeftModel


def is_peft(model: Any) -> bool:
    """Whether ``model`` (or the model inside a DDP/DeepSpeed/compile wrapper) is a PEFT model.

    Called several times per training step, so the PEFT class is looked up once: accelerate's ``is_peft_model``
    reads package metadata on every call, which cost ~15 ms per step (measured) on the tiny benchmark model.
    """
    cls = _peft_model_class()
    if cls is None:
        return False
    for _ in range(4):  # DeepSpeedEngine / DDP (.module), torch.compile (._orig_mod)
        if isinstance(model, cls):
            return True
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return False
        model = inner
    return False


def causal_lm_of(model: Any) -> nn.Module:
    """The transformers causal-LM module under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if is_peft(model) else model


def backbone_of(model: Any) -> nn.Module:
    """The module whose output is the LM head's input (``LlamaModel`` inside ``LlamaForCausalLM``)."""
    lm = causal_lm_of(model)
    backbone = getattr(lm, "base_model", None)
    if backbone is None or backbone is lm:
        raise TeacherError(
            f"{type(lm).__name__} exposes no backbone (`base_model`) separate from its LM head, so its final hidden "
            "states cannot be captured; distillation supports transformers causal LMs (…ForCausalLM)."
        )
    return backbone


def lm_head_of(model: Any) -> nn.Module:
    head = causal_lm_of(model).get_output_embeddings()
    if head is None:
        raise TeacherError(f"{type(model).__name__} has no output embeddings (LM head) to distil through.")
    return head


def head_adapter(model: Any) -> str | None:
    """How a PEFT adapter trains ``model``'s LM head: ``"lora"``, ``"modules_to_save"``, or None (it does not).

    Raises `TeacherError` for the head adapters distillation cannot project through (DoRA and other LoRA variants,
    merged LoRA, trainable token indices, other tuners), naming the fix.
    """
    if not is_peft(model):
        return None
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import AuxiliaryTrainingWrapper, ModulesToSaveWrapper

    head = lm_head_of(model)
    if type(head) is ModulesToSaveWrapper:
        return "modules_to_save"
    if isinstance(head, LoraLayer):
        if not isinstance(head.get_base_layer(), nn.Linear):
            raise TeacherError(f"LoRA on an LM head of type {type(head.get_base_layer()).__name__} is not supported "
                               "for distillation; LoRA on an nn.Linear head is.")
        if head.merged:
            raise TeacherError("the LoRA adapter on the LM head is merged into its weight, so the model before the "
                               "update is no longer available; unmerge it (model.unmerge_adapter()) before training.")
        variants = [type(v).__name__ for v in getattr(head, "lora_variant", {}).values()]
        if variants:
            raise TeacherError(f"the LoRA variant {variants[0]} (e.g. DoRA) on the LM head is not supported for "
                               "distillation; use plain LoRA on the head, or leave it out of target_modules.")
        return "lora"
    if isinstance(head, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
        raise TeacherError(
            f"the PEFT adapter wraps the LM head in {type(head).__name__}, which distillation cannot project "
            "through; adapt the head with LoRA or modules_to_save, or leave it out of the adapter "
            "(target_modules / modules_to_save / trainable_token_indices)."
        )
    return None


def head_parameters(model: Any, *, adapters: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's ``(weight, bias)`` as the model applies it: a PEFT model's with its adapters on (the student)
    or off (its ``base`` teacher); any other model's own.

    A head the adapter trains (`head_adapter`) is ``modules_to_save``'s trainable copy (the original when adapters are
    off), or for LoRA the merged weight ``W + scaling * B @ A``, a differentiable function of A and B (without the
    LoRA dropout: the divergence projects hidden states through one matrix).
    """
    head, kind = lm_head_of(model), head_adapter(model)
    if kind == "modules_to_save":
        active = adapters and not head.disable_adapters and head.active_adapters
        head = head.modules_to_save[head.active_adapters[0]] if active else head.original_module
    elif kind == "lora":
        base = head.get_base_layer()
        weight, bias = base.weight, base.bias
        if adapters and not head.disable_adapters:
            for name in (n for n in head.active_adapters if n in head.lora_A):
                lora_a, lora_b, scaling = head.lora_A[name], head.lora_B[name], head.scaling[name]
                weight = weight + scaling * (lora_b.weight @ lora_a.weight).to(weight.dtype)
                if lora_b.bias is not None:  # lora_bias=True
                    bias = scaling * lora_b.bias if bias is None else bias + scaling * lora_b.bias
        return weight, bias
    return head.weight, getattr(head, "bias", None)


def logit_transform(model: Any) -> tuple[float, float | None]:
    """``(logit_scale, final_logit_softcapping)`` the model applies after its LM head.

    TRL reads the same config fields inline in its DistillationTrainer (no public helper), so we read them here.
    """
    config = causal_lm_of(model).config.get_text_config()
    scale = getattr(config, "logit_scale", None)
    if scale is None:
        scale = getattr(config, "output_multiplier", None)
    if scale is None:
        scale = getattr(config, "lm_head_multiplier", None)
    if scale is None and getattr(config, "logits_scaling", None) is not None:
        scale = config.logits_scaling if config.model_type == "hyperclovax" else 1 / config.logits_scaling
    return (1.0 if scale is None else float(scale)), getattr(config, "final_logit_softcapping", None)


def vocab_rows(model: Any) -> int:
    """Rows of the LM head (the size of the next-token distribution), read before any sharding."""
    weight = head_parameters(model, adapters=False)[0]
    shape = getattr(weight, "ds_shape", None) or weight.shape
    return int(shape[0])


def check_same_vocab(student: Any, teacher: Any, student_tokenizer: Any = None, teacher_tokenizer: Any = None) -> None:
    """Raise `TeacherError` unless both models predict over the same vocabulary (same size, same token ids)."""
    s_rows, t_rows = vocab_rows(student), vocab_rows(teacher)
    if s_rows != t_rows:
        raise TeacherError(
            f"teacher vocabulary ({t_rows} LM-head rows) differs from the student's ({s_rows}); distillation "
            "compares next-token distributions token by token, so both must share one tokenizer and vocabulary. "
            "Use a teacher from the same model family, or distill_teacher='base'."
        )
    if student_tokenizer is not None and teacher_tokenizer is not None:
        s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if s_vocab != t_vocab:
            differ = sorted(set(s_vocab.items()) ^ set(t_vocab.items()))[:3]
            raise TeacherError(
                f"teacher and student tokenizers map tokens to different ids (e.g. {differ}); distillation needs "
                "one shared vocabulary. Use a teacher trained with the student's tokenizer."
            )


# ---- memory ----------------------------------------------------------------------------------------------------
def available_bytes(device: torch.device | str) -> int | None:
    """Free memory on ``device`` (CUDA: driver free memory; CPU: MemAvailable), or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def snapshot_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes a frozen copy of ``model`` takes (floating parameters in ``dtype``, if given)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        size = dtype.itemsize if (dtype is not None and tensor.is_floating_point()) else tensor.element_size()
        total += tensor.numel() * size
    return total


def snapshot_teacher(
    model: nn.Module, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
    headroom: float = 0.9,
) -> nn.Module:
    """A frozen copy of ``model`` (eval mode, no gradients), built directly on ``device`` in ``dtype``.

    Parameters are copied one by one onto the target device (tied weights stay tied), so a CPU snapshot of a GPU
    model never needs room for a second copy on the GPU. Raises `TeacherError` stating the memory needed when the
    target device does not have it.
    """
    if is_peft(model):
        raise TeacherError("a PEFT model needs no snapshot: its teacher is the same model with adapters disabled.")
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    source = next(model.parameters()).device
    target = torch.device(device) if device is not None else source
    need = snapshot_bytes(model, dtype)
    free = available_bytes(target)
    if free is not None and need > headroom * free:
        raise TeacherError(
            f"no room for the frozen teacher snapshot distill_teacher='base' needs for a full fine-tune: it takes "
            f"{_gib(need)} on {target}, and only {_gib(free)} is free. Options: train a PEFT adapter (the teacher is "
            "then the same model with adapters disabled: no copy), set distill_teacher_dtype='bfloat16', "
            "distill_teacher_device='cpu', or precompute an offline teacher (`hf-retain distill-cache`, "
            "distill_teacher='offline')."
        )
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        raise TeacherError(
            "the model was loaded already partitioned by DeepSpeed ZeRO-3 (zero.Init), so no rank holds the full "
            "weights to snapshot; set distill_teacher='path' with distill_teacher_path=<the checkpoint you loaded> "
            "(it is then loaded and partitioned for inference under ZeRO-3, as TRL does for its teachers)."
        )
    memo: dict[int, Any] = {}
    for param in model.parameters():
        if id(param) not in memo:
            data = param.detach().to(device=target, dtype=dtype if param.is_floating_point() else None, copy=True)
            memo[id(param)] = nn.Parameter(data, requires_grad=False)
    for buffer in model.buffers():
        if id(buffer) not in memo:
            memo[id(buffer)] = buffer.detach().to(device=target, copy=True)
    teacher = copy.deepcopy(model, memo)
    # An instance-level `forward` (TRL's fused LM head patches one in) is a closure over the *student's* original
    # forward, so the copy would silently run the student; the teacher needs only its class's plain forward.
    teacher.__dict__.pop("forward", None)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def teacher_source(path: str) -> str:
    """Where ``distill_teacher_path`` loads from: a local folder written by ``save_pretrained``, a ``builtin:`` model
    or a hub id (``org/name``); a local path that does not exist is a `TeacherError` naming it, rather than
    transformers' complaint that it is not a valid repo id."""
    if not isinstance(path, str) or not path.strip():
        raise TeacherError(f"distill_teacher_path={path!r} must name the teacher: a folder written by save_pretrained "
                           "or a hub id like 'HuggingFaceTB/SmolLM2-135M'.")
    if path.startswith(BUILTIN_PREFIX):
        try:
            return resolve_model(path)
        except ModelLoadError as err:
            raise TeacherError(f"distill_teacher_path={path!r}: {err}") from None
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise TeacherError(
                f"The teacher path distill_teacher_path={path!r} exists but is not a saved model (no config.json in "
                "it). It must be a folder written by save_pretrained (model.save_pretrained(folder), or a Trainer "
                "checkpoint-N folder) or a hub id like 'HuggingFaceTB/SmolLM2-135M'."
            )
        return str(local)
    if path.startswith((".", "/", "~", "\\")) or path.count("/") > 1 or "\\" in path:  # hub ids are 'org/name'
        raise TeacherError(
            f"The teacher path distill_teacher_path={path!r} does not exist (relative paths are resolved from "
            f"{Path.cwd()}). It must be a folder written by save_pretrained (model.save_pretrained(folder), or a "
            "Trainer checkpoint-N folder) or a hub id like 'HuggingFaceTB/SmolLM2-135M'. Check the path."
        )
    return path


def load_path_teacher(
    path: str, student: Any, *, student_tokenizer: Any = None, device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> nn.Module:
    """Load the causal LM at ``path`` (a folder written by ``save_pretrained``, a hub id or a ``builtin:`` model) as
    a frozen teacher and check it shares the student's vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if dtype is None:
        dtype = next(causal_lm_of(student).parameters()).dtype
    source = teacher_source(path)
    try:
        teacher = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=offline())
    except (OSError, ValueError) as err:
        where = "" if source != path else (
            f" It is not a local folder (there is none at {Path(path).expanduser().absolute()}), and as a hub id it "
            "could not be loaded" + (" from the Hugging Face cache, since HF_HUB_OFFLINE=1 forbids downloading"
                                     if offline() else "") + "."
        )
        detail = " ".join(str(err).split()).rstrip(".")  # one paragraph: transformers' messages span lines
        raise TeacherError(
            f"could not load the teacher checkpoint distill_teacher_path={path!r}: {type(err).__name__}: {detail}."
            f"{where} It must be a folder written by save_pretrained (with config.json and the weights) or a hub id "
            "like 'HuggingFaceTB/SmolLM2-135M'."
        ) from err
    teacher_tokenizer = None
    if student_tokenizer is not None:
        try:
            teacher_tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline())
        except (OSError, ValueError, TypeError):
            logger.info("hf_retain: %s has no tokenizer files; checked the vocabulary size only.", path)
    check_same_vocab(student, teacher, student_tokenizer, teacher_tokenizer)
    if device is not None:
        teacher.to(device)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


# ---- teacher forward -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def capture_backbone_output(model: Any, store: dict[str, Any], key: str = "hidden") -> Iterator[None]:
    """Record the backbone's output (the LM head's input) of the next forward into ``store[key]``."""

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state
        store.setdefault(key, hidden)

    handle = backbone_of(model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(causal_lm_of(model).forward).parameters
    except (TypeError, ValueError):
        return False


class TeacherMode:
    """Puts a model into its teacher behaviour for one forward, then back: every module in eval mode (no dropout)
    and, with ``disable_adapters``, a PEFT model's adapter layers off (the ``base`` teacher of a PEFT model).

    ``nn.Module.train()`` and PEFT's ``disable_adapter()`` walk the module tree in Python on every call; on the tiny
    benchmark model the two cost ~9 ms per training step (measured; ~4% of a LoRA step). Here the modules concerned
    are found once, and each switch flips their flags and then restores each one exactly as it was. Models whose
    switch does more than flip flags (prompt-learning adapters; hub kernels that transformers re-selects on a mode
    change) go through ``eval()``/``train()`` and ``disable_adapter()`` instead.

    Example:
        >>> from hf_retain import build_tiny_model
        >>> from hf_retain.distill import TeacherMode
        >>> model = build_tiny_model(num_hidden_layers=1).train()
        >>> mode = TeacherMode(model)
        >>> with mode():
        ...     model.training
        False
        >>> model.training
        True
    """

    def __init__(self, model: Any, *, disable_adapters: bool = False) -> None:
        self.model, self.disable_adapters = model, disable_adapters
        self.modules = list(model.modules())
        self.adapter_layers: list[nn.Module] = []
        self.fast = not getattr(causal_lm_of(model), "use_kernels", False)
        if disable_adapters:
            from peft.tuners.tuners_utils import BaseTunerLayer
            from peft.utils import AuxiliaryTrainingWrapper

            config = model.active_peft_config
            self.adapter_layers = [m for m in self.modules if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
            if config.is_prompt_learning or config.is_adaption_prompt or not all(
                isinstance(getattr(m, "_disable_adapters", None), bool) for m in self.adapter_layers
            ):
                self.fast = False
        self.logits_to_keep = _accepts(model, "logits_to_keep")

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self.fast:
            with self._through_the_libraries():
                yield
            return
        modes = [m.training for m in self.modules]
        flags = [m._disable_adapters for m in self.adapter_layers]
        try:
            for m in self.modules:
                m.training = False
            for m in self.adapter_layers:
                m._disable_adapters = True  # what PEFT's layers read in forward (their `disable_adapters` property)
            yield
        finally:
            for m, mode in zip(self.modules, modes):
                m.training = mode
            for m, flag in zip(self.adapter_layers, flags):
                m._disable_adapters = flag

    @contextlib.contextmanager
    def _through_the_libraries(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter() if self.disable_adapters else contextlib.nullcontext():
                yield
        finally:
            self.model.train(was_training)


@torch.no_grad()
def teacher_hidden_states(
    teacher: Any, inputs: dict[str, Any], *, disable_adapters: bool = False, mode: TeacherMode | None = None
) -> torch.Tensor:
    """Final hidden states ``[B, T, H]`` of ``teacher`` on ``inputs`` (no gradients, dropout off).

    The forward goes through the model's own ``forward`` so FSDP2 and DeepSpeed ZeRO-3 gather their shards as in
    training; ``logits_to_keep=1`` makes the LM head project one position only: the divergence projects the rest in
    chunks. With ``disable_adapters`` the PEFT adapters are off for this call (the ``base`` teacher of a PEFT model).
    Pass a `TeacherMode` built once to call this every step.
    """
    mode = mode or TeacherMode(teacher, disable_adapters=disable_adapters)
    store: dict[str, Any] = {}
    kwargs = dict(inputs, use_cache=False)
    if mode.logits_to_keep:
        kwargs["logits_to_keep"] = 1
    with mode(), capture_backbone_output(teacher, store):
        teacher(**kwargs)
    if "hidden" not in store:
        raise TeacherError("the teacher's forward never ran its backbone; cannot read its hidden states.")
    return store["hidden"]
