"""Padding-free batches: training windows packed into rows of up to a token budget, each window its own sequence.

A row holds several windows one after the other; position ids restart at 0 for each, and there is no attention
mask, from which the GPT-2 decoder of transformers 5 builds a block-diagonal causal mask: each token attends only
to its own window (`find_packed_sequence_indices`; the model must then run without a KV cache). The rows of a batch
are padded to the longest, the padding being one more sequence that no label reads.
"""

import bisect

import torch

from mod_training.data import DialogueCollator
from processing_mod import MODProcessor, join_turns

Encoding = dict[str, list]


def pack_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """
    Indices of `lengths` grouped into rows whose lengths add up to at most `budget`, best fit decreasing: the longest
    item first, each into the open row it fills best. Rows come out fullest first; each index appears once.
    """
    too_long = [index for index, length in enumerate(lengths) if length > budget]
    if too_long:
        raise ValueError(f"Items {too_long[:5]} are longer than the row budget of {budget} tokens.")
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (room left, row) of the open rows, sorted
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = bisect.bisect_left(room, (lengths[index], -1))
        if slot == len(room):
            rows.append([index])
            left, row = budget - lengths[index], len(rows) - 1
        else:
            left, row = room.pop(slot)
            rows[row].append(index)
            left -= lengths[index]
        bisect.insort(room, (left, row))
    return sorted(rows, key=lambda row: -sum(lengths[i] for i in row))


def position_ids(row_lengths: list[list[int]], width: int) -> torch.LongTensor:
    """Positions restarting at 0 for each window of each row, and for the padding that fills a row to `width`."""
    rows = []
    for lengths in row_lengths:
        segments = [*lengths, width - sum(lengths)]
        rows.append(torch.cat([torch.arange(length) for length in segments]))
    return torch.stack(rows)


class PackedCollator:
    """
    Collates rows of windows (each row a list of encodings, as `pack_rows` groups them) into a padding-free batch:
    `train.py`'s `DialogueCollator` on each row's windows joined, with `position_ids` in place of `attention_mask`.
    """

    def __init__(self, processor: MODProcessor, meme_ids: list[str], meme_features: torch.Tensor):
        self.collator = DialogueCollator(processor, meme_ids, meme_features)

    def __call__(self, rows: list[list[Encoding]]) -> dict[str, torch.Tensor]:
        batch = self.collator([join_turns(row) for row in rows])
        width = batch.pop("attention_mask").shape[1]
        batch["position_ids"] = position_ids([[len(window["input_ids"]) for window in row] for row in rows], width)
        return batch


def pack_windows(windows: list[Encoding], budget: int) -> list[list[Encoding]]:
    """The windows packed into rows of at most `budget` tokens (`pack_rows`), fullest row first."""
    return [[windows[i] for i in row] for row in pack_rows([len(w["input_ids"]) for w in windows], budget)]
