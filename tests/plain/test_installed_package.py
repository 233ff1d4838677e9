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
# The source tree these tests belong to; the plain leg runs them from the copy it built the wheel from.
SOURCE = Path(__file__).resolve().parents[2]


def _installed_files() -> set[str] | None:
    """The files of the imported hf_retain that its installed wheel's RECORD lists (paths inside the package), or
    None when hf_retain is not imported from an installed wheel (an editable install: its metadata is an
    ``.egg-info`` folder with no RECORD, or a RECORD that lists no package files)."""
    dist = importlib.metadata.distribution("hf-retain")
    if dist.read_text("RECORD") is None:
        return None
    files = [f for f in dist.files or [] if f.parts[0] == "hf_retain" and f.suffix != ".pyc"]
    init = next((f for f in files if f.parts == ("hf_retain", "__init__.py")), None)
    if init is None or Path(dist.locate_file(init)).resolve() != Path(hf_retain.__file__).resolve():
        return None
    return {Path(*f.parts[1:]).as_posix() for f in files}


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


def _run_with_extras_hidden(body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter, importing the same hf_retain as this session, where the extras'
    modules cannot be imported, as in a plain install (in the full leg they are installed, so they are hidden)."""
    hide = f"import sys\nfor name in {EXTRA_MODULES!r}:\n    sys.modules[name] = None\n"
    # sys.modules[name] = None: `import name` raises ImportError and importlib.util.find_spec(name) returns None,
    # so libraries that probe for DeepSpeed (accelerate, transformers) see it absent.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", hide + body], capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(hf_retain.__file__).parents[1])


def test_every_module_imports_without_the_extras():
    proc = _run_with_extras_hidden("""
import importlib, pkgutil
import hf_retain
failed = []
for info in pkgutil.walk_packages(hf_retain.__path__, "hf_retain."):
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue  # running it is the CLI's job
    try:
        importlib.import_module(info.name)
    except Exception as err:
        failed.append(f"{info.name}: {type(err).__name__}: {err}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
""")
    assert proc.returncode == 0, f"modules that fail to import with the extras hidden:\n{proc.stdout}\n" \
                                 f"{proc.stderr[-4000:]}"


def test_a_retention_trainer_trains_with_every_optimizer_without_the_extras(tmp_path):
    """Each `RetentionConfig.optimizer` builds its optimizer and takes a step with no extra installed."""
    proc = _run_with_extras_hidden(f"""
from datasets import Dataset
from transformers import TrainingArguments
from hf_retain import RetentionConfig, RetentionTrainer
from hf_retain.assets import build_tiny_model
from hf_retain.optim import SUPPORTED_OPTIMIZERS

rows = Dataset.from_dict({{"input_ids": [[5, 6, 7, 8]] * 4, "labels": [[5, 6, 7, 8]] * 4}})
for name in SUPPORTED_OPTIMIZERS:
    args = TrainingArguments(output_dir={str(tmp_path)!r} + "/" + name, max_steps=1, per_device_train_batch_size=2,
                             use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True)
    retention = RetentionConfig(optimizer=name, consistency_policy="off", record_lineage=False)
    trainer = RetentionTrainer(model=build_tiny_model(num_hidden_layers=2), args=args, train_dataset=rows,
                               retention=retention)
    trainer.train()
    assert trainer.state.global_step == 1, (name, trainer.state.global_step)
    print(name, type(trainer.optimizer).__name__)
""")
    assert proc.returncode == 0, f"training with the extras hidden failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
