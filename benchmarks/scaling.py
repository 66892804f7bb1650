"""Scaling rows: a training epoch and an evaluation of the tiny model at 1/8, 1/4, 1/2 and 1 of a paper-profile
release, to show that their cost grows linearly with the data.

A real epoch of the full release is too slow on a CPU, so each is measured in part and extrapolated: everything on
the data side runs in full (encoding every window, length-grouping, collating every batch; building every test
instance), and the model's work (optimizer steps, generation batches) is timed on batches spread evenly over the
epoch or the test instances, its mean multiplied by their number.
"""

import statistics
import time

import torch
from torch.utils.data import DataLoader

from mod_training.data import DialogueCollator, LengthGroupedBatchSampler, encode_split
from modeling_mod_gpt import MODGPTForMemeDialogue
from processing_mod import MODProcessor

from .evaluation import generate_replies, replies_of_full_length
from .report import Row
from .steps import training_step
from .synthetic import (
    MAX_LENGTH,
    SCALING_SIZE,
    SIZES,
    Workload,
    build_model,
    build_processor,
    paper_release,
    response_instances,
)
from .timing import Stats, timed

FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)
TRAIN_BATCH_SIZE = 8  # train.py's default --per_device_train_batch_size
EVAL_BATCH_SIZE = 16  # evaluate_mod.py's default --batch_size
TEST_SPLITS = ("test_easy", "test_hard")
LINEAR_TOLERANCE = 1.2  # the full size's cost per dialogue at most this many times the eighth's


def spread_over(items, count: int) -> list:
    """`count` items evenly spaced over `items` (all of them when there are fewer)."""
    step = max(1, len(items) // count)
    return list(items[::step][:count])


def epoch_seconds(model: MODGPTForMemeDialogue, processor: MODProcessor, dialogues: list, samples: int) -> float:
    """A training epoch as `train.py` runs it: data side in full, optimizer steps on `samples` batches extrapolated."""
    start = time.perf_counter()
    encodings = encode_split([{"turns": turns} for turns in dialogues], processor, MAX_LENGTH)
    sampler = LengthGroupedBatchSampler(
        [len(encoding["input_ids"]) for encoding in encodings], TRAIN_BATCH_SIZE, seed=0
    )
    collator = DialogueCollator(processor, model.meme_bank.ids, model.meme_bank.features)
    chosen = set(spread_over(range(len(sampler)), samples))
    loader = DataLoader(encodings, batch_sampler=sampler, collate_fn=collator)
    sampled = [batch for index, batch in enumerate(loader) if index in chosen]
    data_seconds = time.perf_counter() - start
    model.train()
    step = training_step(model)
    step(sampled[0])  # warm-up, and the optimizer's state
    steps = [timed(lambda batch=batch: step(batch)) for batch in sampled]
    return data_seconds + statistics.mean(steps) * len(sampler)


@torch.no_grad()
def evaluation_seconds(model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict], samples: int) -> float:
    """Response generation for every test instance, as `evaluate_mod.py` batches it, from `samples` batches."""
    model.eval()
    batches = [rows[start : start + EVAL_BATCH_SIZE] for start in range(0, len(rows), EVAL_BATCH_SIZE)]
    with replies_of_full_length(model):
        seconds = [
            timed(lambda batch=batch: generate_replies(model, processor, batch, EVAL_BATCH_SIZE))
            for batch in spread_over(batches, samples)
        ]
    return statistics.mean(seconds) * len(batches)


def scaling_rows(workload: Workload, repeats: int) -> list[Row]:
    size = SIZES[SCALING_SIZE]
    processor = build_processor(size)
    model = build_model(size, processor)
    fractions = [workload.scaling_fraction * fraction for fraction in FRACTIONS]
    train = {fraction: paper_release(fraction)["train"] for fraction in fractions}
    tests = {fraction: response_instances(fraction, TEST_SPLITS) for fraction in fractions}
    generate_replies(model, processor, tests[fractions[0]][:1], 1)  # warm-up
    epochs: dict[float, list[float]] = {fraction: [] for fraction in fractions}
    evaluations: dict[float, list[float]] = {fraction: [] for fraction in fractions}
    for _ in range(repeats):
        for fraction in fractions:
            epochs[fraction].append(epoch_seconds(model, processor, train[fraction], workload.scaling_samples))
            evaluations[fraction].append(
                evaluation_seconds(model, processor, tests[fraction], workload.scaling_samples)
            )
    counts = {
        "training": {fraction: len(train[fraction]) for fraction in fractions},
        "evaluation": {fraction: len(tests[fraction]) for fraction in fractions},
    }
    return [
        scaling_row(
            "scaling-training",
            f"Scaling: a training epoch of the tiny model (batches of {TRAIN_BATCH_SIZE}), 1/8 vs all of "
            f"{counts['training'][fractions[-1]]:,} train dialogues",
            "dialogues",
            epochs,
            counts["training"],
            f"the data side (encoding, length grouping, collation) run in full, the optimizer steps timed on "
            f"{workload.scaling_samples} batches spread over the epoch and extrapolated",
        ),
        scaling_row(
            "scaling-evaluation",
            f"Scaling: generating the test responses (tiny model, batches of {EVAL_BATCH_SIZE}), 1/8 vs all of "
            f"{counts['evaluation'][fractions[-1]]:,} instances",
            "instances",
            evaluations,
            counts["evaluation"],
            f"evaluate_mod.generate_replies timed on {workload.scaling_samples} batches spread over the instances, "
            "extrapolated to all",
        ),
    ]


def scaling_row(key: str, title: str, items: str, seconds: dict, counts: dict, method: str) -> Row:
    fractions = list(seconds)
    smallest, full = fractions[0], fractions[-1]
    per_item = {fraction: [value / counts[fraction] for value in values] for fraction, values in seconds.items()}
    growth = Stats.of_ratios(per_item[full], per_item[smallest])
    points = ", ".join(
        f"{fraction / full:g}: {Stats.of(values).median:,.1f} s ({1000 * Stats.of(per_item[fraction]).median:.2f} ms "
        f"per {items[:-1]})"
        for fraction, values in seconds.items()
    )
    return Row(
        key=key,
        title=title,
        unit="s",
        a_name="1/8 size",
        a=Stats.of(seconds[smallest]),
        b_name="full size",
        b=Stats.of(seconds[full]),
        ratio_name="cost per item, full / 1/8",
        ratio=growth,
        targets={"ratio": ("<=", LINEAR_TOLERANCE)},
        notes=[f"{method}; by size: {points}"],
    )
