"""`RetentionReport`: forgetting and learning of fine-tuning arms, as a table, JSON, markdown and a PNG plot.

Forgetting is the increase of held-out *general* loss, learning the decrease of held-out *domain* loss (nats per
token, and in % of the value before fine-tuning). Arms are compared with the first arm (normally plain
fine-tuning), so the report says how much of plain fine-tuning's forgetting an arm keeps and how much of its learning
it reaches.

Example:
    >>> from hf_retain import RetentionReport
    >>> from hf_retain.evaluation.report import ArmResult
    >>> report = RetentionReport([ArmResult("plain", 2.0, 2.5, 3.0, 1.0), ArmResult("replay", 2.0, 2.1, 3.0, 1.1)])
    >>> round(report.arms[1].forgetting, 2), round(report.relative(report.arms[1])["forgetting"], 2)
    (0.1, 0.2)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_retain.evaluation.plots import scatter_learning_forgetting

__all__ = ["ArmResult", "RetentionReport"]


@dataclass
class ArmResult:
    """One fine-tuning arm's held-out losses before and after, and what it ran with."""

    name: str
    general_before: float
    general_after: float
    domain_before: float
    domain_after: float
    methods: list[str] = field(default_factory=list)
    seconds: float | None = None
    steps: int | None = None

    @property
    def forgetting(self) -> float:
        return self.general_after - self.general_before

    @property
    def learning(self) -> float:
        return self.domain_before - self.domain_after

    @property
    def forgetting_pct(self) -> float:
        return 100.0 * self.forgetting / self.general_before

    @property
    def learning_pct(self) -> float:
        return 100.0 * self.learning / self.domain_before

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(forgetting=self.forgetting, learning=self.learning, forgetting_pct=self.forgetting_pct,
                   learning_pct=self.learning_pct)
        return row


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


@dataclass
class RetentionReport:
    arms: list[ArmResult]
    title: str = "hf_retain retention report"
    meta: dict[str, Any] = field(default_factory=dict)

    def relative(self, arm: ArmResult) -> dict[str, float]:
        """``arm``'s forgetting and learning as fractions of the first (reference) arm's."""
        reference = self.arms[0]
        return {"forgetting": _ratio(arm.forgetting, reference.forgetting),
                "learning": _ratio(arm.learning, reference.learning)}

    # ---- rendering -----------------------------------------------------------------------------------------------
    def table(self) -> str:
        """A fixed-width table for the terminal."""
        head = (f"{'arm':<16}{'general before':>15}{'after':>8}{'forgetting':>17}{'domain before':>15}{'after':>8}"
                f"{'learning':>17}{'forget/ref':>12}{'learn/ref':>11}")
        lines = [head, "-" * len(head)]
        for arm in self.arms:
            rel = self.relative(arm)
            forgetting = f"{arm.forgetting:+.3f} ({arm.forgetting_pct:+.0f}%)"
            learning = f"{arm.learning:+.3f} ({arm.learning_pct:+.0f}%)"
            lines.append(
                f"{arm.name:<16}{arm.general_before:>15.3f}{arm.general_after:>8.3f}{forgetting:>17}"
                f"{arm.domain_before:>15.3f}{arm.domain_after:>8.3f}{learning:>17}"
                f"{rel['forgetting']:>12.2f}{rel['learning']:>11.2f}"
            )
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        if self.meta:
            lines += [f"- **{key}**: {value}" for key, value in self.meta.items()] + [""]
        lines += [
            "Losses are held-out mean NLL per token (nats). Forgetting = general loss after - before; learning = "
            f"domain loss before - after. Ratios are against the first arm, `{self.arms[0].name}`.", "",
            "| arm | methods | general before | general after | forgetting | domain before | domain after | learning "
            "| forgetting / ref | learning / ref |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm in self.arms:
            rel = self.relative(arm)
            lines.append(
                f"| {arm.name} | {', '.join(arm.methods) or '-'} | {arm.general_before:.3f} | {arm.general_after:.3f} "
                f"| {arm.forgetting:+.3f} ({arm.forgetting_pct:+.1f}%) | {arm.domain_before:.3f} "
                f"| {arm.domain_after:.3f} | {arm.learning:+.3f} ({arm.learning_pct:+.1f}%) "
                f"| {rel['forgetting']:.2f} | {rel['learning']:.2f} |"
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "meta": self.meta, "reference": self.arms[0].name,
                "arms": [dict(arm.to_dict(), relative=self.relative(arm)) for arm in self.arms]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetentionReport:
        names = {f for f in ArmResult.__dataclass_fields__}
        arms = [ArmResult(**{k: v for k, v in row.items() if k in names}) for row in data["arms"]]
        return cls(arms=arms, title=data.get("title", cls.title), meta=data.get("meta", {}))

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Learning (x) against forgetting (y) per arm: up-left is bad, down-right is good."""
        return scatter_learning_forgetting([(arm.name, arm.learning, arm.forgetting) for arm in self.arms], path,
                                           title=self.title)

    def save(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and ``report.png`` into ``out_dir`` (each written atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "report.png"}
        for key, text in (("json", json.dumps(self.to_dict(), indent=2)), ("markdown", self.to_markdown())):
            tmp = paths[key].with_suffix(paths[key].suffix + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, paths[key])
        tmp_png = out / "report.tmp.png"
        self.plot(tmp_png)
        os.replace(tmp_png, paths["png"])
        return paths
