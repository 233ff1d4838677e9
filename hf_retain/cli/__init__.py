"""`hf-retain`: one console script, one module per subcommand.

Each module in `COMMANDS` defines ``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit code. Any `RetentionError` a subcommand raises is printed as one
clean message and exits 2 ("could not run as asked"), never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hf_retain.errors import RetentionError

# Subcommand name -> module under hf_retain.cli. Add a line when a subcommand lands.
COMMANDS: dict[str, str] = {
    "train": "train",
    "demo": "demo",
    "compare": "compare",
    "bench": "bench",
    "gate": "gate",
    "distill-cache": "distill_cache",
    "inspect": "inspect",
    "merge": "merge",
}


def build_parser() -> argparse.ArgumentParser:
    from hf_retain import __version__

    parser = argparse.ArgumentParser(
        prog="hf-retain",
        description="Fine-tune Hugging Face models without forgetting what they already knew.",
    )
    parser.add_argument("--version", action="version", version=f"hf-retain {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(f"hf_retain.cli.{module_name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RetentionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
