"""The benchmark entry point at tiny size (every row measured, table printed, JSON written) and its timing helper."""

import json
import math

from benchmarks.__main__ import main
from benchmarks.timing import Stats, interleaved

ROW_COUNT = 6


def test_interleaved_runs_sides_in_turn_after_warmup():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert {name: len(values) for name, values in times.items()} == {"a": 2, "b": 2}


def test_ratio_stats_pair_the_rounds():
    stats = Stats.of_ratios([4.0, 9.0, 6.0], [2.0, 3.0, 1.0])
    assert (stats.median, stats.low, stats.high) == (3.0, 2.0, 6.0)


def test_tiny_benchmark_prints_and_writes_every_row(tmp_path, capsys):
    output = tmp_path / "results.json"
    assert main(["--size", "tiny", "--repeats", "1", "--output", str(output)]) == 0
    table = capsys.readouterr().out
    results = json.loads(output.read_text())
    assert (results["size"], results["repeats"]) == ("tiny", 1)
    assert results["machine"]["cpu_count"] >= 1
    assert len(results["rows"]) == ROW_COUNT
    for index, row in enumerate(results["rows"], start=1):
        assert f"| {index} | {row['title']} |" in table
        for side in ("a", "b", "ratio"):
            values = [row[side][key] for key in ("median", "low", "high")]
            assert all(math.isfinite(value) and value > 0 for value in values), (row["title"], side, values)
        assert row["met"] in (True, False, None)
        # Correctness checks, not timings: equal losses, identical generations, the same nearest memes.
        assert row["checks_passed"], row["notes"]
