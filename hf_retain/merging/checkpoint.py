"""`merge_models`: merge whole checkpoints (or LoRA adapters of one base) tensor by tensor into a new checkpoint.

Inputs are folders (or ``builtin:`` names / hub ids, fetched to the local cache): full safetensors checkpoints
(``model.safetensors`` or a sharded ``model.safetensors.index.json``) or PEFT LoRA adapters
(``adapter_config.json`` + ``adapter_model.safetensors``) trained on the base. An adapter's task vector for a weight is
its LoRA update ``scale * B @ A``; weights it does not touch have a zero task vector. Inputs may mix both kinds; the
result is always a full checkpoint.

How it runs, and why:

1. Everything is checked first, from config files and safetensors headers only (no tensor data): the method's
   parameters, the output folder, each input's architecture, tensor names and shapes. Bad input raises `MergeError`
   (or `ModelLoadError` for a folder that is not a model) before anything is written.
2. Tensors are streamed: for each tensor name, the base's and each input's tensor are read (one ``safe_open`` per
   read, so no file stays memory-mapped), merged by `merge_task_vectors`, and kept until their output shard is
   written. Peak memory is one output shard plus one tensor per input, not N models.
3. Everything is written into a hidden staging folder beside ``output_dir`` and renamed into place at the end, so an
   interrupted merge leaves no half checkpoint that loads.

The output holds the base's config and generation config, its tokenizer files and a model card recording the method,
inputs, weights and parameters, and each input's optimizer lineage (`lookup_pretraining_optimizer`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData, snapshot_download
from safetensors import safe_open
from safetensors.torch import save_file

from hf_retain.constants import BUILTIN_PREFIX
from hf_retain.errors import ModelLoadError
from hf_retain.hub import hub_error, looks_like_path, offline
from hf_retain.lineage import lookup_pretraining_optimizer, write_lineage
from hf_retain.merging.tensors import (
    DENSITY_METHODS,
    RANDOM_METHODS,
    SIGN_METHODS,
    MergeError,
    check_merge_parameters,
    merge_task_vectors,
)
from hf_retain.models import resolve_model, resolve_tokenizer
from hf_retain.state import read_json_state

logger = logging.getLogger(__name__)

__all__ = ["merge_models", "MergeResult", "holds_model", "MAX_SHARD_SIZE"]

MAX_SHARD_SIZE = 5 * 1024**3  # transformers' default shard size
MAX_JSON_BYTES = 10_000_000  # an index of a 1000-shard model is < 1 MB
WEIGHTS_NAME, INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
MODEL_FILES = (WEIGHTS_NAME, INDEX_NAME, "config.json", ADAPTER_CONFIG, ADAPTER_WEIGHTS, "pytorch_model.bin")
# Copied from the base (or its tokenizer folder) when present: what from_pretrained needs besides the weights.
_COPY_PATTERNS = ("tokenizer*.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab*",
                  "merges.txt", "spiece.model", "*.tiktoken", "chat_template.*", "generation_config.json")
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@dataclass
class MergeResult:
    """What `merge_models` wrote, and the most tensor bytes it held at once (``peak_held_bytes``: the output shard
    being filled plus the base's, each input's and the merged copy of the current tensor)."""

    output_dir: Path
    method: str
    base: str
    models: list[str]
    parameters: dict[str, Any]
    tensors: int
    output_bytes: int
    peak_held_bytes: int
    seconds: float
    lineage: dict[str, str | None] = field(default_factory=dict)


@dataclass
class _TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _BYTES.get(self.dtype, 4)


def _read_tensor(file: Path, name: str) -> torch.Tensor:
    with safe_open(str(file), framework="pt", device="cpu") as handle:
        return handle.get_tensor(name)


def _headers(file: Path, names: Sequence[str] | None = None) -> dict[str, _TensorInfo]:
    """Names, shapes and dtypes from a safetensors header (no tensor data is read)."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            out = {}
            for name in (handle.keys() if names is None else names):
                piece = handle.get_slice(name)
                out[name] = _TensorInfo(file, tuple(piece.get_shape()), piece.get_dtype())
            return out
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelLoadError(f"{file} is not a readable safetensors file ({type(err).__name__}: {err}). Save the "
                             "model again with save_pretrained(safe_serialization=True).") from err


