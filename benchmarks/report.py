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

FIGURES = ("a", "b", "ratio")


@dataclass
class Row:
    """
    Two sides measured in turn (A: the baseline's way or the reference, B: ours) and a figure derived from each pair
    (a ratio, or another figure of the pair with its own unit). `targets` bounds any of the three figures ("a", "b",
    "ratio") with an operator (">=" or "<=") and a bound.
    """

    key: str
    title: str
    unit: str
    a_name: str
    a: Stats
    b_name: str
    b: Stats
    ratio_name: str
    ratio: Stats
    ratio_unit: str = ""
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)
    checks_passed: bool = True
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(FIGURES)
        if unknown:
            raise ValueError(f"Row {self.key!r}: targets name unknown figures {sorted(unknown)}; use {FIGURES}.")

    @property
    def met(self) -> bool | None:
        """Whether every target's median reaches its bound and the row's correctness checks passed."""
        if not self.targets:
            return None
        reached = [
            getattr(self, figure).median >= bound if operator == ">=" else getattr(self, figure).median <= bound
            for figure, (operator, bound) in self.targets.items()
        ]
        return all(reached) and self.checks_passed

    def figure_label(self, figure: str) -> tuple[str, str]:
        """The name and unit under which a figure is shown."""
        return {
            "a": (self.a_name, self.unit),
            "b": (self.b_name, self.unit),
            "ratio": (self.ratio_name, self.ratio_unit),
        }[figure]


def number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def spread(stats: Stats, unit: str = "") -> str:
    suffix = f" {unit}" if unit else ""
    return f"{number(stats.median)}{suffix} [{number(stats.low)}–{number(stats.high)}]"


def verdict(row: Row) -> str:
    return {None: "–", True: "yes", False: "**no**"}[row.met]


def target_text(row: Row) -> str:
    """A ratio's target as `>= 5`, another figure's with its name and unit: `build <= 120 s`."""
    parts = []
    for figure, (operator, bound) in row.targets.items():
        name, unit = row.figure_label(figure)
        bound_text = f"{bound:,g}" + (f" {unit}" if unit else "")
        parts.append(
            f"{operator} {bound_text}" if figure == "ratio" and not unit else f"{name} {operator} {bound_text}"
        )
    return "; ".join(parts) or "–"


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| # | benchmark | A | B | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(rows, start=1):
        lines.append(
            f"| {index} | {row.title} | {row.a_name}: {spread(row.a, row.unit)} | "
            f"{row.b_name}: {spread(row.b, row.unit)} | {row.ratio_name} {spread(row.ratio, row.ratio_unit)} | "
            f"{target_text(row)} | {verdict(row)} |"
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


def row_record(row: Row, command: str, date: str) -> dict:
    """A row as JSON, with the command and date of the run that measured it."""
    return dict(asdict(row), met=row.met, command=command, date=date)


def row_from_record(record: dict) -> Row:
    fields = {key: value for key, value in record.items() if key not in ("met", "command", "date")}
    for figure in FIGURES:
        fields[figure] = Stats(**fields[figure])
    fields["targets"] = {figure: tuple(target) for figure, target in fields["targets"].items()}
    return Row(**fields)


def earlier_records(path: Path) -> dict[str, dict]:
    """The rows of an earlier results file by key; none when there is no file."""
    if not path.exists():
        return {}
    try:
        return {record["key"]: record for record in json.loads(path.read_text())["rows"]}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a results file with keyed rows, which --update needs ({type(error).__name__}: {error}); "
            "write it anew without --update"
        ) from error


def merged_records(path: Path, records: list[dict], order: list[str]) -> list[dict]:
    """The rows of an earlier results file at `path`, with those measured now in their place, in `order` of keys."""
    by_key = {**earlier_records(path), **{record["key"]: record for record in records}}
    return [by_key[key] for key in order if key in by_key] + [
        record for key, record in by_key.items() if key not in order
    ]


def write_json(
    path: Path,
    rows: list[Row],
    size: str,
    repeats: int,
    command: str,
    order: list[str],
    update: bool = False,
    extra: dict | None = None,
) -> list[Row]:
    """
    Write the results, with `extra` entries at the top level; with `update`, rows of `path` not measured now are kept.
    Returns the rows written.
    """
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records = [row_record(row, command, date) for row in rows]
    if update:
        records = merged_records(path, records, order)
    written = [row_from_record(record) for record in records]
    results = {
        "command": command,
        "size": size,
        "repeats": repeats,
        "date": date,
        "machine": machine(),
        **(extra or {}),
        "rows": records,
        "table": markdown_table(written),
    }
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return written
