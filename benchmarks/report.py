"""Benchmark rows, their markdown table, and the JSON written with the machine they ran on."""

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from .timing import Stats


@dataclass
class Row:
    """Two sides measured in turn (A: the baseline's way or the reference, B: ours) and the ratio of each pair."""

    title: str
    unit: str
    a_name: str
    a: Stats
    b_name: str
    b: Stats
    ratio_name: str
    ratio: Stats
    target: tuple[str, float] | None = None
    checks_passed: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        """Whether the median ratio reaches the target and the row's correctness checks passed."""
        if self.target is None:
            return None
        operator, bound = self.target
        reached = self.ratio.median >= bound if operator == ">=" else self.ratio.median <= bound
        return reached and self.checks_passed


def number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def spread(stats: Stats, unit: str = "") -> str:
    suffix = f" {unit}" if unit else ""
    return f"{number(stats.median)}{suffix} [{number(stats.low)}–{number(stats.high)}]"


def verdict(row: Row) -> str:
    return {None: "–", True: "yes", False: "**no**"}[row.met]


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| # | benchmark | A | B | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(rows, start=1):
        target = f"{row.target[0]} {row.target[1]:g}" if row.target else "–"
        lines.append(
            f"| {index} | {row.title} | {row.a_name}: {spread(row.a, row.unit)} | "
            f"{row.b_name}: {spread(row.b, row.unit)} | {row.ratio_name} {spread(row.ratio)} | {target} | "
            f"{verdict(row)} |"
        )
    notes = [f"{index}. {'; '.join(row.notes)}" for index, row in enumerate(rows, start=1) if row.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, str | int]:
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def write_json(path: Path, rows: list[Row], size: str, repeats: int, command: str) -> None:
    results = {
        "command": command,
        "size": size,
        "repeats": repeats,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "rows": [dict(asdict(row), met=row.met) for row in rows],
        "table": markdown_table(rows),
    }
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
