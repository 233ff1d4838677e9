"""Bad input gets one clear error naming the problem and the fix: replay data without the text column, a teacher path
that contradicts or does not exist, empty data files, and truncated or corrupt hf_retain state files in a
checkpoint (each error names the file and how to resume without it, and resuming that way works)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments
from trl import SFTConfig

from hf_retain import (
    ConfigError,
    DatasetError,
    DistillCacheError,
    FisherError,
    ReplayBuffer,
    ReplayCollator,
    ReplayColumnError,
    RetentionConfig,
    RetentionSFTTrainer,
    StateFileError,
    TeacherError,
    build_tiny_model,
    load_text_dataset,
    load_tiny_tokenizer,
)
from hf_retain.distill.cache import OfflineTeacherCache, build_distill_cache
from hf_retain.distill.mixin import DistillationMixin
from hf_retain.distill.teachers import load_path_teacher
from hf_retain.ewc.fisher import FisherState, estimate_fisher
from hf_retain.state import load_safetensors_state, read_json_state, save_safetensors_atomic, write_json_atomic

GENERAL = [f"The {w} river flows to the sea number {i}." for i, w in enumerate(["old", "slow", "wide", "cold"] * 4)]
DOMAIN = [f"def f{i}(x):\n    return x * {i}" for i in range(8)]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def truncate(path: Path) -> None:
    """Cut the file in half, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def sft_args(out: Path, **overrides) -> SFTConfig:
    settings = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, max_length=32, use_cpu=True,
                    report_to=[], save_strategy="steps", save_steps=2, logging_steps=1, seed=0, learning_rate=1e-3,
                    dataloader_num_workers=0, disable_tqdm=True)
    settings.update(overrides)
    return SFTConfig(**settings)


def sft_trainer(out: Path, retention: RetentionConfig, **overrides) -> RetentionSFTTrainer:
    return RetentionSFTTrainer(model=build_tiny_model(seed=0, num_hidden_layers=1), args=sft_args(out, **overrides),
                               train_dataset=Dataset.from_dict({"text": DOMAIN}),
                               processing_class=load_tiny_tokenizer(), retention=retention)


# ---- 1. replay data without the text column --------------------------------------------------------------------
def test_replay_dataset_without_text_column_names_dataset_columns_and_needed_column(tmp_path):
    other = write_jsonl(tmp_path / "general.jsonl", [{"content": t} for t in GENERAL])
    trainer = sft_trainer(tmp_path / "out", RetentionConfig(replay_ratio=0.5, replay_dataset=other,
                                                            consistency_policy="off", record_lineage=False))
    with pytest.raises(ReplayColumnError) as info:
        trainer.train()
    message = str(info.value)
    assert "general.jsonl" in message and "['content']" in message and "'text'" in message
    assert "Rename the column" in message
    assert trainer.state.global_step == 0  # it failed before any step
    # With EWC on, the Fisher is estimated on the replay data first: the same problem, named the same way.
    trainer = sft_trainer(tmp_path / "ewc", RetentionConfig(replay_ratio=0.5, replay_dataset=other, ewc_lambda=1.0,
                                                            consistency_policy="off", record_lineage=False))
    with pytest.raises(FisherError) as info:
        trainer.train()
    message = str(info.value)
    assert "general.jsonl" in message and "['content']" in message and "'text'" in message
    assert "replay_dataset" in message and "Rename the column" in message


def test_collator_names_replay_source_and_its_columns():
    buffer = ReplayBuffer.from_dataset([{"content": t} for t in GENERAL], seed=0)
    buffer.metadata["source"] = "general.jsonl"
    collate = ReplayCollator(lambda rows: {"n": torch.tensor(len(rows))}, buffer, ratio=0.5, seed=0, rank=0)
    with pytest.raises(ReplayColumnError) as info:
        collate([{"text": t} for t in DOMAIN[:4]])
    message = str(info.value)
    assert "general.jsonl" in message and "'content'" in message and "['text']" in message
    assert "Prepare the replay data the same way" in message


# ---- 2. a teacher path the teacher kind ignores ----------------------------------------------------------------
def test_teacher_path_with_base_teacher_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        RetentionConfig(distill_alpha=1.0, distill_teacher_path="out/teacher")
    message = str(info.value)
    assert "'out/teacher'" in message and "distill_teacher='path'" in message and "'offline'" in message
    assert "drop distill_teacher_path" in message
    RetentionConfig(distill_alpha=1.0, distill_teacher="path", distill_teacher_path="out/teacher")  # consistent


# ---- 3. a local teacher path that does not exist ---------------------------------------------------------------
class DistilTrainer(DistillationMixin, Trainer):
    pass


