"""Accuracy of `parse_model_card` on real model-card excerpts (tests/fixtures/cards), by card format.

Run ``python tests/test_lineage_cards.py`` to print the accuracy table; the test requires every fixture to be right,
and above all no optimizer reported for a card that names none.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from hf_retain.lineage import parse_model_card

CARDS = Path(__file__).resolve().parent / "fixtures" / "cards"
LABELS: dict[str, dict] = yaml.safe_load((CARDS / "labels.yaml").read_text())


def evaluate() -> dict[str, list[tuple[str, str | None, str | None]]]:
    """format -> [(card, expected, got)]."""
    by_format: dict[str, list[tuple[str, str | None, str | None]]] = defaultdict(list)
    for name, label in sorted(LABELS.items()):
        info = parse_model_card((CARDS / f"{name}.md").read_text(encoding="utf-8"))
        by_format[label["format"]].append((name, label["expected"], info.name if info else None))
    return by_format


def accuracy_table() -> str:
    rows = ["| format | cards | correct | accuracy |", "|---|---|---|---|"]
    total = correct = false_pos = negatives = 0
    for fmt, results in sorted(evaluate().items()):
        ok = sum(expected == got for _, expected, got in results)
        rows.append(f"| {fmt} | {len(results)} | {ok} | {ok / len(results):.0%} |")
        total += len(results)
        correct += ok
        negatives += sum(expected is None for _, expected, _ in results)
        false_pos += sum(expected is None and got is not None for _, expected, got in results)
    rows.append(f"| **all** | {total} | {correct} | {correct / total:.1%} |")
    rows.append(f"\nfalse positives (optimizer reported, card names none): {false_pos} of {negatives} such cards")
    rows.append("\nby collection round (dev = seen while writing the parser; fresh* = collected after it was "
                "frozen, scored before any fix):")
    for split in sorted({label.get("split", "dev") for label in LABELS.values()}):
        names = [n for n, label in LABELS.items() if label.get("split", "dev") == split]
        ok = sum(_got(n) == LABELS[n]["expected"] for n in names)
        rows.append(f"  {split}: {ok}/{len(names)}")
    return "\n".join(rows)


def _got(name: str) -> str | None:
    info = parse_model_card((CARDS / f"{name}.md").read_text(encoding="utf-8"))
    return info.name if info else None


@pytest.mark.parametrize("name", sorted(LABELS))
def test_fixture_card(name: str) -> None:
    label = LABELS[name]
    info = parse_model_card((CARDS / f"{name}.md").read_text(encoding="utf-8"))
    got = info.name if info else None
    assert got == label["expected"], f"{name} ({label['format']}): expected {label['expected']}, got {got}; {info}"


def test_fixture_set_is_diverse() -> None:
    formats = {label["format"] for label in LABELS.values()}
    assert len(LABELS) >= 60 and len(formats) >= 10
    assert sum(label["expected"] is None for label in LABELS.values()) >= 20


if __name__ == "__main__":
    print(accuracy_table())
    for fmt, results in sorted(evaluate().items()):
        for name, expected, got in results:
            if expected != got:
                print(f"WRONG {fmt}/{name}: expected {expected}, got {got}")
