"""`hf-retain distill-cache` writes a cache that trains offline; bad arguments fail with a clear message; the
benchmark's --quick smoke run works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_retain.cli import main
from hf_retain.distill import OfflineTeacherCache

REPO = Path(__file__).resolve().parents[1]


def test_distill_cache_cli_then_offline_training(tmp_path, tiny_tokenizer, capsys):
    from hf_retain import build_tiny_model

    teacher = build_tiny_model(seed=0, num_hidden_layers=1)
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer.save_pretrained(tmp_path / "teacher")
    texts = ["The cat sat on the mat.", "def add(a, b):\n    return a + b", "Hello world"]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    code = main(["distill-cache", "--model", str(tmp_path / "teacher"), "--data", str(data), "--out",
                 str(tmp_path / "cache"), "--top-k", "8", "--append-eos", "--batch-size", "2"])
    assert code == 0, capsys.readouterr().err
    cache = OfflineTeacherCache(tmp_path / "cache")
    assert cache.top_k == 8 and cache.meta["num_rows"] == 3
    row = tiny_tokenizer(texts[2] + tiny_tokenizer.eos_token)["input_ids"]
    ids, logprobs, tail = cache.row(row)
    assert ids.shape == logprobs.shape == (len(row) - 1, 8) and tail.shape == (len(row) - 1,)

    # The rows SFTTrainer builds from the same texts (EOS appended) are found in the cache: training works offline.
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from hf_retain import RetentionConfig
    from hf_retain.distill import DistillationMixin

    class DistilSFT(DistillationMixin, SFTTrainer):
        pass

    args = SFTConfig(str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=3, report_to=[],
                     logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True, max_length=None)
    trainer = DistilSFT(model=build_tiny_model(seed=0, num_hidden_layers=1), args=args,
                        train_dataset=Dataset.from_dict({"text": texts}), processing_class=tiny_tokenizer,
                        retention=RetentionConfig(distill_alpha=1.0, distill_teacher="offline",
                                                  distill_teacher_path=str(tmp_path / "cache")))
    trainer.train()
    logged = [r["distill_loss"] for r in trainer.state.log_history if "distill_loss" in r]
    assert len(logged) == 2 and logged[0] < 0.05  # same weights as the teacher, top-8 buckets: close to 0


def test_distill_cache_cli_bad_input(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"body": "x y z"}) + "\n")
    code = main(["distill-cache", "--model", "builtin:tiny-llama-init", "--data", str(data), "--out",
                 str(tmp_path / "c")])
    assert code == 2
    assert "--text-column" in capsys.readouterr().err
    code = main(["distill-cache", "--model", "builtin:tiny-llama-init", "--data", str(data), "--out",
                 str(tmp_path / "c"), "--top-k", "0"])
    assert code == 2 and "--top-k" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_quick_smoke():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "distill.py"), "--quick"], capture_output=True,
                          text=True, timeout=240, cwd=REPO, env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                                                 "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "peft_base_teacher / peft_plain" in proc.stdout and "full_offline_teacher / full_plain" in proc.stdout
