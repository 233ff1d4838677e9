"""`read_pretraining_optimizer`: which optimizer trained a model, from its card, its files, its base models or the
registry.

For each model in the chain (the model asked about, then its ``base_model``, then that one's base ...):

1. its model card (`parse_model_card`: our lineage block, Trainer hyperparameters, Keras tables, prose);
2. checkpoint metadata beside the weights: JSON/YAML training configs (``optim``/``optimizer`` keys), never a pickle
   (``training_args.bin`` is only reported as present: unpickling can run code);
3. `registry.yaml` by repo id;
4. then its ``base_model`` (card metadata, PEFT ``adapter_config.json``, or ``config.json``'s ``_name_or_path``),
   with a depth limit and cycle detection.

If the whole chain says nothing, the first model's ``config.json`` ``model_type`` is matched against the registry as a
last resort (low confidence). Hub ids resolve through ``huggingface_hub``; with ``HF_HUB_OFFLINE=1`` only the local
cache is used and a note says what is missing. Nothing here raises on bad files or an unreachable hub: you get None and
the notes (`lookup_pretraining_optimizer`) say why.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "README.md").write_text("- optimizer: Use adamw_torch with betas=(0.9,0.999) and epsilon=1e-08")
>>> read_pretraining_optimizer(folder).name
'adamw'
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_retain.lineage.card import MAX_CARD_CHARS, parse_model_card, safe_yaml_load, split_front_matter
from hf_retain.lineage.info import OptimizerInfo, canonical_optimizer_name
from hf_retain.lineage.registry import MODEL_TYPE_CONFIDENCE, match_model_type, match_repo_id

__all__ = ["read_pretraining_optimizer", "lookup_pretraining_optimizer", "LineageLookup", "DEFAULT_MAX_DEPTH"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_DEPTH = 8
MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_FILES = 24
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}(?:/[A-Za-z0-9][\w.\-]{0,95})?$")
# JSON/YAML files that never carry training settings
_SKIP_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map|added_tokens|vocab|merges|generation_config|preprocessor_config|"
    r".*\.index|model\.safetensors\.index|pytorch_model\.bin\.index|chat_template|sentencepiece.*|"
    r"modules|sentence_bert_config|config_sentence_transformers|processor_config|video_preprocessor_config)$", re.I)
_OPTIMIZER_KEYS = ("optim", "optimizer", "optimizer_type", "optimizer_name", "optimizer_class", "optimizer_cls")


@dataclass
class LineageLookup:
    """What `lookup_pretraining_optimizer` found: the answer, the models walked and notes on what was missing."""

    info: OptimizerInfo | None
    chain: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Node:
    ref: str
    kind: str  # dir | file | hub
    card_text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None
    config: dict[str, Any] | None = None


def read_pretraining_optimizer(
    model: Any, *, max_depth: int = DEFAULT_MAX_DEPTH, cache_dir: str | os.PathLike | None = None
) -> OptimizerInfo | None:
    """Which optimizer (pre)trained ``model``: a hub repo id, a local folder or card file, or a `PreTrainedModel`.

    Returns None when nothing says; `lookup_pretraining_optimizer` also returns the notes explaining why.

    >>> read_pretraining_optimizer("moonshotai/Moonlight-16B-A3B").name  # registry, even offline
    'muon'
    """
    return lookup_pretraining_optimizer(model, max_depth=max_depth, cache_dir=cache_dir).info


def lookup_pretraining_optimizer(
    model: Any, *, max_depth: int = DEFAULT_MAX_DEPTH, cache_dir: str | os.PathLike | None = None
) -> LineageLookup:
    """Like `read_pretraining_optimizer` but also returns the chain walked and notes on what could not be read."""
    if not isinstance(max_depth, int) or max_depth < 0:
        raise ValueError(f"max_depth={max_depth!r} must be a non-negative int (how many base_model hops to follow).")
    result = LineageLookup(info=None)
    ref = _model_ref(model, result.notes)
    if ref is None:
        return result
    visited: set[str] = set()
    first_config: dict[str, Any] | None = None
    depth = 0
    while ref is not None:
        key = _node_key(ref)
        if key in visited:
            result.notes.append(f"base_model cycle: {ref} was already visited; stopped following the chain.")
            break
        if depth > max_depth:
            result.notes.append(f"stopped after {max_depth} base_model hops (max_depth); {ref} not read.")
            break
        visited.add(key)
        result.chain.append(ref)
        node = _read_node(ref, cache_dir, result.notes)
        if first_config is None and node.config is not None:
            first_config = node.config
        info = _node_info(node, result.notes)
        if info is not None:
            result.info = info.with_updates(chain=list(result.chain))
            return result
        ref = _base_model(node, result.notes)
        depth += 1
    if first_config is not None:
        info = _model_type_info(first_config, result.notes)
        if info is not None:
            result.info = info.with_updates(chain=list(result.chain))
    if result.info is None:
        result.notes.append("no optimizer found in the cards, checkpoint files, base models or registry.")
    return result


# ---------------------------------------------------------------------------------------------------------------
def _model_ref(model: Any, notes: list[str]) -> str | None:
    if isinstance(model, (str, os.PathLike)):
        ref = os.fspath(model)
        if not ref.strip():
            raise ValueError("model must be a hub repo id, a local folder or a model card file; got an empty string.")
        return ref
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if hasattr(model, "config") or hasattr(model, "name_or_path"):
        if isinstance(name, str) and name.strip():
            return name
        notes.append(f"{type(model).__name__} has no name_or_path (built from a config?); pass the hub id or the "
                     "folder it was loaded from instead.")
        return None
    raise TypeError(f"model must be a repo id, a path or a PreTrainedModel, got {type(model).__name__}.")


def _node_key(ref: str) -> str:
    if os.path.exists(ref):
        return os.path.realpath(ref)
    return ref.strip().lower()


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _read_bounded(path: Path, limit: int, notes: list[str]) -> str | None:
    """Read at most ``limit`` bytes as text; None for binary files or unreadable paths."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        notes.append(f"could not read {path}: {err.strerror or err}")
        return None
    if b"\x00" in data[:8192]:
        notes.append(f"{path} looks binary; ignored.")
        return None
    if len(data) > limit:
        notes.append(f"{path} is larger than {limit} bytes; only the first {limit} were read.")
        data = data[:limit]
    return data.decode("utf-8", errors="replace")