def _read_json(path: Path) -> dict[str, Any]:
    """A model's config, shard index or adapter config: a bounded read, with the file named when it is bad."""
    return read_json_state(path, what="model file", max_bytes=MAX_JSON_BYTES, error=ModelLoadError,
                           how_to_skip="Save the model again with save_pretrained, or point the merge at another copy.")


def _folder(ref: str) -> Path:
    """The local folder of a model reference: a path, a ``builtin:`` name, or a hub id (local cache when offline)."""
    if ref.startswith(BUILTIN_PREFIX):
        return Path(resolve_model(ref))
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(f"{ref} is a file; give the folder that holds the model (save_pretrained output).")
        return local
    if looks_like_path(ref):
        raise ModelLoadError(f"Model folder {ref} does not exist. Check the path.")
    try:
        return Path(snapshot_download(ref, local_files_only=offline(),
                                      allow_patterns=["*.json", "*.safetensors", "*.md", *_COPY_PATTERNS]))
    except Exception as err:  # hub errors come in many classes; all mean "cannot get this model"
        raise hub_error("model", ref, err) from err


def holds_model(folder: Path) -> bool:
    """Whether ``folder`` holds a saved model or adapter (what `merge_models` refuses to overwrite by default)."""
    return folder.is_dir() and any((folder / name).exists() for name in MODEL_FILES)


class _Checkpoint:
    """A full safetensors checkpoint, read tensor by tensor."""

    kind = "full"

    def __init__(self, ref: str, folder: Path) -> None:
        self.ref, self.folder = ref, folder
        config = folder / "config.json"
        self.config = _read_json(config) if config.is_file() else None
        if (folder / INDEX_NAME).is_file():
            index = _read_json(folder / INDEX_NAME)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelLoadError(f"{folder / INDEX_NAME} has no 'weight_map'; the sharded checkpoint is broken.")
            by_file: dict[str, list[str]] = {}
            for name, file in weight_map.items():
                if not isinstance(file, str) or "/" in file or "\\" in file or file.startswith("."):
                    raise ModelLoadError(f"{folder / INDEX_NAME} maps {name!r} to {file!r}, not a shard file name.")
                by_file.setdefault(file, []).append(name)
            self.tensors: dict[str, _TensorInfo] = {}
            for file, names in by_file.items():
                if not (folder / file).is_file():
                    raise ModelLoadError(f"Shard {folder / file} listed in {INDEX_NAME} is missing.")
                self.tensors.update(_headers(folder / file, names))
            self.tensors = {name: self.tensors[name] for name in weight_map}
        elif (folder / WEIGHTS_NAME).is_file():
            self.tensors = _headers(folder / WEIGHTS_NAME)
        elif (folder / "pytorch_model.bin").is_file() or any(folder.glob("pytorch_model*.bin.index.json")):
            raise ModelLoadError(f"{ref} holds pickled weights (pytorch_model.bin), which are never unpickled here. "
                                 "Convert it once: AutoModelForCausalLM.from_pretrained(path).save_pretrained(path, "
                                 "safe_serialization=True).")
        else:
            raise ModelLoadError(f"{ref} ({folder}) holds no {WEIGHTS_NAME}, {INDEX_NAME} or {ADAPTER_CONFIG}; it is "
                                 "not a saved model or LoRA adapter.")

    def check_against(self, base: _Checkpoint) -> None:
        mine, theirs = self.config or {}, base.config or {}
        for key in ("model_type", "architectures"):
            if key in mine and key in theirs and mine[key] != theirs[key]:
                raise MergeError(f"{self.ref} is a different architecture: its config.json has {key}={mine[key]!r}, "
                                 f"the base {base.ref} has {theirs[key]!r}. Merge fine-tunes of the same base only.")
        for name, info in base.tensors.items():
            other = self.tensors.get(name)
            if other is None:
                raise MergeError(f"Tensor {name!r} of the base {base.ref} is missing from {self.ref}. Every input "
                                 "must hold every tensor of the base (same architecture, saved the same way).")
            if other.shape != info.shape:
                raise MergeError(f"Tensor {name!r} has shape {list(info.shape)} in the base {base.ref} but "
                                 f"{list(other.shape)} in {self.ref}: different architectures or sizes cannot merge.")
        extra = [name for name in self.tensors if name not in base.tensors]
        if extra:
            raise MergeError(f"{self.ref} holds tensor {extra[0]!r} ({len(extra)} in all) that the base {base.ref} "
                             "lacks: different architectures cannot merge.")

    def read(self, name: str) -> torch.Tensor:
        return _read_tensor(self.tensors[name].file, name)

    def finetuned(self, name: str, base_tensor: torch.Tensor) -> torch.Tensor:
        return self.read(name)


