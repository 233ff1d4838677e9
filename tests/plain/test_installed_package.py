"""What a plain `pip install hf-retain` gets: the data files the code reads at run time, every module, and modules
that import without any extra (deepspeed, the notebook runner).

The wheel checks run in the plain leg of `make test` (tests/plain/plain_leg.sh), where hf_retain is installed from
a wheel; in the editable install of the full leg they skip, since there the package is the checkout itself.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import hf_retain

# Every file other than Python source that hf_retain reads from inside its package at run time: the embedded tiny
# model's config and tokenizer (hf_retain.assets) and the optimizer-lineage registry (hf_retain.lineage.registry).
RUNTIME_DATA = {
    "assets/tiny_llama/config.json",
    "assets/tiny_llama/tokenizer.json",
    "assets/tiny_llama/tokenizer_config.json",
    "lineage/registry.yaml",
}
# The optional dependencies behind hf_retain's extras; none may be needed to import hf_retain's modules.
EXTRA_MODULES = ("deepspeed", "nbclient", "nbformat", "ipykernel")
SOURCE = Path(os.environ.get("HF_RETAIN_PLAIN_SOURCE") or Path(__file__).resolve().parents[2])


def _installed_files() -> set[str] | None:
    """The hf_retain/ files the installed distribution records (paths inside the package), or None for an editable
    install, whose record lists no package files."""
    files = importlib.metadata.distribution("hf-retain").files or []
    inside = {Path(*f.parts[1:]).as_posix() for f in files if f.parts[0] == "hf_retain" and f.suffix != ".pyc"}
    return inside if "__init__.py" in inside else None


needs_wheel = pytest.mark.skipif(_installed_files() is None, reason="hf_retain is an editable install here; the "
                                 "plain leg of `make test` (tests/plain/plain_leg.sh) checks the installed wheel")


def test_the_data_files_read_at_run_time_are_in_the_package():
    package = resources.files("hf_retain")
    missing = sorted(name for name in RUNTIME_DATA if not package.joinpath(name).is_file())
    assert not missing, f"hf_retain as imported from {Path(hf_retain.__file__).parent} lacks {missing}"


@needs_wheel
def test_the_wheel_ships_exactly_the_runtime_data():
    shipped = {name for name in _installed_files() if not name.endswith(".py")}
    assert shipped == RUNTIME_DATA, (f"missing: {sorted(RUNTIME_DATA - shipped)}, not read by the code: "
                                     f"{sorted(shipped - RUNTIME_DATA)} (fix [tool.setuptools.package-data])")


@needs_wheel
def test_the_wheel_ships_every_module_of_the_source():
    source = {p.relative_to(SOURCE / "hf_retain").as_posix() for p in (SOURCE / "hf_retain").rglob("*.py")}
    shipped = {name for name in _installed_files() if name.endswith(".py")}
    assert source <= shipped, (f"modules of {SOURCE / 'hf_retain'} missing from the wheel: {sorted(source - shipped)} "
                               "(a package folder outside [tool.setuptools.packages.find]?)")


def test_every_module_imports_without_the_extras():
    """Imports each hf_retain module in a fresh interpreter where the extras' modules cannot be imported, as in a
    plain install (in the full leg they are installed, so they are hidden)."""
    script = f"""
import importlib, pkgutil, sys
for name in {EXTRA_MODULES!r}:
    sys.modules[name] = None  # `import name` now raises ImportError and find_spec(name) returns None
import hf_retain
failed = []
for info in pkgutil.walk_packages(hf_retain.__path__, "hf_retain."):
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue  # running it is the CLI's job
    try:
        importlib.import_module(info.name)
    except Exception as err:
        failed.append(f"{{info.name}}: {{type(err).__name__}}: {{err}}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(hf_retain.__file__).parents[1])
    assert proc.returncode == 0, f"modules that need an extra to import:\n{proc.stdout}\n{proc.stderr[-4000:]}"
