"""Run every component's overhead benchmark in one go; each prints its ratios to a plain baseline measured in the
same run (EWC, distillation, replay, Muon, regression evaluation).

    python benchmarks/run_all.py [--quick] [--only ewc replay ...]

Run it on an otherwise idle machine: the ratios are robust to a steady load but not to bursts from other jobs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPONENTS = ("optim", "ewc", "distill", "replay", "evaluation")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke sizes (seconds each; ratios not meaningful)")
    parser.add_argument("--only", nargs="+", choices=COMPONENTS, help="run only these components")
    args = parser.parse_args(argv)
    failed = []
    for name in args.only or COMPONENTS:
        script = HERE / f"{name}.py"
        print(f"\n=== {name} ({script.name}) ===", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *(["--quick"] if args.quick else [])])
        print(f"=== {name}: exit {code}, {time.perf_counter() - started:.1f}s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