_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?:lora_(?P<ab>[AB])\.weight|lora_embedding_(?P<eab>[AB]))$")


class _Adapter:
    """A PEFT LoRA adapter of the base: the task vector of an adapted weight is ``scale * B @ A``, else zero."""

    kind = "lora"

    def __init__(self, ref: str, folder: Path) -> None:
        self.ref, self.folder = ref, folder
        self.config = _read_json(folder / ADAPTER_CONFIG)
        where = f"LoRA adapter {ref}"
        if str(self.config.get("peft_type", "")).upper() != "LORA":
            raise MergeError(f"{where} is a {self.config.get('peft_type')!r} adapter; only LoRA adapters merge here.")
        if self.config.get("use_dora"):
            raise MergeError(f"{where} uses DoRA (use_dora: true), whose magnitude vector is not a task vector; "
                             "merge it into its base first (PeftModel.merge_and_unload) and pass the full model.")
        weights = folder / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise ModelLoadError(f"{where} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}; save it with "
                                 "save_pretrained(safe_serialization=True).")
        self.base_model = self.config.get("base_model_name_or_path")
        self.fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        headers = _headers(weights)
        self.lora: dict[str, dict[str, str]] = {}  # base weight name -> {"A": key, "B": key, "kind": linear|embedding}
        self.replaced: dict[str, str] = {}  # base weight name -> adapter key holding its full new value
        self.base_copies: dict[str, str] = {}  # frozen copies of base weights PEFT saves beside embedding adapters
        for key in headers:
            short = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
            match = _LORA_KEY.match(short)
            if match:
                entry = self.lora.setdefault(match["module"] + ".weight", {})
                entry[match["ab"] or match["eab"]] = key
                entry["kind"] = "embedding" if match["eab"] else "linear"
                entry["module"] = match["module"]
            elif ".lora_" in short:
                raise MergeError(f"{where} holds {key!r}, a LoRA tensor this merge does not understand (only lora_A/"
                                 "lora_B and lora_embedding_A/B).")
            elif ".base_layer." in short:
                self.base_copies[short.replace(".base_layer.", ".")] = key
            else:
                self.replaced[short.replace(".modules_to_save.", ".").replace(".original_module.", ".")] = key
        for entry in self.lora.values():
            if "A" not in entry or "B" not in entry:
                raise MergeError(f"{where} has only one of lora_A/lora_B for {entry['module']}; the adapter is "
                                 "incomplete.")
        self.headers = headers

    def _scale(self, module: str, rank: int) -> float:
        alpha = self.config.get("lora_alpha", 8)
        for pattern, value in (self.config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        return float(alpha) / (math.sqrt(rank) if self.config.get("use_rslora") else rank)

    def _delta_shape(self, entry: dict[str, str]) -> tuple[int, ...]:
        a, b = self.headers[entry["A"]].shape, self.headers[entry["B"]].shape
        if entry["kind"] == "embedding" or self.fan_in_fan_out:
            return (a[1], b[0])
        return (b[0], a[1])

    def check_against(self, base: _Checkpoint) -> None:
        for name, entry in self.lora.items():
            info = base.tensors.get(name)
            if info is None:
                raise MergeError(f"LoRA adapter {self.ref} adapts {entry['module']}, but the base {base.ref} has no "
                                 f"tensor {name!r}: the adapter was trained on another architecture.")
            if self._delta_shape(entry) != info.shape:
                raise MergeError(f"Tensor {name!r} has shape {list(info.shape)} in the base {base.ref} but the LoRA "
                                 f"update of {self.ref} has shape {list(self._delta_shape(entry))}: the adapter was "
                                 "trained on a base of another size.")
        for name, key in [*self.replaced.items(), *self.base_copies.items()]:
            info = base.tensors.get(name)
            if info is None:
                raise MergeError(f"LoRA adapter {self.ref} stores {key!r}, which has no tensor {name!r} in the base "
                                 f"{base.ref} (a tied or renamed weight, e.g. modules_to_save on a tied lm_head); "
                                 "merge that adapter into its base first and pass the full model.")
            if self.headers[key].shape != info.shape:
                raise MergeError(f"Tensor {name!r} has shape {list(info.shape)} in the base {base.ref} but "
                                 f"{list(self.headers[key].shape)} in LoRA adapter {self.ref}.")

    def finetuned(self, name: str, base_tensor: torch.Tensor) -> torch.Tensor:
        file = self.folder / ADAPTER_WEIGHTS
        if name in self.replaced:
            return _read_tensor(file, self.replaced[name])
        entry = self.lora.get(name)
        if entry is None:
            return base_tensor
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            a, b = handle.get_tensor(entry["A"]).float(), handle.get_tensor(entry["B"]).float()
        delta = b @ a
        if entry["kind"] == "embedding" or self.fan_in_fan_out:
            delta = delta.T
        return base_tensor.float() + self._scale(entry["module"], a.shape[0]) * delta


def _open_input(ref: str) -> _Checkpoint | _Adapter:
    folder = _folder(ref)
    if (folder / ADAPTER_CONFIG).is_file():
        return _Adapter(ref, folder)
    return _Checkpoint(ref, folder)


def _shard_bytes(max_shard_size: int | str) -> int:
    if isinstance(max_shard_size, int) and not isinstance(max_shard_size, bool):
        value = max_shard_size
    else:
        match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?I?B)\s*", str(max_shard_size).upper())
        if not match:
            raise MergeError(f"max_shard_size={max_shard_size!r}; give bytes (int) or a size like '5GB' or '500MB'.")
        value = int(float(match[1]) * _UNITS[match[2]])
    if value <= 0:
        raise MergeError(f"max_shard_size={max_shard_size!r} must be positive.")
    return value


