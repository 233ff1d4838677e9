#!/usr/bin/env bash
# The plain leg of `make test`: hf_retain installed as `pip install hf-retain` installs it (a wheel, no extras),
# then its CLI and its core tests run against that installed copy, never against the checkout.
#
#   tests/plain/plain_leg.sh VENV
#
# VENV already holds torch and the test tools (pytest, hypothesis) and nothing else; this script installs hf_retain
# and its dependencies into it. The wheel, the tests and the recipes all come from one copy of the working tree, so
# files edited while the leg runs cannot mix two versions. Everything runs from a scratch folder beside that copy,
# so neither `python -m` nor pytest puts a source tree on sys.path, and with a fresh HF_RETAIN_CACHE, so the
# first-use build of builtin:tiny-llama runs as a new user gets it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=$(cd "${1:?usage: $0 VENV}" && pwd)
py="$venv/bin/python"
work=$(mktemp -d "${TMPDIR:-/tmp}/hf_retain_plain.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true
export HF_RETAIN_CACHE="$work/cache"
# tests/conftest.py refuses to start when hf_retain would be imported from the source tree.
export HF_RETAIN_TEST_INSTALLED=1
src="$work/src"

step() { printf '\n== plain leg, %4d s: %s\n' "$SECONDS" "$*"; }

step "copy the working tree (tracked and untracked files, none that git ignores) to $src"
git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
    || { echo "plain leg: $repo is not a git checkout; the leg builds its wheel from git's list of files" >&2; exit 2; }
# A copy, so no build/ or *.egg-info/ left in the checkout by earlier builds can add files to the wheel.
(cd "$repo" && git ls-files -z --cached --others --exclude-standard) | "$py" -c '
import shutil, sys
from pathlib import Path
repo, dest = Path(sys.argv[1]), Path(sys.argv[2])
for name in filter(None, sys.stdin.read().split("\0")):
    if (repo / name).is_file():  # a tracked file deleted in the working tree is not part of it
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dest / name)
' "$repo" "$src"

step "pip install . (no extras) in $venv"
"$py" -m pip uninstall --yes --quiet hf-retain 2>/dev/null || true
(cd "$src" && "$py" -m pip install --quiet .)

step "check: hf_retain is the installed wheel, and no extra of hf_retain is installed"
"$py" - "$src" <<'EOF'
import importlib.util
import sys
import sysconfig
from pathlib import Path

import hf_retain

source, where = Path(sys.argv[1]).resolve(), Path(hf_retain.__file__).resolve()
site = Path(sysconfig.get_paths()["purelib"]).resolve()
assert where.is_relative_to(site) and not where.is_relative_to(source), \
    f"hf_retain resolves to {where}, not to the installed copy in {site}"
# The extras: deepspeed ([deepspeed]) and the notebook runner ([notebooks]); pytest and hypothesis are test tools.
present = [name for name in ("deepspeed", "nbclient", "nbformat", "ipykernel") if importlib.util.find_spec(name)]
assert not present, f"the plain environment must hold no extra of hf_retain, but has {present}"
print(f"hf_retain {hf_retain.__version__} from {where.parent}; deepspeed, nbclient, nbformat, ipykernel: absent")
EOF
"$venv/bin/hf-retain" --help >/dev/null

step "hf-retain demo --quick"
"$venv/bin/hf-retain" demo --quick --output "$work/demo"
test -s "$work/demo/report.json"

step "hf-retain bench --quick"
"$venv/bin/hf-retain" bench --quick --output "$work/bench"
test -s "$work/bench/report.json"

step "hf-retain train recipes/quickstart.yaml for 3 steps (builds builtin:tiny-llama on first use)"
"$venv/bin/hf-retain" train "$src/recipes/quickstart.yaml" --max_steps 3 --eval_steps 2 --save_steps 2 \
    --logging_steps 1 --max_eval_samples 16 --output_dir "$work/quickstart"
test -s "$work/quickstart/model.safetensors"
test -d "$work/quickstart/checkpoint-2"

# -c/--rootdir keep setup.cfg's settings (markers, --doctest-modules); --import-mode=importlib imports the test files
# without putting a source tree on sys.path; --pyargs hf_retain collects the doctests of the installed modules.
pytest=("$py" -m pytest -c "$src/setup.cfg" --rootdir "$src" --import-mode=importlib -p no:cacheprovider)

step "hf-retain compare: two arms over two rounds (the end-to-end test of tests/test_compare.py)"
"${pytest[@]}" "$src/tests/test_compare.py::test_two_rounds_two_arms_end_to_end"

step "pytest: the tests not marked slow, and the installed package's doctests"
"${pytest[@]}" -m "not slow" --pyargs "$src/tests" hf_retain

step "done"
