"""Two offline corpora built from the Python standard library, so the demo and tests need no network.

* ``general``: the prose of the standard library: module, class and function docstrings and comment blocks.
  It stands for the "general ability" a fine-tune must not lose.
* ``domain``: the code itself with docstrings and comments stripped. It stands for the new domain.

Files are split into train and held-out by a hash of their path, so no file contributes to both. Every Python
installation has these files, and the result is cached under ``$HF_RETAIN_CACHE`` (default
``~/.cache/hf_retain``) so later runs load it in milliseconds.

Example:
    >>> from hf_retain import builtin_corpora
    >>> corpora = builtin_corpora(max_chars=200_000)
    >>> sorted(corpora), sorted(corpora["general"])
    (['domain', 'general'], ['eval', 'train'])
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import sysconfig
import tokenize
from pathlib import Path

__all__ = ["builtin_corpora", "write_builtin_corpora", "cache_dir"]

_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__", "turtledemo",
              "ensurepip", "pydoc_data", "encodings", "config-3", "tkinter"}
_VERSION = 3  # bump when the extraction changes, so caches rebuild


def cache_dir() -> Path:
    return Path(os.environ.get("HF_RETAIN_CACHE", Path.home() / ".cache" / "hf_retain"))


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(part in _SKIP_DIRS or part.startswith(("test", "config-")) for part in rel[:-1]):
            continue
        if rel[-1].startswith("test"):
            continue
        files.append(path)
    return files


def _prose_and_code(source: str) -> tuple[list[str], str]:
    """Split one module into prose pieces (docstrings, comment blocks) and its code without them."""
    tree = ast.parse(source)
    prose: list[str] = []
    docstring_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and node.body:
                prose.append(doc)
                first = node.body[0]
                docstring_lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    comments: list[str] = []
    comment_starts: dict[int, int] = {}  # line -> column where its comment starts
    block: list[str] = []
    last_line = -2
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comment_starts[tok.start[0]] = tok.start[1]
            text = tok.string.lstrip("#").strip()
            if tok.start[0] != last_line + 1 and block:
                comments.append(" ".join(block))
                block = []
            if text and not text.startswith(("!", "-*-", "noqa", "type:", "pragma")):
                block.append(text)
            last_line = tok.start[0]
    if block:
        comments.append(" ".join(block))
    prose.extend(c for c in comments if len(c) >= 40)
    code_lines = []
    for number, line in enumerate(source.splitlines(), start=1):
        code = line[: comment_starts[number]].rstrip() if number in comment_starts else line
        if number not in docstring_lines and code.strip():
            code_lines.append(code)
    return prose, "\n".join(code_lines)


def _chunks(text: str, size: int) -> list[str]:
    """Cut text into pieces of about ``size`` characters at line boundaries."""
    pieces, current, length = [], [], 0
    for line in text.splitlines():
        current.append(line)
        length += len(line) + 1
        if length >= size:
            pieces.append("\n".join(current))
            current, length = [], 0
    if length >= size // 4:
        pieces.append("\n".join(current))
    return pieces


def builtin_corpora(
    max_chars: int = 2_000_000, chunk_chars: int = 128, eval_fraction: float = 0.1
) -> dict[str, dict[str, list[str]]]:
    """``{"general"|"domain": {"train"|"eval": [text, ...]}}``, each corpus capped at ``max_chars`` characters."""
    key = f"v{_VERSION}-{max_chars}-{chunk_chars}-{eval_fraction}-{sysconfig.get_python_version()}"
    cached = cache_dir() / "corpora" / f"{key}.json"
    if cached.is_file():
        try:
            return json.loads(cached.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # a broken cache is rebuilt below
    corpora: dict[str, dict[str, list[str]]] = {name: {"train": [], "eval": []} for name in ("general", "domain")}
    sizes = {"general": 0, "domain": 0}
    for path in _stdlib_files():
        if min(sizes.values()) >= max_chars:
            break
        try:
            prose, code = _prose_and_code(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, tokenize.TokenError, OSError, ValueError):
            continue
        digest = int(hashlib.sha1(path.name.encode()).hexdigest(), 16)
        split = "eval" if (digest % 1000) / 1000 < eval_fraction else "train"
        for name, text in (("general", "\n\n".join(prose)), ("domain", code)):
            if sizes[name] >= max_chars:
                continue
            pieces = _chunks(text, chunk_chars)
            corpora[name][split].extend(pieces)
            sizes[name] += sum(len(p) for p in pieces)
    for name, splits in corpora.items():
        # The stdlib repeats itself (e.g. decimal/_pydecimal): keep each text once, and out of eval if in train.
        splits["train"] = list(dict.fromkeys(splits["train"]))
        seen = set(splits["train"])
        splits["eval"] = [t for t in dict.fromkeys(splits["eval"]) if t not in seen]
        if not splits["train"] or not splits["eval"]:
            raise RuntimeError(f"the standard library gave no {name} text; is {sysconfig.get_paths()['stdlib']} "
                               "readable?")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(corpora), encoding="utf-8")
    os.replace(tmp, cached)
    return corpora


def write_builtin_corpora(out_dir: str | os.PathLike[str], **kwargs: object) -> dict[str, Path]:
    """Write the corpora as JSONL files (column ``text``) that any recipe can load; returns their paths by
    ``"<corpus>_<split>"`` (e.g. ``general_train``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, splits in builtin_corpora(**kwargs).items():  # type: ignore[arg-type]
        for split, texts in splits.items():
            path = out / f"{name}_{split}.jsonl"
            tmp = path.with_suffix(".jsonl.tmp")
            with tmp.open("w", encoding="utf-8") as handle:
                for text in texts:
                    handle.write(json.dumps({"text": text}) + "\n")
            os.replace(tmp, path)
            paths[f"{name}_{split}"] = path
    return paths