def _plan_shards(tensors: dict[str, _TensorInfo], limit: int) -> list[list[str]]:
    """Group tensor names, in order, into shards of at most ``limit`` bytes (a bigger tensor gets a shard alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, info in tensors.items():
        if shards[-1] and size + info.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += info.nbytes
    return shards


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise MergeError(f"output_dir {output_dir} is a file; give a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        what = "holds a model already" if holds_model(output_dir) else "is not empty"
        raise MergeError(f"output_dir {output_dir} {what}; choose a new folder, or pass overwrite=True "
                         "(--overwrite) to replace it.")


def _copy_support_files(base: _Checkpoint, tokenizer_folder: Path | None, staging: Path) -> None:
    if base.config is not None:
        shutil.copy2(base.folder / "config.json", staging / "config.json")
    for folder in [f for f in (tokenizer_folder, base.folder) if f is not None]:
        for pattern in _COPY_PATTERNS:
            for file in folder.glob(pattern):
                if file.is_file() and not (staging / file.name).exists():
                    shutil.copy2(file, staging / file.name)


def _lineage(inputs: Sequence[_Checkpoint | _Adapter]) -> tuple[dict[str, str | None], list[dict[str, Any]]]:
    """Each input's optimizer lineage: name per input, and the details for the card."""
    names: dict[str, str | None] = {}
    details = []
    for source in inputs:
        try:
            found = lookup_pretraining_optimizer(str(source.folder))
        except (OSError, ValueError) as err:  # lineage is a record, never a reason to fail a merge
            names[source.ref] = None
            details.append({"model": source.ref, "optimizer": None, "notes": [f"{type(err).__name__}: {err}"]})
            continue
        info = found.info
        names[source.ref] = info.name if info else None
        details.append({"model": source.ref, "optimizer": info.name if info else None,
                        "source": info.source if info else None, "notes": found.notes[:5]})
    return names, details


