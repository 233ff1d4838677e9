"""`read_pretraining_optimizer`: local folders, a fake hub cache, base_model chains, registry, bad files, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_retain import lookup_pretraining_optimizer, read_pretraining_optimizer
from hf_retain.cli import main as cli_main
from hf_retain.lineage.registry import load_registry, match_model_type, match_repo_id

TRAINER_CARD = ("## Training hyperparameters\n- learning_rate: 0.0001\n- optimizer: Use adamw_torch with "
                "betas=(0.9,0.999) and epsilon=1e-08 and optimizer_args=No additional optimizer arguments\n")


def _folder(root: Path, name: str, readme: str | None = None, **files: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if readme is not None:
        (folder / "README.md").write_text(readme)
    for filename, text in files.items():
        (folder / filename.replace("__", ".")).write_text(text)
    return folder


def _fake_hub(cache: Path, repo_id: str, **files: str) -> None:
    """Lay out files the way huggingface_hub's cache stores them (refs/main -> snapshots/<commit>/...)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for filename, text in files.items():
        (snapshot / filename.replace("__", ".")).write_text(text)


def test_local_folder_card(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "ft", TRAINER_CARD)
    found = lookup_pretraining_optimizer(folder)
    assert found.info is not None and found.info.name == "adamw" and found.info.lr == 1e-4
    assert found.chain == [str(folder)] and found.info.chain == [str(folder)]
    assert str(folder) in found.info.source


def test_checkpoint_json_and_training_args_bin_never_unpickled(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "ckpt", None, training_config__json=json.dumps(
        {"optim": "paged_adamw_8bit", "learning_rate": 2e-4, "adam_beta1": 0.9, "adam_beta2": 0.95,
         "weight_decay": 0.01}))
    (folder / "training_args.bin").write_bytes(b"\x80\x04\x95 not a real pickle; reading it would be a bug")
    found = lookup_pretraining_optimizer(folder)
    assert found.info is not None
    assert (found.info.name, found.info.variant, found.info.betas, found.info.lr) == ("adamw", "paged_adamw_8bit",
                                                                                     (0.9, 0.95), 2e-4)
    assert "training_config.json" in found.info.evidence
    assert any("training_args.bin" in note and "pickle" in note for note in found.notes)


def test_yaml_training_config_deepspeed_style(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "neox", None,
                     train__yaml="optimizer:\n  type: Adam\n  params:\n    lr: 0.0006\n    betas: [0.9, 0.95]\n")
    info = read_pretraining_optimizer(folder)
    assert info is not None and (info.name, info.lr, info.betas) == ("adam", 0.0006, (0.9, 0.95))


def test_base_model_chain_local(tmp_path: Path) -> None:
    base = _folder(tmp_path, "base", "## Pretraining\nThe model was pretrained with the Muon optimizer on 1T tokens.\n")
    mid = _folder(tmp_path, "mid", f"---\nbase_model: {base}\n---\n# a merge of nothing\n")
    top = _folder(tmp_path, "top", f"---\nbase_model: {mid}\n---\n# LoRA fine-tune\n")
    found = lookup_pretraining_optimizer(top)
    assert found.info is not None and found.info.name == "muon"
    assert found.chain == [str(top), str(mid), str(base)]


def test_peft_adapter_config_base(tmp_path: Path) -> None:
    base = _folder(tmp_path, "base", "- optimizer: Adafactor\n")
    adapter = _folder(tmp_path, "adapter", "# adapter\n",
                      adapter_config__json=json.dumps({"base_model_name_or_path": str(base)}))
    assert read_pretraining_optimizer(adapter).name == "adafactor"