def test_missing_local_teacher_path_is_a_teacher_error(tmp_path):
    missing = str(tmp_path / "runs" / "teacher")
    ids = torch.randint(3, 259, (4, 12)).tolist()
    args = TrainingArguments(str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = DistilTrainer(model=build_tiny_model(num_hidden_layers=1), args=args,
                            train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
                            retention=RetentionConfig(distill_alpha=1.0, distill_teacher="path",
                                                      distill_teacher_path=missing))
    with pytest.raises(TeacherError) as info:
        trainer.train()
    message = str(info.value)
    assert missing in message and "does not exist" in message
    assert "save_pretrained" in message and "hub id" in message and "Repo id" not in message
    # A folder that is not a saved model, and a bare name that is neither a folder nor a cached hub model.
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match=r"no config\.json.*save_pretrained"):
        load_path_teacher(str(tmp_path / "empty"), build_tiny_model(num_hidden_layers=1))
    with pytest.raises(TeacherError, match=r"not a local folder.*save_pretrained") as info:
        load_path_teacher("no-such-teacher-xyz", build_tiny_model(num_hidden_layers=1))
    assert len(str(info.value).splitlines()) == 1


def test_missing_or_corrupt_offline_cache_names_folder(tmp_path):
    with pytest.raises(DistillCacheError, match=r"nowhere.*does not exist.*hf-retain distill-cache"):
        OfflineTeacherCache(tmp_path / "nowhere")
    tok = load_tiny_tokenizer()
    rows = [tok(t)["input_ids"] for t in GENERAL[:4]]
    folder = Path(build_distill_cache(build_tiny_model(num_hidden_layers=1), rows, tmp_path / "cache", tokenizer=tok,
                                      top_k=4))
    shard = folder / "shard-00000.safetensors"
    truncate(shard)
    with pytest.raises(DistillCacheError, match=r"shard-00000\.safetensors.*truncated or corrupt.*Rebuild"):
        OfflineTeacherCache(folder).row(rows[0])
    truncate(folder / "index.json")
    with pytest.raises(DistillCacheError, match=r"index\.json is truncated.*Rebuild"):
        OfflineTeacherCache(folder)


# ---- 4. truncated or corrupt state files in a checkpoint -------------------------------------------------------
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """One short run with EWC, replay and distillation (a full fine-tune: snapshot teacher) and a checkpoint at step
    2; each test below corrupts a copy of it."""
    root = tmp_path_factory.mktemp("run")
    general = write_jsonl(root / "general.jsonl", [{"text": t} for t in GENERAL])
    retention = RetentionConfig(ewc_lambda=10.0, ewc_fisher_samples=4, replay_ratio=0.5, replay_dataset=general,
                                distill_alpha=1.0, consistency_policy="off", record_lineage=False)
    trainer = sft_trainer(root / "out", retention)
    trainer.train()
    checkpoint = root / "out" / "checkpoint-2"
    for name in ("ewc_fisher.safetensors", "replay_buffer/replay_buffer.json", "replay_collator_rank0.json",
                 "distill_teacher.json"):
        assert (checkpoint / name).is_file(), name
    assert (root / "out" / "distill_teacher_snapshot" / "model.safetensors").is_file()
    assert not list((root / "out").rglob(".*tmp*"))  # atomic writes leave no temporary files behind
    return root, retention


def corrupted_copy(saved_run, tmp_path, relative: str, how: str = "truncate") -> tuple[Path, Path]:
    """A copy of the saved run's output folder with one file damaged; returns (output dir, damaged file)."""
    root, _ = saved_run
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    target = out / relative
    if how == "truncate":
        truncate(target)
    else:
        target.write_bytes(b"\x00garbage\xff" * 7)
    return out, target


def resume(saved_run, out: Path, tmp_path: Path) -> RetentionSFTTrainer:
    _, retention = saved_run
    trainer = sft_trainer(tmp_path / "resumed", retention, max_steps=3)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    return trainer


STATE_FILES = [
    # (file in the output folder, what the error says to do, what it says that costs, what to delete to skip it)
    ("checkpoint-2/ewc_fisher.safetensors", "delete that file", "estimates the Fisher and anchors again",
     "checkpoint-2/ewc_fisher.safetensors"),
    ("checkpoint-2/replay_buffer/replay_buffer.json", "delete the folder", "rebuilt",
     "checkpoint-2/replay_buffer"),
    ("checkpoint-2/replay_collator_rank0.json", "delete that file", "continues at the configured share",
     "checkpoint-2/replay_collator_rank0.json"),
    ("checkpoint-2/distill_teacher.json", "delete that file", "the model passed to the Trainer",
     "checkpoint-2/distill_teacher.json"),
    ("distill_teacher_snapshot/model.safetensors", "distill_teacher='path'", "copy of the model the run started from",
     "checkpoint-2/distill_teacher.json"),
]


@pytest.mark.parametrize(("relative", "fix", "cost", "skip"), STATE_FILES,
                         ids=[f[0].split("/")[-1] for f in STATE_FILES])
