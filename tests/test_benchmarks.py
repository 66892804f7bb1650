"""The benchmark entry point at tiny size (every row measured, table printed, JSON written), partial runs that update
a results file, the report's targets, and the timing helper."""

import json
import math

import pytest

from benchmarks.__main__ import ORDER, main
from benchmarks.report import Row, markdown_table, target_text
from benchmarks.timing import Stats, interleaved


def test_interleaved_runs_sides_in_turn_after_warmup():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert {name: len(values) for name, values in times.items()} == {"a": 2, "b": 2}


def test_ratio_stats_pair_the_rounds():
    stats = Stats.of_ratios([4.0, 9.0, 6.0], [2.0, 3.0, 1.0])
    assert (stats.median, stats.low, stats.high) == (3.0, 2.0, 6.0)


def row(**targets) -> Row:
    return Row(
        key="build",
        title="Build",
        unit="s",
        a_name="build",
        a=Stats.of([90.0, 100.0, 130.0]),
        b_name="load",
        b=Stats.of([2.0]),
        ratio_name="peak memory",
        ratio=Stats.of([1500.0]),
        ratio_unit="MiB",
        targets=targets,
    )


def test_every_target_must_be_met_each_on_its_own_figure():
    assert row().met is None
    assert row(a=("<=", 120.0), ratio=("<=", 2048.0)).met is True  # the median build, 100 s, is under 120 s
    assert row(a=("<=", 120.0), ratio=("<=", 1024.0)).met is False
    assert row(b=(">=", 3.0)).met is False
    failed_check = row(a=("<=", 120.0))
    failed_check.checks_passed = False
    assert failed_check.met is False


def test_targets_are_shown_with_their_figure_and_unit():
    assert target_text(row(a=("<=", 120.0), ratio=("<=", 2048.0))) == "build <= 120 s; peak memory <= 2,048 MiB"
    plain_ratio = Row("k", "t", "ms", "a", Stats.of([2.0]), "b", Stats.of([1.0]), "speed-up", Stats.of([2.0]))
    plain_ratio.targets = {"ratio": (">=", 4.0)}
    assert target_text(plain_ratio) == ">= 4"
    assert "| >= 4 | **no** |" in markdown_table([plain_ratio])


def test_a_target_on_an_unknown_figure_is_refused():
    with pytest.raises(ValueError, match="unknown figures"):
        row(speed=(">=", 1.0))


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> tuple[dict, str]:
    output = tmp_path_factory.mktemp("bench") / "results.json"
    assert main(["--size", "tiny", "--repeats", "1", "--threads", "1", "--output", str(output)]) == 0
    return json.loads(output.read_text()), str(output)


@pytest.mark.slow  # the memory and release rows start processes
def test_tiny_benchmark_writes_every_row_with_its_checks(tiny_results):
    results, _ = tiny_results
    assert (results["size"], results["repeats"]) == ("tiny", 1)
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["torch_threads"] == 1
    assert [row["key"] for row in results["rows"]] == ORDER
    for index, record in enumerate(results["rows"], start=1):
        assert f"| {index} | {record['title']} |" in results["table"]
        for figure in ("a", "b", "ratio"):
            values = [record[figure][key] for key in ("median", "low", "high")]
            assert all(math.isfinite(value) and value >= 0 for value in values), (record["key"], figure, values)
            assert values[1] <= values[0] <= values[2]
        if record["unit"] in ("responses/s", "ms", "s", "MiB"):  # measured, never nothing
            assert record["a"]["low"] > 0 and record["b"]["low"] > 0
        assert record["met"] in (True, False, None)
        assert record["command"].startswith("python -m benchmarks --size tiny")
        # Correctness checks, not timings: equal losses, identical generations, the same nearest memes, row counts.
        assert record["checks_passed"], record["notes"]


@pytest.mark.slow  # the memory and release rows start processes
def test_training_rows_count_what_each_way_computes(tiny_results):
    rows = {record["key"]: record for record in tiny_results[0]["rows"]}
    padding = rows["training-padding"]
    # Padding-free rows compute no more tokens per labelled token than padded batches; padding is a share of them.
    assert 1 < padding["b"]["median"] <= padding["a"]["median"]
    assert 0 <= padding["ratio"]["median"] < 1
    assert "tokens computed per labelled token" in " ".join(rows["training-per-response-batched"]["notes"])
    assert rows["release-build"]["targets"] == {"a": ["<=", 120.0], "ratio": ["<=", 2048.0]}


@pytest.mark.slow  # the memory and release rows start processes
def test_a_partial_run_updates_only_its_rows(tiny_results, tmp_path):
    results, path = tiny_results
    output = tmp_path / "results.json"
    output.write_text(json.dumps(results))
    assert (
        main(
            [
                "--size",
                "tiny",
                "--repeats",
                "1",
                "--threads",
                "1",
                "--rows",
                "retrieval",
                "--output",
                str(output),
                "--update",
            ]
        )
        == 0
    )
    updated = json.loads(output.read_text())
    assert [row["key"] for row in updated["rows"]] == ORDER
    before = {row["key"]: row for row in results["rows"]}
    after = {row["key"]: row for row in updated["rows"]}
    assert after["retrieval"]["command"].endswith("--update")
    assert after["retrieval"]["date"] >= before["retrieval"]["date"]
    assert all(after[key] == before[key] for key in ORDER if key != "retrieval")
    assert f"| {ORDER.index('retrieval') + 1} | Meme retrieval" in updated["table"]


def test_a_partial_run_without_update_writes_its_rows_alone(tmp_path):
    output = tmp_path / "results.json"
    assert (
        main(["--size", "tiny", "--repeats", "1", "--threads", "1", "--rows", "retrieval", "--output", str(output)])
        == 0
    )
    assert [row["key"] for row in json.loads(output.read_text())["rows"]] == ["retrieval"]


def test_update_refuses_a_file_without_keyed_rows_before_measuring(tmp_path, capsys):
    output = tmp_path / "BENCHMARKS.json"
    output.write_text(json.dumps({"rows": [{"title": "a row of an older format"}]}))
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", "tiny", "--rows", "retrieval", "--output", str(output), "--update"])
    assert exit_info.value.code == 2
    assert f"--update: {output} is not a results file with keyed rows" in capsys.readouterr().err
