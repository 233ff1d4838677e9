"""The offline demo runs end to end (quick sizes) through the recipe path and writes its report."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_quick_demo_writes_report_with_every_arm(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_RETAIN_CACHE", str(tmp_path / "cache"))
    from hf_retain.cli import main

    assert main(["demo", "--quick", "--output", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "demo" / "report.json").read_text())
    from hf_retain.demo import DEMO_METHODS, demo_settings

    assert [arm["name"] for arm in data["arms"]] == list(DEMO_METHODS)
    for arm in data["arms"]:
        assert arm["general_before"] > 0 and arm["domain_before"] > 0
        assert arm["steps"] == demo_settings(quick=True).finetune_steps
        assert arm["name"] in out
    assert (tmp_path / "demo" / "report.png").stat().st_size > 0
    assert "forgetting" in (tmp_path / "demo" / "report.md").read_text()
    # the pretrained tiny model is cached for `builtin:tiny-llama` and the next demo
    assert list((tmp_path / "cache").glob("tiny-llama-general-*/model.safetensors"))
