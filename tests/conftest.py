"""Shared fixtures: offline mode, tiny models from the shipped config, and a 2-process launcher."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The environment (offline, quiet, CPU) is set in the repository's root conftest.py.

# tests/distributed/ holds scripts that `run_distributed` launches; importing them (as --doctest-modules would)
# runs them.
collect_ignore_glob = ["distributed/*"]

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTED_SCRIPTS = Path(__file__).resolve().parent / "distributed"
# The folder holding the hf_retain this session imports (the checkout, or site-packages in the plain leg of
# `make test`); launched scripts get it on PYTHONPATH so they run the same copy.
HF_RETAIN_ROOT = Path(importlib.util.find_spec("hf_retain").origin).resolve().parents[1]

# accelerate launch flags for each back-end, all on CPU with 2 processes.
LAUNCH_FLAGS: dict[str, list[str]] = {
    "ddp": ["--multi_gpu"],
    "fsdp2": ["--use_fsdp", "--fsdp_version", "2"],
    "zero2": ["--use_deepspeed", "--zero_stage", "2"],
    "zero3": ["--use_deepspeed", "--zero_stage", "3"],
}


def pytest_sessionstart(session: pytest.Session) -> None:
    """With HF_RETAIN_TEST_INSTALLED=1 (tests/plain/plain_leg.sh) the tests must run the installed package: refuse
    to start when hf_retain would be imported from the source tree these tests sit in instead."""
    if os.environ.get("HF_RETAIN_TEST_INSTALLED") == "1" and HF_RETAIN_ROOT == REPO:
        raise pytest.UsageError(f"HF_RETAIN_TEST_INSTALLED=1 but hf_retain is imported from the source tree {REPO}; "
                                "run pytest from outside it with --import-mode=importlib, as "
                                "tests/plain/plain_leg.sh does")


def _free_port() -> int:
    """A port nobody listens on now, so concurrent launches do not collide on accelerate's default 29500."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from hf_retain.assets import load_tiny_tokenizer

    return load_tiny_tokenizer()


@pytest.fixture
def tiny_model():
    """A 2-layer version of the shipped tiny Llama (fast), fresh for each test."""
    from hf_retain.assets import build_tiny_model

    return build_tiny_model(seed=0, num_hidden_layers=2)


@pytest.fixture(scope="session")
def run_distributed(tmp_path_factory):
    """Run ``tests/distributed/<script>`` under ``accelerate launch`` with 2 CPU processes.

    ``run_distributed("smoke_trainer.py", "zero3", "--steps", "3")`` returns the CompletedProcess; it fails the test
    with both processes' output when the launch exits non-zero or times out. A script given as ``"-m package.module"``
    is launched as a module, as in ``accelerate launch -m hf_retain.train``.
    """

    def launch(script: str, backend: str, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        if backend not in LAUNCH_FLAGS:
            raise ValueError(f"backend {backend!r} is not one of {sorted(LAUNCH_FLAGS)}")
        if backend.startswith("zero"):
            pytest.importorskip("deepspeed")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HF_RETAIN_ROOT), HF_HUB_OFFLINE="1")
        env["HF_RETAIN_TEST_TMP"] = str(tmp_path_factory.mktemp(f"{Path(script).stem.replace(' ', '_')}_{backend}"))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", str(_free_port()),
               "--mixed_precision", "no", "--dynamo_backend", "no", *LAUNCH_FLAGS[backend],
               *(["-m", script[3:]] if script.startswith("-m ") else [str(DISTRIBUTED_SCRIPTS / script)]), *args]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"{script} under {backend} timed out after {timeout}s (a hang?)\n{err.stdout}\n{err.stderr}")
        if proc.returncode != 0:
            pytest.fail(f"{script} under {backend} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
                        f"\n--- stderr\n{proc.stderr[-12000:]}")
        return proc

    return launch