def _read_node(ref: str, cache_dir: Any, notes: list[str]) -> _Node:
    path = Path(ref).expanduser()
    if path.is_dir():
        node = _Node(ref, "dir", folder=path)
        readme = path / "README.md"
        if readme.is_file():
            node.card_text = _read_bounded(readme, MAX_CARD_CHARS * 4, notes)
        else:
            notes.append(f"{path} has no README.md.")
    elif path.is_file():
        node = _Node(ref, "file", folder=path.parent, card_text=_read_bounded(path, MAX_CARD_CHARS * 4, notes))
    elif _REPO_ID.match(ref):
        node = _Node(ref, "hub")
        readme = _hub_file(ref, "README.md", cache_dir, notes)
        if readme is not None:
            node.folder = readme.parent  # the cached snapshot: other files already downloaded are read from here
            node.card_text = _read_bounded(readme, MAX_CARD_CHARS * 4, notes)
        config = _hub_file(ref, "config.json", cache_dir, notes, quiet=True)
        if config is not None and node.folder is None:
            node.folder = config.parent
    else:
        notes.append(f"{ref!r} is not a local folder, a file or a hub repo id (owner/name).")
        return _Node(ref, "missing")
    if node.card_text:
        node.meta, _ = split_front_matter(node.card_text[:MAX_CARD_CHARS])
    if node.folder is not None:
        node.config = _read_json(node.folder / "config.json", notes)
    return node


_HUB_REACHABLE: dict[str, bool] = {}


