"""The benchmark entry point at tiny size (every row measured, table printed, JSON written), partial runs that update
a results file, the report's rows and targets, the timing helper, and what the rows count (model FLOPs, tokens
computed, the epoch's ways of batching)."""

import json
import math

import pytest
import torch
from conftest import DIALOGUES

from benchmarks.__main__ import ORDER, main
from benchmarks.epoch import (
    count_epoch,
    epoch_windows,
    padded_tokens,
    response_examples,
    response_slices,
    token_budget_batches,
)
from benchmarks.inference import NEW_TOKENS, computed_tokens
from benchmarks.precision import model_flops, per_token_parameters
from benchmarks.report import Row, comparison_row, markdown_table, target_text
from benchmarks.timing import Stats, interleaved
from modeling_mod_gpt import IGNORE_INDEX

TINY = ["--size", "tiny", "--repeats", "1", "--threads", "1"]


def test_interleaved_runs_sides_in_turn_after_warmup():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert {name: len(values) for name, values in times.items()} == {"a": 2, "b": 2}


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


def test_comparison_rows_pair_the_rounds_as_times_or_rates():
    times = comparison_row("k", "t", ("old", [0.4, 0.9, 0.6]), ("new", [0.2, 0.3, 0.1]), targets={"ratio": (">=", 3)})
    assert (times.unit, times.a.median, times.b.low) == ("ms", 600.0, 100.0)
    # Round by round: 0.4 / 0.2, 0.9 / 0.3, 0.6 / 0.1.
    assert (times.ratio.median, times.ratio.low, times.ratio.high) == pytest.approx((3.0, 2.0, 6.0))
    assert (times.ratio_name, times.met) == ("speed-up", True)
    rates = comparison_row("k", "t", ("a", [2.0]), ("b", [4.0]), "items/s", 8, ratio="time ratio")
    assert (rates.a.median, rates.b.median, rates.ratio.median, rates.met) == (4.0, 2.0, 2.0, None)


def test_a_target_on_an_unknown_figure_is_refused():
    with pytest.raises(ValueError, match="unknown figures"):
        row(speed=(">=", 1.0))


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> tuple[dict, str]:
    output = tmp_path_factory.mktemp("bench") / "results.json"
    assert main([*TINY, "--compile_backend", "eager", "--output", str(output)]) == 0
    return json.loads(output.read_text()), str(output)


@pytest.mark.slow  # the memory and release rows start processes
def test_tiny_benchmark_writes_every_row_with_its_checks(tiny_results):
    results, _ = tiny_results
    assert (results["size"], results["repeats"]) == ("tiny", 1)
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["torch_threads"] == 1
    assert results["device"] == "CPU (1 threads)"
    assert [row["key"] for row in results["rows"]] == ORDER
    for index, record in enumerate(results["rows"], start=1):
        assert f"| {index} | {record['title']} |" in results["table"]
        for figure in ("a", "b", "ratio"):
            values = [record[figure][key] for key in ("median", "low", "high")]
            assert all(math.isfinite(value) and value > 0 for value in values), (record["key"], figure, values)
            assert values[1] <= values[0] <= values[2]
        assert record["met"] in (True, False, None)
        assert record["command"].startswith("python -m benchmarks --size tiny")
        # Checks, not timings: identical generations with and without the cache, the rows the card declares.
        assert record["checks_passed"], record["notes"]


@pytest.mark.slow  # the memory and release rows start processes
def test_rows_note_what_they_count(tiny_results):
    rows = {record["key"]: record for record in tiny_results[0]["rows"]}
    training = " ".join(rows["training-per-response-batched"]["notes"])
    assert "tokens computed per labelled token" in training and "padded batches compute" in training
    assert rows["release-build"]["targets"] == {"a": ["<=", 120.0], "ratio": ["<=", 2048.0]}
    assert "graph break" in " ".join(rows["precision-mfu"]["notes"])  # torch.compile ran, with the eager backend
    assert rows["precision-mfu"]["unit"] == "TFLOP/s"  # no bf16 peak known for a CPU


@pytest.mark.slow  # the memory and release rows start processes
def test_a_partial_run_updates_only_its_rows(tiny_results, tmp_path):
    results, path = tiny_results
    output = tmp_path / "results.json"
    output.write_text(json.dumps(results))
    assert main([*TINY, "--rows", "generation", "--output", str(output), "--update"]) == 0
    updated = json.loads(output.read_text())
    assert [row["key"] for row in updated["rows"]] == ORDER
    before = {row["key"]: row for row in results["rows"]}
    after = {row["key"]: row for row in updated["rows"]}
    assert after["generation-cache"]["command"].endswith("--update")
    assert after["generation-cache"]["date"] >= before["generation-cache"]["date"]
    assert all(after[key] == before[key] for key in ORDER if key != "generation-cache")
    assert f"| {ORDER.index('generation-cache') + 1} | Generation" in updated["table"]