def test_base_model_cycle_terminates(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _folder(tmp_path, "a", f"---\nbase_model: {b}\n---\nno optimizer here\n")
    _folder(tmp_path, "b", f"---\nbase_model: {a}\n---\nnor here\n")
    found = lookup_pretraining_optimizer(a)
    assert found.info is None and found.chain == [str(a), str(b)]
    assert any("cycle" in note for note in found.notes)


def test_depth_limit(tmp_path: Path) -> None:
    previous = None
    for i in range(12):
        readme = f"---\nbase_model: {previous}\n---\nstep {i}\n" if previous else "- optimizer: Adafactor\n"
        previous = _folder(tmp_path, f"m{i}", readme)
    found = lookup_pretraining_optimizer(previous, max_depth=3)
    assert found.info is None and len(found.chain) == 4
    assert any("max_depth" in note for note in found.notes)
    assert read_pretraining_optimizer(previous, max_depth=20).name == "adafactor"
    with pytest.raises(ValueError, match="max_depth"):
        lookup_pretraining_optimizer(previous, max_depth=-1)


def test_fake_hub_cache_then_registry(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _fake_hub(cache, "someone/llama2-ft", README__md="---\nbase_model: meta-llama/Llama-2-7b-hf\n---\n# chat ft\n")
    found = lookup_pretraining_optimizer("someone/llama2-ft", cache_dir=cache)
    assert found.info is not None and found.info.name == "adamw" and found.info.betas == (0.9, 0.95)
    assert found.chain == ["someone/llama2-ft", "meta-llama/Llama-2-7b-hf"]
    assert "registry" in found.info.source and "2307.09288" in found.info.evidence
    assert any("not in the local hub cache" in note for note in found.notes)


def test_fake_hub_cache_card_and_model_type_fallback(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _fake_hub(cache, "org/t5-thing", README__md="# T5 variant\nNo training details.\n",
              config__json=json.dumps({"model_type": "t5"}))
    info = read_pretraining_optimizer("org/t5-thing", cache_dir=cache)
    assert info is not None and info.name == "adafactor" and info.confidence <= 0.3
    assert "model_type" in info.source


def test_offline_unknown_repo_gives_clear_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = lookup_pretraining_optimizer("nobody/not-cached", cache_dir=tmp_path)
    assert found.info is None
    assert any("HF_HUB_OFFLINE=1" in note for note in found.notes)


def test_registry_unknown_entry_is_not_guessed() -> None:
    found = lookup_pretraining_optimizer("mistralai/Mistral-7B-v0.1")
    assert found.info is None
    assert any("does not state the optimizer" in note for note in found.notes)


def test_registry_entries_all_cite_a_source() -> None:
    entries = load_registry()
    assert len(entries) >= 25
    assert all(e.source and (e.repo_ids or e.model_types) for e in entries)
    assert match_repo_id("moonshotai/Kimi-K2-Instruct").info().name == "muon"
    assert match_repo_id("zai-org/GLM-4.5-Air").info().name == "muon"
    assert match_repo_id("allenai/OLMo-2-1124-7B").info().name == "adamw"
    assert match_model_type("deepseek_v3") is None  # shared by DeepSeek-V3 (AdamW) and Moonlight (Muon)


def test_pretrained_model_input(tmp_path: Path, tiny_model) -> None:
    folder = _folder(tmp_path, "saved", TRAINER_CARD)
    tiny_model.name_or_path = str(folder)
    assert read_pretraining_optimizer(tiny_model).name == "adamw"
    tiny_model.name_or_path = ""
    tiny_model.config._name_or_path = ""
    found = lookup_pretraining_optimizer(tiny_model)
    assert found.info is None and "name_or_path" in found.notes[0]


def test_bad_inputs(tmp_path: Path) -> None:
    binary = _folder(tmp_path, "bin", None)
    (binary / "README.md").write_bytes(b"\x00\x01\x02" * 1000)
    found = lookup_pretraining_optimizer(binary)
    assert found.info is None and any("binary" in note for note in found.notes)
    latin = _folder(tmp_path, "latin", None)
    (latin / "README.md").write_bytes("- optimizer: Adafactor\nCaf\xe9 \xff\xfe\n".encode("latin-1"))
    assert read_pretraining_optimizer(latin).name == "adafactor"
    assert read_pretraining_optimizer(tmp_path / "does" / "not" / "exist") is None
    with pytest.raises(TypeError, match="repo id"):
        read_pretraining_optimizer(42)
    with pytest.raises(ValueError, match="empty"):
        read_pretraining_optimizer("")


def test_cli_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(tmp_path, "ft", TRAINER_CARD)
    assert cli_main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "optimizer:  adamw" in out and "evidence:" in out and "chain:" in out
    assert cli_main(["inspect", str(folder), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["optimizer"]["name"] == "adamw" and payload["chain"] == [str(folder)]
    empty = _folder(tmp_path, "empty", "# nothing\n")
    assert cli_main(["inspect", str(empty)]) == 1
    assert "not found" in capsys.readouterr().out
