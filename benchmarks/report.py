"""Benchmark rows, the one way timed rows are made, their markdown table, and the JSON written with the machine."""

import json
import operator
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from .timing import Stats

FIGURES = ("a", "b", "ratio")
Side = tuple[str, list[float]]  # a side's name and its seconds per round


@dataclass
class Row:
    """Two sides measured in turn (A: the baseline's way or the reference, B: ours) and a figure of each pair (a ratio,
    or another with its own unit); `targets` bound any of the figures `FIGURES` (">=" or "<=" a bound)."""

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
        """Whether every target's median reaches its bound and the row's checks passed; None without targets."""
        if not self.targets:
            return None
        compare = {">=": operator.ge, "<=": operator.le}
        reached = [
            compare[sign](getattr(self, figure).median, bound) for figure, (sign, bound) in self.targets.items()
        ]
        return all(reached) and self.checks_passed


def comparison_row(
    key: str, title: str, a: Side, b: Side, unit: str = "ms", work: float | None = None, ratio: str = "speed-up", **row
) -> Row:
    """
    A row comparing two sides timed in turn, each given as (name, seconds per round): shown as times in `unit` (ms or
    s) or, given the `work` one timed call does (responses, tokens), as rates `work / seconds` in `unit`. The ratio
    is taken round by round: a `speed-up` is A's seconds over B's, a `time ratio` B's over A's. `row`: more fields.
    """
    (a_name, a_seconds), (b_name, b_seconds) = a, b

    def figures(seconds: list[float]) -> Stats:
        scale = {"ms": 1000, "s": 1}
        return Stats.of([work / value if work is not None else value * scale[unit] for value in seconds])

    pairs = zip(a_seconds, b_seconds) if ratio == "speed-up" else zip(b_seconds, a_seconds)
    ratios = Stats.of([numerator / denominator for numerator, denominator in pairs])
    return Row(key, title, unit, a_name, figures(a_seconds), b_name, figures(b_seconds), ratio, ratios, **row)


def number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def spread(stats: Stats, unit: str = "") -> str:
    return f"{number(stats.median)}{f' {unit}' if unit else ''} [{number(stats.low)}–{number(stats.high)}]"


def target_text(row: Row) -> str:
    """A ratio's target as `>= 5`, another figure's with its name and unit: `build <= 120 s`."""
    labels = {"a": (row.a_name, row.unit), "b": (row.b_name, row.unit), "ratio": (row.ratio_name, row.ratio_unit)}
    parts = []
    for figure, (sign, bound) in row.targets.items():
        name, unit = labels[figure]
        bound_text = f"{sign} {bound:,g}" + (f" {unit}" if unit else "")
        parts.append(bound_text if figure == "ratio" and not unit else f"{name} {bound_text}")
    return "; ".join(parts) or "–"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| # | benchmark | A | B | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for index, row in enumerate(rows, start=1):
        lines.append(
            f"| {index} | {row.title} | {row.a_name}: {spread(row.a, row.unit)} | "
            f"{row.b_name}: {spread(row.b, row.unit)} | {row.ratio_name} {spread(row.ratio, row.ratio_unit)} | "
            f"{target_text(row)} | {({None: '–', True: 'yes', False: '**no**'})[row.met]} |"
        )
    notes = [f"{index}. {'; '.join(row.notes)}" for index, row in enumerate(rows, start=1) if row.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


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


def row_from_record(record: dict) -> Row:
    fields = {key: value for key, value in record.items() if key not in ("met", "command", "date")}
    stats = {figure: Stats(**fields[figure]) for figure in FIGURES}
    targets = {figure: tuple(target) for figure, target in fields["targets"].items()}
    return Row(**{**fields, **stats, "targets": targets})


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


def write_json(path: Path, rows: list[Row], header: dict, order: list[str], update: bool = False) -> list[Row]:
    """Write the `header` (with the `command`), the machine and the rows, each with this run's command and date; with
    `update`, the rows of `path` not measured now are kept, all in `order` of keys. Returns the rows written."""
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records = [dict(asdict(row), met=row.met, command=header["command"], date=date) for row in rows]
    if update:
        by_key = {**earlier_records(path), **{record["key"]: record for record in records}}
        records = sorted(
            by_key.values(), key=lambda record: order.index(record["key"]) if record["key"] in order else len(order)
        )
    written = [row_from_record(record) for record in records]
    results = {**header, "date": date, "machine": machine(), "rows": records, "table": markdown_table(written)}
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return written