def _model_card(staging: Path, *, base: _Checkpoint, inputs: Sequence[_Checkpoint | _Adapter], method: str,
                parameters: dict[str, Any], weights: list[float] | None,
                lineage: dict[str, str | None], lineage_details: list[dict[str, Any]]) -> None:
    base_lineage, *input_lineage = lineage_details
    models = []
    for i, source in enumerate(inputs):
        entry: dict[str, Any] = {"model": source.ref, "kind": source.kind}
        if weights is not None:
            entry["weight"] = weights[i]
        entry["pretraining_optimizer"] = input_lineage[i]["optimizer"]
        models.append(entry)
    record = {"method": method, "base": base.ref, "models": models, "parameters": parameters,
              "lineage": lineage_details}
    data = ModelCardData(tags=["merge", "hf_retain"], library_name="transformers")
    hub_ids = [s.ref for s in (base, *inputs) if not os.path.isabs(s.ref) and not s.ref.startswith((".", "~"))
               and not s.ref.startswith(BUILTIN_PREFIX) and s.ref.count("/") == 1 and not Path(s.ref).exists()]
    if hub_ids:
        data.base_model = hub_ids
    card_data = data.to_dict()
    card_data["hf_retain_merge"] = record
    lines = [f"# Merge of {len(inputs)} models ({method})", "",
             f"Made with `hf_retain.merging.merge_models` from the base `{base.ref}`.", "",
             "| input | kind | weight | pretraining optimizer |", "|---|---|---|---|"]
    for entry in models:
        lines.append(f"| `{entry['model']}` | {entry['kind']} | {entry.get('weight', '-')} | "
                     f"{entry['pretraining_optimizer'] or 'unknown'} |")
    lines += ["", f"Base `{base.ref}`: pretraining optimizer {base_lineage['optimizer'] or 'unknown'}.", "",
              "Parameters: " + (", ".join(f"{k}={v}" for k, v in parameters.items()) or "none") + "."]
    families = set(lineage.values())
    agreed = families.pop() if len(families) == 1 else None
    if agreed is None:
        lines += ["", "The inputs' optimizer lineage differs or is unknown, so this card names no single optimizer "
                      "that trained the merge."]
    card = ModelCard("---\n" + yaml.safe_dump(card_data, sort_keys=False) + "---\n\n" + "\n".join(lines) + "\n")
    card.save(str(staging / "README.md"))
    if agreed is not None:
        # every input (and the base) was trained with the same family: the merge inherits it, so a later
        # fine-tune's consistency check reads it like any model's lineage
        write_lineage(staging / "README.md", {"optimizer": {"name": agreed}, "merge": {"method": method}})


def _publish(staging: Path, output_dir: Path) -> None:
    """Move the finished staging folder to ``output_dir`` (replacing what is there) with renames only."""
    if output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()
    if output_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        os.replace(output_dir, trash / output_dir.name)
        try:
            os.replace(staging, output_dir)
        except OSError:
            os.replace(trash / output_dir.name, output_dir)  # put the old model back
            raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, output_dir)


