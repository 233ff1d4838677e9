"""The offline corpora and the retention report."""

import json

import pytest

from hf_retain import RetentionReport, builtin_corpora
from hf_retain.evaluation.report import ArmResult


def test_builtin_corpora_are_prose_and_code_with_disjoint_splits():
    corpora = builtin_corpora(max_chars=300_000)
    general, domain = corpora["general"], corpora["domain"]
    for splits in (general, domain):
        assert len(splits["train"]) > 100 and len(splits["eval"]) > 5
        assert not set(splits["train"]) & set(splits["eval"])
    def code_like(texts):
        return sum(any(k in t for k in ("def ", "return", "self.", "import ", " = ")) for t in texts) / len(texts)

    assert code_like(domain["train"]) > 0.8
    assert code_like(general["train"]) < 0.4


def test_report_numbers_files_and_round_trip(tmp_path):
    report = RetentionReport([ArmResult("plain", 2.0, 2.6, 3.0, 1.0, methods=[]),
                              ArmResult("replay", 2.0, 2.15, 3.0, 1.2, methods=["replay[0.3 examples]"])])
    replay = report.arms[1]
    assert replay.forgetting == pytest.approx(0.15) and replay.learning == pytest.approx(1.8)
    assert replay.forgetting_pct == pytest.approx(7.5)
    assert report.relative(replay) == pytest.approx({"forgetting": 0.25, "learning": 0.9})
    paths = report.save(tmp_path)
    assert all(path.is_file() and path.stat().st_size > 0 for path in paths.values())
    data = json.loads(paths["json"].read_text())
    assert data["arms"][1]["relative"]["forgetting"] == pytest.approx(0.25)
    again = RetentionReport.from_dict(data)
    assert again.arms[1].forgetting == pytest.approx(replay.forgetting)
    assert "| replay | replay[0.3 examples] |" in paths["markdown"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
