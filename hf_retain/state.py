"""The state files hf_retain writes into checkpoints: atomic writes, and reads that fail with a clear error.

A checkpoint holds hf_retain's own files beside the Trainer's (the EWC Fisher, the replay buffer and collator state,
the distillation teacher record and snapshot). A crash while one is written must never leave half a file under the
final name, so every write goes to a temporary file in the same folder, is flushed to disk, and is renamed into
place with `os.replace` (atomic on POSIX and Windows). A file that is truncated or corrupt anyway (a copy cut short,
a full disk on another tool's copy) is reported on load as a `StateFileError` that names the file, says what is
wrong with it and how to resume without it, instead of a JSON or safetensors traceback.

Example:
    >>> import tempfile, os
    >>> from hf_retain.state import read_json_state, write_json_atomic
    >>> path = write_json_atomic(os.path.join(tempfile.mkdtemp(), "state.json"), {"step": 3})
    >>> read_json_state(path, what="example state", how_to_skip="Delete it to start over.")
    {'step': 3}
    >>> _ = open(path, "w").write('{"step": ')          # truncated
    >>> try:
    ...     read_json_state(path, what="example state", how_to_skip="Delete it to start over.")
    ... except Exception as err:
    ...     print(type(err).__name__, "truncated" in str(err))
    StateFileError True
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from hf_retain.errors import RetentionError, StateFileError

__all__ = [
    "MAX_JSON_BYTES",
    "load_module_state",
    "load_safetensors_state",
    "read_json_state",
    "save_module_atomic",
    "save_safetensors_atomic",
    "write_json_atomic",
]

# hf_retain's JSON state files are kilobytes; anything near this size is not one of them.
MAX_JSON_BYTES = 64 * 2**20

PathLike = str | os.PathLike[str]


def _temp_sibling(path: Path) -> Path:
    """A fresh name in ``path``'s folder (same filesystem, so the final rename is atomic), hidden from globs."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def _atomic_target(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(final)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json_atomic(path: PathLike, obj: Any, *, indent: int | None = None, default: Any = None) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file in the same folder, then `os.replace`).

    The object is serialised before anything touches the disk, so an unserialisable value leaves the old file as
    it was. Returns the path.
    """
    text = json.dumps(obj, indent=indent, default=default)
    with _atomic_target(path) as tmp, open(tmp, "x", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def _state_error(cls: type[RetentionError], what: str, path: Path, problem: str, how_to_skip: str) -> RetentionError:
    return cls(f"The {what} {path} {problem}. {how_to_skip}".rstrip())


def read_json_state(
    path: PathLike, *, what: str, how_to_skip: str, expect: type | tuple[type, ...] = dict,
    max_bytes: int = MAX_JSON_BYTES, error: type[RetentionError] = StateFileError,
) -> Any:
    """The JSON value in ``path``, or ``error`` (a `StateFileError` by default) naming the file, what is wrong with
    it (missing, empty, too large, not UTF-8, truncated or invalid JSON, wrong top-level type) and ``how_to_skip``.

    ``what`` names the file for a user ("replay collator state"); ``how_to_skip`` says how to go on without it and
    what that costs. At most ``max_bytes`` are read, so a wrong path to a large file fails at once.
    """
    file = Path(path)
    if not file.is_file():
        raise _state_error(error, what, file, "does not exist" if not file.exists() else "is not a file", how_to_skip)
    try:
        with open(file, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as err:
        raise _state_error(error, what, file, f"cannot be read ({type(err).__name__}: {err})", how_to_skip) from None
    if len(raw) > max_bytes:
        raise _state_error(error, what, file, f"is larger than {max_bytes // 2**20} MiB, far larger than such a file "
                           "gets, so it is not one or it is corrupt", how_to_skip)
    if not raw.strip():
        raise _state_error(error, what, file, "is empty (truncated: its write was cut short)", how_to_skip)
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _state_error(error, what, file, "is not UTF-8 text, so it is corrupt", how_to_skip) from None
    except json.JSONDecodeError as err:
        # The parser ran out of text (or out of a string): the file ends early.
        cut = err.pos >= len(raw.rstrip()) or err.msg.startswith("Unterminated string")
        problem = (f"is truncated (its JSON ends early, at line {err.lineno} column {err.colno})" if cut else
                   f"is corrupt (invalid JSON at line {err.lineno} column {err.colno}: {err.msg})")
        raise _state_error(error, what, file, problem, how_to_skip) from None
    expected = expect if isinstance(expect, tuple) else (expect,)
    if not isinstance(value, expected):
        names = " or ".join(_json_type(t) for t in expected)
        raise _state_error(error, what, file, f"holds a JSON {_json_type(type(value))} where {names} is expected, so "
                           "it was not written by hf_retain or is corrupt", how_to_skip)
    return value


def _json_type(t: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(t, t.__name__)


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """`safetensors.torch.save_file` to ``path`` atomically (temporary file in the same folder, then `os.replace`)."""
    from safetensors.torch import save_file

    with _atomic_target(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata is not None else None)
    return Path(path)


def _safetensors_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    # SafetensorError: bad or truncated header/data; OSError: unreadable; ValueError/TypeError: unusable contents.
    return SafetensorError, OSError, ValueError, TypeError


def load_safetensors_state(
    path: PathLike, *, what: str, how_to_skip: str, device: str | torch.device = "cpu",
    error: type[RetentionError] = StateFileError,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of the safetensors file ``path``, or ``error`` naming the file, what is wrong with it
    (missing, truncated, corrupt header) and ``how_to_skip``, instead of safetensors' own error."""
    from safetensors import safe_open

    file = Path(path)
    if not file.is_file():
        raise _state_error(error, what, file, "does not exist" if not file.exists() else "is not a file", how_to_skip)
    try:
        with safe_open(str(file), framework="pt", device=str(device)) as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - no iteration
    except _safetensors_errors() as err:
        raise _state_error(error, what, file, _safetensors_problem(err), how_to_skip) from None
    return tensors, metadata


def _safetensors_problem(err: BaseException) -> str:
    text = str(err)
    if "not fully covered" in text or "too small" in text or "invalid header length" in text:
        return f"is truncated (safetensors: {text})"
    if isinstance(err, OSError):
        return f"cannot be read ({type(err).__name__}: {err})"
    return f"is corrupt, not a readable safetensors file (safetensors: {text})"


def save_module_atomic(module: torch.nn.Module, path: PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """`safetensors.torch.save_model` (tied weights stored once) to ``path`` atomically."""
    from safetensors.torch import save_model

    with _atomic_target(path) as tmp:
        save_model(module, str(tmp), metadata=dict(metadata) if metadata is not None else None)
    return Path(path)


def load_module_state(
    module: torch.nn.Module, path: PathLike, *, what: str, how_to_skip: str,
    error: type[RetentionError] = StateFileError,
) -> None:
    """Load what `save_module_atomic` wrote into ``module`` (every parameter and buffer; tied weights once), or raise
    ``error`` naming the file, what is wrong (truncated, corrupt, other parameters) and ``how_to_skip``."""
    from safetensors.torch import load_model

    file = Path(path)
    if not file.is_file():
        raise _state_error(error, what, file, "does not exist" if not file.exists() else "is not a file", how_to_skip)
    try:
        load_model(module, str(file), strict=True)
    except RuntimeError as err:  # strict=True: missing or unexpected keys, or shape mismatches
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _state_error(error, what, file, f"does not hold this model's parameters ({first[:300]})",
                           how_to_skip) from None
    except _safetensors_errors() as err:
        raise _state_error(error, what, file, _safetensors_problem(err), how_to_skip) from None
