"""Model resolution: builtin names, resolvers registered by entry point, and the tiny model built once per machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from trl import ModelConfig

from hf_retain import ModelLoadError, ModelResolver, load_model, load_tokenizer, register_model_resolver
from hf_retain.assets import TINY_LLAMA_DIR, build_tiny_model
from hf_retain.models import builtin_models, resolve_model


def test_the_tiny_tokenizer_loads_without_building_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_RETAIN_CACHE", str(tmp_path / "cache"))
    tokenizer = load_tokenizer("builtin:tiny-llama")
    assert tokenizer.decode(tokenizer("héllo")["input_ids"]) == "héllo"
    assert not (tmp_path / "cache").exists()  # nothing was pretrained or cached


def test_builtin_tiny_llama_comes_from_the_entry_point():
    from hf_retain.pretrain import TINY_LLAMA

    assert builtin_models()["tiny-llama"] is TINY_LLAMA
    assert Path(TINY_LLAMA.tokenizer) == TINY_LLAMA_DIR and TINY_LLAMA.build is None


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(ModelLoadError, match=r"builtin:tiny-llama-init") as caught:
        resolve_model("builtin:nope")
    assert "Unknown builtin model 'builtin:nope'" in str(caught.value)


def test_a_registered_resolver_is_loadable(tmp_path):
    folder = tmp_path / "mine"
    build_tiny_model(seed=3, num_hidden_layers=1).save_pretrained(folder)
    register_model_resolver(ModelResolver("test-mine", path=lambda: folder, tokenizer=TINY_LLAMA_DIR))
    model = load_model(ModelConfig(model_name_or_path="builtin:test-mine"))
    assert model.config.num_hidden_layers == 1
    assert load_tokenizer("builtin:test-mine").vocab_size == 259


BUILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
from hf_retain.pretrain import pretrained_tiny_model
print("PATH", pretrained_tiny_model("adamw", steps=2, batch_size=2, max_length=16, seed=5))
"""


@pytest.mark.slow
def test_processes_started_together_build_the_tiny_model_once(tmp_path):
    """Two processes of a 2-process launch on a cold cache: one trains, the other waits, both load the same files."""
    cache = tmp_path / "cache"
    corpora = Path(os.environ.get("HF_RETAIN_CACHE", Path.home() / ".cache" / "hf_retain")) / "corpora"
    if corpora.is_dir():  # reuse the extracted stdlib corpora: this test is about the model
        (cache / "corpora").mkdir(parents=True)
        for item in corpora.glob("*.json"):
            (cache / "corpora" / item.name).write_bytes(item.read_bytes())
    env = dict(os.environ, HF_RETAIN_CACHE=str(cache), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    procs = [subprocess.Popen([sys.executable, "-c", BUILD], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    paths = {line.split(" ", 1)[1] for out in outputs for line in out.splitlines() if line.startswith("PATH ")}
    assert len(paths) == 1, outputs
    built = Path(paths.pop())
    assert (built / "model.safetensors").is_file() and (built / "README.md").is_file()
    assert sum(out.count("pretraining the tiny model") for out in outputs) == 1, outputs
    leftovers = [p.name for p in built.parent.iterdir() if p.name.startswith(built.name + ".") and p.is_dir()]
    assert not leftovers  # no staging folder left behind
