"""ReplayCollator: exact shares over >= 1000 batches, determinism, ranks, resume, wrapped collators, bad input."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as TRLCollator

from hf_retain.mixin import REPLAY_MASK_KEY
from hf_retain.replay import ReplayBuffer, ReplayCollator, ReplayColumnError


def rows(n: int, seed: int, low: int = 3, high: int = 259, min_len: int = 4, max_len: int = 40,
         labels: bool = True) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rnd.randrange(low, high) for _ in range(rnd.randint(min_len, max_len))]
        out.append({"input_ids": ids, "labels": list(ids)} if labels else {"input_ids": ids})
    return out


@pytest.fixture(scope="module")
def buffer() -> ReplayBuffer:
    # replay rows use token ids 3..9 so they can be told apart from base rows (ids >= 10) after collation
    return ReplayBuffer.from_dataset(rows(500, seed=1, low=3, high=10, min_len=2, max_len=80), seed=0)


def base_batches(n_batches: int, batch_size: int, seed: int = 2) -> list[list[dict]]:
    data = rows(n_batches * batch_size, seed=seed, low=10, high=259)
    return [data[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def test_examples_share_over_1000_batches(buffer):
    ratio, batch_size = 0.3, 8
    collate = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=ratio, seed=0, return_replay_mask=True)
    expected = batch_size * ratio / (1 - ratio)
    replay = total = 0
    for batch_rows in base_batches(1000, batch_size):
        batch = collate(batch_rows)
        mask = batch[REPLAY_MASK_KEY]
        assert mask.dtype == torch.bool and mask.shape == (batch["input_ids"].shape[0],)
        n = int(mask.sum())
        assert abs(n - expected) < 1.0  # stochastic rounding: within one example of the target in every batch
        # the rows marked as replay are exactly the rows that came from the buffer (token ids < 10)
        from_buffer = (batch["input_ids"][:, 0] < 10)
        assert torch.equal(from_buffer, mask)
        replay += n
        total += len(mask)
    assert abs(replay / total - ratio) <= 0.02
    assert collate.stats["batches"] == 1000 and collate.stats["replay_examples"] == replay


def test_tokens_share_over_1000_batches(buffer):
    ratio, batch_size = 0.25, 6
    collate = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=ratio, unit="tokens", seed=3,
                             return_replay_mask=True)
    longest = max(len(r["input_ids"]) for r in buffer.rows())
    replay_tokens = total_tokens = 0
    for batch_rows in base_batches(1000, batch_size, seed=5):
        batch = collate(batch_rows)
        lengths = batch["attention_mask"].sum(1)
        mask = batch[REPLAY_MASK_KEY]
        base_tokens = int(lengths[~mask].sum())
        got = int(lengths[mask].sum())
        target = base_tokens * ratio / (1 - ratio)
        assert abs(got - target) < longest  # within one replay row of the target
        replay_tokens += got
        total_tokens += int(lengths.sum())
    assert abs(replay_tokens / total_tokens - ratio) <= 0.02


def test_deterministic_per_seed_and_different_per_rank(buffer):
    batches = base_batches(20, 8)

    def run(seed, rank):
        collate = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=0.4, seed=seed, rank=rank)
        return [collate(b)["input_ids"] for b in batches]

    a, b = run(0, 0), run(0, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, run(1, 0)))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, run(0, 1)))


def test_resume_reproduces_batches_and_pinned_ratios(buffer):
    batches = base_batches(12, 4)
    first = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=0.5, seed=7)
    uninterrupted = []
    for i, b in enumerate(batches):
        if i == 6:
            # Step 5 ends: a curriculum phase begins (ratio 0.2), then the checkpoint is written. Batch 5 was already
            # collated with the old ratio (the DataLoader prefetches one batch) but is trained after the checkpoint.
            first.ratio = 0.2
            state = first.state_dict()
        uninterrupted.append(first(b)["input_ids"])
    # A new process resumes at batch 5: the batches before it are skipped and never collated; the curriculum callback
    # sets the ratio of the current phase at train begin.
    second = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=0.5, seed=7)
    second.load_state_dict(state)
    second.ratio = 0.2
    resumed = [second(b)["input_ids"] for b in batches[5:]]
    assert uninterrupted[5].shape[0] == 8  # 4 base rows + 4 replay rows at the old ratio 0.5
    for x, y in zip(uninterrupted[5:], resumed):
        assert torch.equal(x, y)
    # without the saved state the prefetched batch would get the new ratio: the state matters
    third = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=0.2, seed=7)
    assert third(batches[5])["input_ids"].shape[0] < 8


def test_epoch_changes_draws(buffer):
    batch = base_batches(1, 8)[0]
    collate = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=0.5, seed=0)
    first = collate(batch)["input_ids"]
    collate.epoch = 1
    second = collate(batch)["input_ids"]
    assert first.shape != second.shape or not torch.equal(first, second)


def test_dataloader_workers_match_main_process(buffer):
    data = rows(64, seed=9, low=10)
    collate = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=0.3, seed=0)
    collate.ratio = 0.6  # set in the main process after construction: workers must see it (shared memory)
    main = list(DataLoader(data, batch_size=8, collate_fn=collate, num_workers=0))
    workers = list(DataLoader(data, batch_size=8, collate_fn=collate, num_workers=2))
    for x, y in zip(main, workers):
        assert torch.equal(x["input_ids"], y["input_ids"])
    assert sum(int((b["input_ids"][:, 0] < 10).sum()) for b in main) / sum(len(b["input_ids"]) for b in main) > 0.5


def test_trl_completion_only_labels_and_padding_free(buffer):
    base = [{"input_ids": [20, 21, 22, 23], "labels": [-100, -100, 22, 23]},
            {"input_ids": [30, 31, 32], "labels": [-100, 31, 32]}]
    masked = ReplayBuffer.from_dataset([{"input_ids": [4, 5, 6], "labels": [-100, 5, 6]}], seed=0)
    collate = ReplayCollator(TRLCollator(pad_token_id=0), masked, ratio=0.5, seed=0, return_replay_mask=True)
    batch = collate(base)
    for row, labels, is_replay in zip(batch["input_ids"], batch["labels"], batch[REPLAY_MASK_KEY]):
        if is_replay:
            assert labels[:3].tolist() == [-100, 5, 6]
        elif row[0] == 20:
            assert labels.tolist() == [-100, -100, 22, 23]
    # padding-free: replay rows are flattened in too; a per-row mask is refused with a clear error
    flat = ReplayCollator(TRLCollator(pad_token_id=0, padding_free=True), masked, ratio=0.5, seed=0)
    out = flat(base)
    assert out["input_ids"].shape[0] == 1 and out["input_ids"].shape[1] == 4 + 3 + 2 * 3
    with pytest.raises(ValueError, match="padding-free"):
        ReplayCollator(TRLCollator(pad_token_id=0, padding_free=True), masked, ratio=0.5, seed=0,
                       return_replay_mask=True)(base)


def test_transformers_language_modeling_collator(tiny_tokenizer):
    from transformers import DataCollatorForLanguageModeling

    replay = ReplayBuffer.from_dataset([tiny_tokenizer(t) for t in ("old prose one", "old prose two")], seed=0)
    collate = ReplayCollator(DataCollatorForLanguageModeling(tiny_tokenizer, mlm=False), replay, ratio=0.5,
                             seed=0, tokenizer=tiny_tokenizer, return_replay_mask=True)
    batch = collate([tiny_tokenizer(t) for t in ("def f(x):", "return x + 1")])
    assert batch["input_ids"].shape[0] == 4 and int(batch[REPLAY_MASK_KEY].sum()) == 2
    texts = tiny_tokenizer.batch_decode(batch["input_ids"][batch[REPLAY_MASK_KEY]], skip_special_tokens=True)
    assert all(t.startswith("old prose") for t in texts)
    keep = batch["attention_mask"].bool()
    assert torch.equal(batch["labels"][keep], batch["input_ids"][keep])


def test_no_mask_unless_asked(buffer):
    batch = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=0.5, seed=0)(base_batches(1, 4)[0])
    assert REPLAY_MASK_KEY not in batch


def test_empty_buffer_warns_once_and_trains_without_replay():
    base = TRLCollator(pad_token_id=0)
    collate = ReplayCollator(base, ReplayBuffer(10, seed=0), ratio=0.5, seed=0, return_replay_mask=True)
    batch_rows = base_batches(1, 4)[0]
    with pytest.warns(RuntimeWarning, match="empty"):
        out = collate(batch_rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collate(batch_rows)
    assert torch.equal(out["input_ids"], base(batch_rows)["input_ids"])
    assert not out[REPLAY_MASK_KEY].any()


def test_column_mismatch_names_the_column():
    no_labels = ReplayBuffer.from_dataset(rows(5, seed=0, labels=False), seed=0)
    collate = ReplayCollator(TRLCollator(pad_token_id=0), no_labels, ratio=0.5, seed=0)
    with pytest.raises(ReplayColumnError, match="'labels'"):
        collate(base_batches(1, 4)[0])
    text = ReplayBuffer.from_dataset([{"input_ids": "raw text", "labels": "raw text"}] * 3, seed=0)
    with pytest.raises(ReplayColumnError, match=r"'input_ids'.*str"):
        ReplayCollator(TRLCollator(pad_token_id=0), text, ratio=0.5, seed=0)(base_batches(1, 4)[0])


def test_tokenizer_mismatch_is_caught(tiny_tokenizer):
    wrong = ReplayBuffer.from_dataset([{"input_ids": [5, 31999], "labels": [5, 31999]}], seed=0)
    with pytest.raises(ReplayColumnError, match=r"'input_ids'.*vocabulary"):
        ReplayCollator(TRLCollator(pad_token_id=0), wrong, ratio=0.3, seed=0, tokenizer=tiny_tokenizer)


@pytest.mark.parametrize("ratio", [1.0, -0.1, math.nan, 1.5, True])
def test_bad_ratio(buffer, ratio):
    with pytest.raises(ValueError, match="ratio"):
        ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=ratio, seed=0)
    collate = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=0.2, seed=0)
    with pytest.raises(ValueError, match="ratio"):
        collate.ratio = ratio


def test_bad_unit_and_types(buffer):
    with pytest.raises(ValueError, match="unit"):
        ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=0.2, unit="bytes", seed=0)
    with pytest.raises(TypeError, match="ReplayBuffer"):
        ReplayCollator(TRLCollator(pad_token_id=0), [{"input_ids": [1]}], ratio=0.2, seed=0)


def test_zero_ratio_is_identity(buffer):
    base = TRLCollator(pad_token_id=0)
    batch_rows = base_batches(1, 5)[0]
    out = ReplayCollator(base, buffer, ratio=0.0, seed=0)(batch_rows)
    assert torch.equal(out["input_ids"], base(batch_rows)["input_ids"])
    assert np.isclose(ReplayCollator(base, buffer, ratio=0.0, seed=0).ratio, 0.0)