def _hub_reachable() -> bool:
    """One short TCP probe of the hub endpoint per process, so an unreachable hub costs seconds, not retries."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if host not in _HUB_REACHABLE:
        import socket

        try:
            socket.create_connection((host, port), timeout=3).close()
            _HUB_REACHABLE[host] = True
        except OSError:
            _HUB_REACHABLE[host] = False
    return _HUB_REACHABLE[host]


def _hub_file(repo_id: str, filename: str, cache_dir: Any, notes: list[str], quiet: bool = False) -> Path | None:
    """The cached file if present, else (online) a download; None with a note when neither works."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # not cached (or a bad id): fall through to the network when allowed
        pass
    if _offline():
        if not quiet:
            notes.append(f"{filename} of {repo_id} is not in the local hub cache and HF_HUB_OFFLINE=1; download it "
                         f"with network access (`hf download {repo_id} {filename}`) or pass a local folder.")
        return None
    if not _hub_reachable():
        if not quiet:
            notes.append(f"the hub is unreachable and {filename} of {repo_id} is not cached; set HF_HUB_OFFLINE=1 "
                         "to skip the hub, or pass a local folder.")
        return None
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir, etag_timeout=5))
    except Exception as err:  # hub errors (missing file, gated or private repo): never crash a lookup
        if not quiet:
            first = str(err).splitlines()[0][:200] if str(err) else ""
            notes.append(f"could not fetch {filename} of {repo_id} from the hub: {type(err).__name__}: {first}")
        return None


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    text = _read_bounded(path, MAX_CONFIG_BYTES, notes)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        notes.append(f"{path} is not valid JSON; ignored.")
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------------------------
def _node_info(node: _Node, notes: list[str]) -> OptimizerInfo | None:
    if node.card_text:
        info = parse_model_card(node.card_text)
        if info is not None:
            where = "README.md" if node.kind != "file" else Path(node.ref).name
            return info.with_updates(source=f"{info.source} [{node.ref}: {where}]")
    if node.folder is not None:
        info = _checkpoint_info(node.folder, notes)
        if info is not None:
            return info
    entry = match_repo_id(node.ref) if node.kind == "hub" else None
    if entry is not None:
        info = entry.info()
        if info is not None:
            return info
        notes.append(f"registry knows {entry.family} ({node.ref}) but its source does not state the optimizer: "
                     f"{entry.note or entry.source}")
    return None


def _checkpoint_info(folder: Path, notes: list[str]) -> OptimizerInfo | None:
    """Optimizer from JSON/YAML training configs beside the weights (never a pickle)."""
    if (folder / "training_args.bin").exists():
        notes.append(f"{folder / 'training_args.bin'} exists but is a pickle; not read (unpickling can run code).")
    try:
        candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".json", ".yaml", ".yml")
                            and p.is_file() and not _SKIP_FILES.match(p.stem))
    except OSError:
        return None
    # trainer_state.json and config.json rarely name the optimizer; read the training configs first
    candidates.sort(key=lambda p: (p.name in ("config.json", "trainer_state.json"), p.name))
    for path in candidates[:MAX_CONFIG_FILES]:
        text = _read_bounded(path, MAX_CONFIG_BYTES, notes)
        if text is None:
            continue
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                continue
        else:
            data = safe_yaml_load(text)
        found = _find_optimizer_key(data)
        if found is not None:
            name, hyper, key_path = found
            return OptimizerInfo(
                name=canonical_optimizer_name(name), betas=hyper.get("betas"), eps=hyper.get("eps"),
                weight_decay=hyper.get("weight_decay"), lr=hyper.get("lr"), schedule=hyper.get("schedule"),
                source=f"checkpoint metadata ({path.name})", evidence=f"{path.name}: {key_path} = {name}",
                confidence=0.85, variant=name, stage="train",
            )
    return None