def test_a_partial_run_without_update_writes_its_rows_alone(tmp_path):
    output = tmp_path / "results.json"
    assert main([*TINY, "--rows", "generation", "--output", str(output)]) == 0
    assert [row["key"] for row in json.loads(output.read_text())["rows"]] == ["generation-cache"]


def test_update_refuses_a_file_without_keyed_rows_before_measuring(tmp_path, capsys):
    output = tmp_path / "BENCHMARKS.json"
    output.write_text(json.dumps({"rows": [{"title": "a row of an older format"}]}))
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", "tiny", "--rows", "generation", "--output", str(output), "--update"])
    assert exit_info.value.code == 2
    assert f"--update: {output} is not a results file with keyed rows" in capsys.readouterr().err


def test_model_flops_count_blocks_lm_head_and_attention(model):
    batch = {"labels": torch.tensor([[-100, 5, 6, -100, -100]])}
    config = model.config.text_config
    blocks = per_token_parameters(model)
    assert 0 < blocks < sum(p.numel() for p in model.model.language_model.parameters())
    expected = (
        6 * blocks * 5
        + 6 * 2 * config.vocab_size * config.hidden_size
        + 12 * config.num_hidden_layers * config.hidden_size * (3**2 + 2**2)
    )
    assert model_flops(model, batch, [3, 2]) == expected


def test_tokens_computed_by_each_way_of_generating():
    alone = NEW_TOKENS * 10 + NEW_TOKENS * 20 + 2 * NEW_TOKENS * (NEW_TOKENS - 1) // 2
    assert computed_tokens([10, 20], None) == alone
    assert computed_tokens([10, 20], [[0, 1]]) == 2 * (20 + NEW_TOKENS - 1)
    assert computed_tokens([10, 20], [[0], [1]]) == (10 + NEW_TOKENS - 1) + (20 + NEW_TOKENS - 1)


def test_response_examples_are_the_windows_cut_at_each_answer(processor):
    speakers = ("speaker1", "speaker2")
    long_dialogue = [
        {"speaker": speakers[k % 2], "text": "你好啊今天天气真不错" * 2, "meme": None, "emotion": None}
        for k in range(30)
    ]
    dialogues = [*DIALOGUES, long_dialogue]  # the long one (30 x 24 tokens) takes several windows of 500
    windows = epoch_windows(processor, dialogues)
    examples = iter(response_examples(processor, dialogues, windows))
    assert sum(window.dialogue_index == len(DIALOGUES) for window in windows) > 1
    assert sum(len(window.responses) for window in windows) == sum(len(d) - 1 for d in dialogues)
    speaker_ids = {processor.token_ids[f"[{speaker}]"] for speaker in speakers}
    for window in windows:
        for length in window.response_lengths(speaker_ids):
            example = next(examples)
            # The example is the window up to the end of the answer, with only the answer's text labelled.
            assert example["input_ids"] == window.encoding["input_ids"][:length]
            last_turn = max(i for i, token in enumerate(example["input_ids"]) if token in speaker_ids)
            labelled = [i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX]
            assert labelled and min(labelled) > last_turn


def test_a_dialogue_in_one_window_has_the_natural_per_response_view(processor):
    dialogue = DIALOGUES[0]
    (encoding,) = processor.encode_windows(dialogue, 0)
    (slices,) = response_slices(processor, [encoding])
    assert slices == [(0, k + 1) for k in range(1, len(dialogue))]


def test_token_budget_batches_group_longest_first_within_the_budget():
    lengths = [10, 50, 20, 45, 5, 30]
    batches = token_budget_batches(lengths, budget=100)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert batches[0][0] == 1  # the longest first
    assert all(len(batch) * max(lengths[i] for i in batch) <= 100 for batch in batches)
    assert padded_tokens(lengths, batches) == sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_epoch_counts_add_up(processor):
    windows = epoch_windows(processor, DIALOGUES * 10)
    speakers = {processor.token_ids["[speaker1]"], processor.token_ids["[speaker2]"]}
    counts = count_epoch(windows, speakers, batch_size=4)
    responses = [length for window in windows for length in window.response_lengths(speakers)]
    real = sum(window.length for window in windows)
    labelled = sum(label != IGNORE_INDEX for window in windows for label in window.encoding["labels"])
    assert labelled > 0
    assert counts.per_labelled["per-response, batch size 1"] == pytest.approx(sum(responses) / labelled)
    assert counts.per_labelled["per-response, batched"] >= sum(responses) / labelled
    assert counts.per_labelled["packed windows"] == pytest.approx(real / labelled / (1 - counts.padding))
    assert 0 <= counts.padding < 1
    assert counts.per_labelled["per-response, batch size 1"] > counts.per_labelled["packed windows"]
