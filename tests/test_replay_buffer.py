"""ReplayBuffer: reservoir uniformity, task quotas, sampling, atomic save/load with RNG state, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from hf_retain.replay import ReplayBuffer, ReplayColumnError


def stream(n: int, task: str = "t") -> list[dict]:
    return [{"x": i, "task": task} for i in range(n)]


def test_reservoir_is_uniform_over_the_stream():
    counts = np.zeros(1000)
    for seed in range(150):
        buf = ReplayBuffer(100, seed=seed)
        buf.add(stream(1000), task="t")
        assert len(buf) == 100 and buf.seen("t") == 1000
        for row in buf.rows():
            counts[row["x"]] += 1
    inclusion = counts / 150  # each item should be kept with probability 100/1000
    assert abs(inclusion[:500].mean() - 0.1) < 0.01 and abs(inclusion[500:].mean() - 0.1) < 0.01
    assert abs(inclusion[:100].mean() - 0.1) < 0.02 and abs(inclusion[-100:].mean() - 0.1) < 0.02


def test_balanced_and_proportional_quotas():
    balanced = ReplayBuffer(100, seed=0)
    balanced.add(stream(1000, "a"), task="a")
    balanced.add(stream(50, "b"), task="b")
    assert len(balanced.rows("a")) == 50 and len(balanced.rows("b")) == 50
    proportional = ReplayBuffer(100, seed=0, quota="proportional")
    proportional.add(stream(1000, "a"), task="a")
    proportional.add(stream(50, "b"), task="b")
    assert len(proportional.rows("a")) == 95 and len(proportional.rows("b")) == 5
    assert all(r["task"] == "a" for r in proportional.rows("a"))
    # a small later task is sampled uniformly within its quota as well
    assert len({r["x"] for r in proportional.rows("b")}) == 5


def test_three_tasks_balanced_share_capacity():
    buf = ReplayBuffer(10, seed=1)
    for task in ("a", "b", "c"):
        buf.add(stream(40, task), task=task)
    assert sorted(len(buf.rows(t)) for t in buf.tasks) == [3, 3, 4] and len(buf) == 10


def test_sample_is_seeded_and_without_replacement():
    buf = ReplayBuffer.from_dataset(stream(20), seed=0)
    assert len(buf) == 20
    a, b = buf.sample(10, rng=3), buf.sample(10, rng=3)
    assert a == b and len({r["x"] for r in a}) == 10
    assert len(buf.sample(50, rng=np.random.default_rng(0))) == 50  # more than stored: with replacement
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(5, seed=0).sample(1, rng=0)


def test_save_load_roundtrip_continues_identically(tmp_path):
    original = ReplayBuffer(30, seed=5, quota="proportional")
    original.add(stream(100, "a"), task="a")
    original.add(stream(40, "b"), task="b")
    original.metadata["tokenizer"] = "tiny"
    original.save(tmp_path / "buf")
    original.save(tmp_path / "buf")  # overwriting an existing save is fine and leaves no temporary folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buf"]
    loaded = ReplayBuffer.load(tmp_path / "buf")
    assert loaded.rows() == original.rows() and loaded.tasks == original.tasks
    assert loaded.seen("a") == 100 and loaded.metadata == {"tokenizer": "tiny"}
    more = stream(200, "c")
    original.add(more, task="c")
    loaded.add(more, task="c")
    assert loaded.rows() == original.rows()  # the RNG state was restored too
    with pytest.raises(FileNotFoundError, match=r"ReplayBuffer\.save"):
        ReplayBuffer.load(tmp_path)


def test_from_streaming_dataset_and_columns():
    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(50)], "id": list(range(50))})
    buf = ReplayBuffer.from_dataset(ds.to_iterable_dataset(), 10, seed=0, columns=["text"])
    assert len(buf) == 10 and buf.columns == ["text"] and buf.seen("default") == 50
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer.from_dataset(ds.to_iterable_dataset(), seed=0)
    assert buf.dataset.column_names == ["text", "__task__"]


def test_column_mismatch_and_bad_arguments():
    buf = ReplayBuffer(5, seed=0)
    buf.add([{"text": "a"}])
    with pytest.raises(ReplayColumnError, match=r"missing \['text'\].*extra \['prompt'\]"):
        buf.add([{"prompt": "b"}])
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, seed=0)
    with pytest.raises(ValueError, match="quota"):
        ReplayBuffer(5, seed=0, quota="random")
    with pytest.raises(ValueError, match="task"):
        buf.add([{"text": "c"}], task="")


def test_dict_of_columns_and_map_rows():
    buf = ReplayBuffer(10, seed=0)
    buf.add({"text": ["a", "bb", "ccc"]})
    buf.map_rows(lambda row: {"input_ids": [len(row["text"])]})
    assert sorted(r["input_ids"][0] for r in buf.rows()) == [1, 2, 3] and buf.columns == ["input_ids"]