def merge_models(base: str | os.PathLike[str], models: Sequence[str | os.PathLike[str]], method: str, *,
                 output_dir: str | os.PathLike[str], weights: Sequence[float] | None = None,
                 density: float | None = None, t: float | None = None, majority_sign_method: str = "total",
                 seed: int | None = None, overwrite: bool = False, max_shard_size: int | str = MAX_SHARD_SIZE,
                 tokenizer: str | os.PathLike[str] | None = None) -> MergeResult:
    """Merge ``models`` (fine-tunes or LoRA adapters of ``base``) by ``method`` into a loadable checkpoint at
    ``output_dir``; parameters as in `merge_task_vectors`.

    ``seed`` makes DARE reproducible (each tensor gets its own seed derived from it and its name). ``tokenizer``
    names where the tokenizer files come from (default: the base, or the tokenizer folder of a ``builtin:`` base).
    Raises `MergeError` / `ModelLoadError` before writing anything when the inputs do not fit together.
    """
    started = time.perf_counter()
    refs = [os.fspath(m) for m in models]
    weight_list = check_merge_parameters(method, len(refs), weights=weights, density=density, t=t,
                                         majority_sign_method=majority_sign_method)
    limit = _shard_bytes(max_shard_size)
    out = Path(output_dir).expanduser().resolve()
    _check_output(out, overwrite)
    base_ref = os.fspath(base)
    base_source = _open_input(base_ref)
    if not isinstance(base_source, _Checkpoint):
        raise MergeError(f"The base {base_ref} is a LoRA adapter; the base must be the full model the inputs were "
                         "fine-tuned from.")
    inputs = [_open_input(ref) for ref in refs]
    for source in inputs:
        if source.folder.resolve() == out:
            raise MergeError(f"output_dir {out} is also the input {source.ref}; write the merge elsewhere.")
        source.check_against(base_source)
    tokenizer_ref = os.fspath(tokenizer) if tokenizer is not None else base_ref
    tokenizer_folder = Path(resolve_tokenizer(tokenizer_ref)) if tokenizer_ref.startswith(BUILTIN_PREFIX) \
        else _folder(tokenizer_ref)
    parameters: dict[str, Any] = {}
    if method in DENSITY_METHODS:
        parameters["density"] = density
    if method == "slerp":
        parameters["t"] = t
    if method in SIGN_METHODS:
        parameters["majority_sign_method"] = majority_sign_method
    if method in RANDOM_METHODS:
        parameters["seed"] = seed
    lineage, lineage_details = _lineage([base_source, *inputs])
    input_lineage = {ref: lineage[ref] for ref in refs}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=out.parent))
    try:
        shards = _plan_shards(base_source.tensors, limit)
        names = [WEIGHTS_NAME] if len(shards) == 1 else [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        weight_map: dict[str, str] = {}
        peak = total = 0
        for file, shard in zip(names, shards):
            merged: dict[str, torch.Tensor] = {}
            held = 0
            for name in shard:
                base_tensor = base_source.read(name)
                if base_tensor.is_floating_point():
                    finetuned = [source.finetuned(name, base_tensor) for source in inputs]
                    tensor_seed = None if seed is None else (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63
                    result = merge_task_vectors(base_tensor, finetuned, method, weights=weight_list, density=density,
                                                t=t, majority_sign_method=majority_sign_method, seed=tensor_seed)
                    live = sum(x.numel() * x.element_size() for x in (base_tensor, *finetuned, result))
                    del finetuned
                else:  # integer buffers (position ids, masks) are not learned: the base's
                    result = base_tensor
                    live = base_tensor.numel() * base_tensor.element_size()
                peak = max(peak, held + live)
                merged[name] = result.contiguous()
                held += result.numel() * result.element_size()
                weight_map[name] = file
            save_file(merged, str(staging / file), metadata={"format": "pt"})
            total += held
            del merged
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (staging / INDEX_NAME).write_text(json.dumps(index, indent=2), encoding="utf-8")
        _copy_support_files(base_source, tokenizer_folder, staging)
        _model_card(staging, base=base_source, inputs=inputs, method=method, parameters=parameters,
                    weights=weight_list, lineage=input_lineage, lineage_details=lineage_details)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = MergeResult(out, method, base_ref, refs, parameters, len(weight_map), total, peak,
                         round(time.perf_counter() - started, 3), input_lineage)
    logger.info("merged %d models by %s into %s (%d tensors, %.1f MB)", len(refs), method, out, result.tensors,
                total / 1e6)
    return result