@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_corrupt_state_file_names_file_and_how_to_resume_without_it(saved_run, tmp_path, relative, fix, cost, skip,
                                                                   how):
    out, damaged = corrupted_copy(saved_run, tmp_path, relative, how)
    with pytest.raises(StateFileError) as info:
        resume(saved_run, out, tmp_path)
    message = str(info.value)
    assert str(damaged) in message, message
    assert ("truncated" if how == "truncate" else "corrupt") in message
    assert "To resume without it" in message and fix in message and cost in message
    assert "Traceback" not in message and len(message.splitlines()) == 1
    if how == "truncate":  # the way out the message names works: remove what it says and resume
        target = out / skip
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        trainer = resume(saved_run, out, tmp_path)
        assert trainer.state.global_step == 3


def test_corrupt_replay_rows_name_the_data_folder(saved_run, tmp_path):
    root, _ = saved_run
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    arrow = next((out / "checkpoint-2" / "replay_buffer" / "data").glob("*.arrow"))
    truncate(arrow)
    with pytest.raises(StateFileError) as info:
        resume(saved_run, out, tmp_path)
    message = str(info.value)
    assert str(arrow.parent) in message and "truncated or corrupt" in message and "delete the folder" in message


def test_fisher_state_file_truncated_via_save(tmp_path):
    model = build_tiny_model(num_hidden_layers=1)
    rows = [{"input_ids": list(range(3, 15)), "labels": list(range(3, 15))}] * 2
    path = estimate_fisher(model, rows, batch_size=2).save(tmp_path)
    truncate(path)
    with pytest.raises(StateFileError, match=r"ewc_fisher\.safetensors is truncated.*estimate_fisher"):
        FisherState.load(tmp_path)
    with pytest.raises(StateFileError, match="Delete it and re-estimate"):
        FisherState.load(tmp_path, how_to_skip="Delete it and re-estimate.")


def test_replay_buffer_and_collator_state_checks():
    buffer = ReplayBuffer.from_dataset([{"text": t} for t in GENERAL], seed=0)
    collate = ReplayCollator(lambda rows: rows, buffer, ratio=0.5, seed=0, rank=0)
    for bad in ({"epoch": 1}, {"ratio": "half"}, {"ratio": 1.5}, {"ratio": 0.5, "history": [[1]]}):
        with pytest.raises(StateFileError, match="ReplayCollator state is incomplete or malformed"):
            collate.load_state_dict(bad)
    assert collate.ratio == 0.5  # nothing was changed by a bad state
    with pytest.raises(ConfigError, match="same settings"):
        collate.load_state_dict({"ratio": 0.5, "seed": 3})


# ---- the shared state-file helpers ------------------------------------------------------------------------------
def test_read_json_state_reports_each_kind_of_damage(tmp_path):
    path = write_json_atomic(tmp_path / "state.json", {"ratio": 0.5, "history": [["a", 0.1]]})
    assert read_json_state(path, what="test state", how_to_skip="Skip it.") == {"ratio": 0.5, "history": [["a", 0.1]]}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]

    def error(content: bytes | str, **kwargs) -> str:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(StateFileError) as info:
            read_json_state(path, what="test state", how_to_skip="Delete it to start over.", **kwargs)
        message = str(info.value)
        assert str(path) in message and message.endswith("Delete it to start over.")
        return message

    assert "truncated" in error('{"ratio": 0.5, "hist')
    assert "truncated" in error('{"ratio": ')
    assert "empty" in error("")
    assert "corrupt" in error("{]")
    assert "not UTF-8" in error(b"\xff\xfe\x00")
    assert "array where object" in error("[1, 2]")
    assert "larger than" in error("[" + "1," * 2000 + "1]", max_bytes=1000)
    path.unlink()
    with pytest.raises(StateFileError, match="does not exist"):
        read_json_state(path, what="test state", how_to_skip="")


def test_safetensors_state_round_trip_and_truncation(tmp_path):
    tensors = {"a": torch.arange(1000.0), "b": torch.ones(3, dtype=torch.int64)}
    path = save_safetensors_atomic(tensors, tmp_path / "t.safetensors", metadata={"k": "v"})
    loaded, metadata = load_safetensors_state(path, what="test tensors", how_to_skip="Skip it.")
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"]) and metadata == {"k": "v"}
    truncate(path)
    with pytest.raises(StateFileError, match=r"t\.safetensors is truncated.*Skip it\."):
        load_safetensors_state(path, what="test tensors", how_to_skip="Skip it.")
    path.write_bytes(b"garbage!" * 4)
    with pytest.raises(StateFileError, match=r"t\.safetensors is corrupt.*Skip it\."):
        load_safetensors_state(path, what="test tensors", how_to_skip="Skip it.")


# ---- 5. empty dataset files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["train.jsonl", "train.txt"])
def test_empty_train_file_names_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        load_text_dataset(str(path))
    assert name in str(info.value) and "empty" in str(info.value)


@pytest.mark.parametrize("name", ["general.jsonl", "general.txt"])
def test_empty_replay_file_names_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("", encoding="utf-8")
    trainer = sft_trainer(tmp_path / "out", RetentionConfig(replay_ratio=0.5, replay_dataset=str(path),
                                                            consistency_policy="off", record_lineage=False))
    with pytest.raises(DatasetError) as info:
        trainer.train()
    assert name in str(info.value) and "empty" in str(info.value)
