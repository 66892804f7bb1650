"""Training rows: packed windows against per-response training (one step per response, or padded in length-grouped
batches), MOD-GPT against plain GPT-2; and `train.py`'s optimizer step, which every training row times."""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import GPT2LMHeadModel, PreTrainedModel

from mod_training.data import DialogueCollator
from modeling_mod_gpt import MODGPTForMemeDialogue
from processing_mod import MODProcessor

from . import epoch as epochs
from .report import Row, comparison_row
from .synthetic import Size, Workload, paper_release
from .timing import interleaved

LEARNING_RATE = 5e-5  # the paper's
MAX_GRAD_NORM = 1.0
PLAIN_GPT2_INPUTS = ("input_ids", "attention_mask", "labels")
SIDES = ("per-response, batch size 1", "per-response, batched", "packed windows")

Batch = dict[str, torch.Tensor]


def training_step(model: PreTrainedModel) -> Callable[[Batch], None]:
    """One AdamW step of `train.py`'s kind on a batch: forward, backward, gradient clipping, update."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE)

    def step(batch: Batch) -> None:
        model(**batch, use_cache=False, logits_to_keep=None).loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad()

    return step


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device) for key, value in batch.items()}


def collator(model: MODGPTForMemeDialogue, processor: MODProcessor) -> Callable[[list[epochs.Encoding]], Batch]:
    """`train.py`'s collation (on the CPU, as its data loader collates), the batch then moved to the model's device."""
    collate = DialogueCollator(processor, model.meme_bank.ids, model.meme_bank.features.cpu())
    return lambda encodings: to_device(collate(encodings), model.device)


@dataclass
class TrainingWork:
    """A paper-profile epoch's windows and counts, and the responses of sampled batches collated each way of learning
    them (`SIDES`): one example per response, examples in length-grouped batches, and `train.py`'s packed windows."""

    dialogues: int
    epoch: list[epochs.Window]
    batches: list[list[epochs.Window]]  # the sampled `train.py` batches
    sides: dict[str, list[Batch]]
    counts: epochs.EpochCounts

    @property
    def packed(self) -> list[Batch]:
        return self.sides["packed windows"]

    def batch_tokens(self, side: str) -> int:
        return sum(batch["input_ids"].numel() for batch in self.sides[side])


def prepare(model: MODGPTForMemeDialogue, processor: MODProcessor, size: Size, workload: Workload) -> TrainingWork:
    """The sampled batches, and the per-response examples of their responses, at the epoch's batch size in tokens."""
    dialogues = paper_release(workload.epoch_fraction)["train"]
    epoch = epochs.epoch_windows(processor, dialogues)
    speakers = {processor.token_ids["[speaker1]"], processor.token_ids["[speaker2]"]}
    counts = epochs.count_epoch(epoch, speakers, size.batch_size)
    sampled = epochs.sample_batches(epoch, size.batch_size, workload.training_batches)
    examples = epochs.response_examples(processor, dialogues, [window for batch in sampled for window in batch])
    grouped = epochs.token_budget_batches([len(example["input_ids"]) for example in examples], counts.batch_tokens)
    collate = collator(model, processor)
    sides = [
        [collate([example]) for example in examples],
        [collate([examples[i] for i in batch]) for batch in grouped],
        [collate([window.encoding for window in batch]) for batch in sampled],
    ]
    return TrainingWork(len(dialogues), epoch, sampled, dict(zip(SIDES, sides)), counts)


def training_rows(model: MODGPTForMemeDialogue, work: TrainingWork, repeats: int) -> list[Row]:
    """The three ways of learning the same responses, timed in turn; two rows compare packed windows with the others."""
    model.train()
    step = training_step(model)
    for batches in work.sides.values():  # warm-up: one step of each way
        step(batches[0])

    def run(batches: list[Batch]) -> None:
        for batch in batches:
            step(batch)

    times = interleaved({side: lambda b=batches: run(b) for side, batches in work.sides.items()}, repeats, warmup=0)
    count, counts = len(work.sides[SIDES[0]]), work.counts
    per_labelled = counts.per_labelled
    windows = sum(len(batch) for batch in work.batches)

    def side_row(key: str, title: str, baseline: str, target: float) -> Row:
        fewer = per_labelled[baseline] / per_labelled["packed windows"]
        notes = [
            f"{len(work.packed)} of `train.py`'s batches of {windows} windows in all, taken from an epoch of "
            f"{work.dialogues:,} paper-profile dialogues: {count} responses; {len(work.sides[baseline])} "
            f"{baseline} step(s) of {work.batch_tokens(baseline):,} tokens in all against {len(work.packed)} packed "
            f"step(s) of {work.batch_tokens('packed windows'):,}",
            f"over the whole epoch, tokens computed per labelled token: {baseline} {per_labelled[baseline]:.2f}, "
            f"packed windows {per_labelled['packed windows']:.2f} ({fewer:.2f}x fewer); padding is "
            f"{100 * counts.padding:.1f}% of what `train.py`'s padded batches compute (batches of "
            f"{counts.batch_tokens:,} tokens on average)",
        ]
        sides = (baseline, times[baseline]), ("packed windows", times["packed windows"])
        return comparison_row(key, title, *sides, "responses/s", count, targets={"ratio": (">=", target)}, notes=notes)

    return [
        side_row(
            "training-per-response-bs1",
            "Training: packed windows vs one step per response (batch size 1, the official baseline's way)",
            "per-response, batch size 1",
            4.0,
        ),
        side_row(
            "training-per-response-batched",
            "Training: packed windows vs per-response examples padded in length-grouped batches of the same tokens",
            "per-response, batched",
            5.0,
        ),
    ]


def mod_vs_plain_gpt2(model: MODGPTForMemeDialogue, batch: Batch, repeats: int) -> Row:
    """A MOD-GPT step (memes, segments, heads) vs a plain GPT-2 LM step of the same decoder, same tokens."""
    plain = GPT2LMHeadModel(copy.deepcopy(model.config.text_config)).to(model.device).train()
    plain_batch = {key: batch[key] for key in PLAIN_GPT2_INPUTS}
    model.train()
    mod_step, plain_step = training_step(model), training_step(plain)
    times = interleaved({"gpt2": lambda: plain_step(plain_batch), "mod": lambda: mod_step(batch)}, repeats)
    rows, length = batch["input_ids"].shape
    memes = 0 if batch.get("meme_features") is None else int(batch["meme_features"].shape[0])
    return comparison_row(
        "mod-vs-gpt2",
        f"Training step: MOD-GPT vs GPT2LMHeadModel, same decoder and tokens ({rows} x {length})",
        ("GPT2LMHeadModel", times["gpt2"]),
        ("MOD-GPT", times["mod"]),
        ratio="time ratio",
        targets={"ratio": ("<=", 1.10)},
        notes=[f"{memes} memes in the batch; AdamW step and clipping on both sides"],
    )