def _find_optimizer_key(data: Any, path: str = "", depth: int = 0, budget: list[int] | None = None
                        ) -> tuple[str, dict[str, Any], str] | None:
    budget = budget if budget is not None else [20_000]
    if depth > 8 or budget[0] <= 0:
        return None
    budget[0] -= 1
    if isinstance(data, dict):
        for key in _OPTIMIZER_KEYS:
            if key in data:
                name = _optimizer_value(data[key])
                if name:
                    hyper = _sibling_hyper(data, data[key])
                    return name, hyper, f"{path}{key}"
        for key, value in list(data.items())[:500]:
            if isinstance(value, (dict, list)):
                found = _find_optimizer_key(value, f"{path}{key}.", depth + 1, budget)
                if found:
                    return found
    elif isinstance(data, list):
        for i, value in enumerate(data[:200]):
            found = _find_optimizer_key(value, f"{path}{i}.", depth + 1, budget)
            if found:
                return found
    return None


def _optimizer_value(value: Any) -> str | None:
    if isinstance(value, str):
        text = value.strip()
        m = re.match(r"<class\s+'([\w.]+)'>", text)
        if m:
            text = m.group(1).rsplit(".", 1)[-1]
        if text and re.fullmatch(r"[A-Za-z][\w.\-]{0,60}", text) and text.lower() not in (
                "none", "null", "default", "auto", "true", "false"):
            return text.rsplit(".", 1)[-1] if "." in text and not text.lower().startswith("optimizernames") else text
        return None
    if isinstance(value, dict):
        for key in ("type", "name", "class_name", "_target_", "class", "optimizer"):
            inner = value.get(key)
            if isinstance(inner, str):
                return _optimizer_value(inner)
    return None


def _sibling_hyper(level: dict[str, Any], value: Any) -> dict[str, Any]:
    params: dict[str, Any] = dict(level)
    if isinstance(value, dict):
        params.update(value)
        if isinstance(value.get("params"), dict):
            params.update(value["params"])

    def num(*keys: str) -> float | None:
        for k in keys:
            v = params.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
        return None

    betas = params.get("betas")
    if isinstance(betas, (list, tuple)) and len(betas) == 2 and all(isinstance(b, (int, float)) for b in betas):
        betas_t: tuple[float, ...] | None = (float(betas[0]), float(betas[1]))
    elif num("adam_beta1") is not None and num("adam_beta2") is not None:
        betas_t = (num("adam_beta1"), num("adam_beta2"))  # type: ignore[assignment]
    else:
        betas_t = None
    schedule = params.get("lr_scheduler_type", params.get("lr_scheduler", params.get("scheduler")))
    return {
        "betas": betas_t, "eps": num("eps", "adam_epsilon", "epsilon"), "weight_decay": num("weight_decay"),
        "lr": num("lr", "learning_rate"), "schedule": schedule if isinstance(schedule, str) else None,
    }


def _base_model(node: _Node, notes: list[str]) -> str | None:
    base = node.meta.get("base_model")
    if isinstance(base, list):
        names = [b for b in base if isinstance(b, str) and b.strip()]
        if len(names) > 1:
            notes.append(f"{node.ref} lists {len(names)} base models (a merge?); following the first, {names[0]}.")
        base = names[0] if names else None
    if isinstance(base, str) and base.strip():
        return base.strip()
    if node.folder is not None:
        adapter = _read_json(node.folder / "adapter_config.json", notes)
        if adapter and isinstance(adapter.get("base_model_name_or_path"), str) and adapter["base_model_name_or_path"]:
            return adapter["base_model_name_or_path"]
    if node.config and isinstance(node.config.get("_name_or_path"), str):
        name = node.config["_name_or_path"].strip()
        if name and _node_key(name) != _node_key(node.ref) and (_REPO_ID.match(name) or os.path.isdir(name)):
            return name
    return None


def _model_type_info(config: dict[str, Any], notes: list[str]) -> OptimizerInfo | None:
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return None
    entry = match_model_type(model_type)
    if entry is None:
        return None
    info = entry.info(confidence=MODEL_TYPE_CONFIDENCE, how=f"config.json model_type={model_type!r}, a guess")
    if info is None:
        notes.append(f"model_type {model_type!r} suggests {entry.family}, whose source does not state the optimizer.")
    return info
