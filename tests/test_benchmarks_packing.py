"""Padding-free rows and the epoch's ways of batching: rows within the budget, positions restarting per window, the
same losses as padded batches, per-response examples that are the windows cut at each answer, and the counts."""

import random

import pytest
import torch
from conftest import DIALOGUES

from benchmarks.epoch import (
    count_epoch,
    epoch_windows,
    padded_tokens,
    response_examples,
    response_slices,
    token_budget_batches,
)
from benchmarks.packing import PackedCollator, pack_rows, pack_windows, position_ids
from benchmarks.training import LOSS_PARTS
from mod_training.data import DialogueCollator
from modeling_mod_gpt import IGNORE_INDEX


@pytest.mark.parametrize("seed", range(5))
def test_pack_rows_places_every_item_once_within_the_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 100) for _ in range(rng.randint(1, 60))]
    rows = pack_rows(lengths, 100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    # Best fit decreasing needs at most 11/9 of the optimum (+ 1); the sum bounds the optimum from below.
    assert len(rows) <= 11 / 9 * -(-sum(lengths) // 100) + 1


def test_pack_rows_fills_rows_that_fit_exactly():
    assert sorted(map(sorted, pack_rows([60, 40, 70, 30, 50, 50], 100))) == [[0, 1], [2, 3], [4, 5]]


def test_pack_rows_names_an_item_longer_than_the_budget():
    with pytest.raises(ValueError, match=r"Items \[1\] are longer than the row budget of 10"):
        pack_rows([5, 11, 3], 10)


def test_positions_restart_for_each_window_and_for_the_padding():
    positions = position_ids([[3, 2], [4]], 6)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]


@pytest.fixture()
def windows(processor):
    return [window for index, dialogue in enumerate(DIALOGUES) for window in processor.encode_windows(dialogue, index)]


def test_padding_free_rows_give_the_padded_batch_losses(processor, model, windows):
    bank = (model.meme_bank.ids, model.meme_bank.features)
    padded = DialogueCollator(processor, *bank)(windows)
    packed = PackedCollator(processor, *bank)(pack_windows(windows, budget=64))
    assert "attention_mask" not in packed
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # fewer tokens computed
    model.eval()
    with torch.no_grad():
        expected, outputs = model(**padded), model(**packed, use_cache=False)
        # The same rows with positions running on through each row: attention then crosses windows.
        leaking = model(
            **{**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])},
            use_cache=False,
        )
    for part in LOSS_PARTS:
        torch.testing.assert_close(outputs[part], expected[part], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(leaking.lm_loss, expected.lm_loss, rtol=1e-5, atol=1e-6)


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
    assert counts.computed["per-response, batch size 1"] == sum(responses)
    assert counts.computed["per-response, batched"] >= sum(responses)
    assert counts.computed["packed windows"] >= real and counts.computed["padding-free rows"] >= real
    assert counts.labelled == sum(window.labelled_tokens for window in windows) > 0
    assert counts.padded_padding == pytest.approx(1 - real / counts.computed["packed windows"])
    assert counts.per_labelled("per-response, batch size 1") > counts.per_labelled("packed windows")
