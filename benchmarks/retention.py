"""Retention benchmark: forgetting vs learning per pretraining optimizer x fine-tuning optimizer x method.

    python benchmarks/retention.py [--quick] [--output DIR] [--general-text F --domain-text F] ...

Same as `hf-retain bench` (see `hf_retain.bench`); every number is measured in this run.
"""

import sys

from hf_retain.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
