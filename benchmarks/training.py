"""Training rows on paper-profile dialogues: packed windows against per-response training (one step per response,
and batched with padding and length grouping), padding-free rows, MOD-GPT against plain GPT-2, and the data
pipeline's share."""

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from mod_training.data import DialogueCollator
from modeling_mod_gpt import IGNORE_INDEX, MODGPTForMemeDialogue
from processing_mod import MODProcessor

from .epoch import (
    EpochCounts,
    Window,
    count_epoch,
    epoch_windows,
    response_examples,
    sample_batches,
    token_budget_batches,
)
from .packing import PackedCollator, pack_windows
from .report import Row
from .steps import Batch, training_step
from .synthetic import MAX_LENGTH, Size, Workload, paper_release
from .timing import Stats, interleaved

LOSS_TOLERANCE = 1e-3
PLAIN_GPT2_INPUTS = ("input_ids", "attention_mask", "labels")
LOSS_PARTS = ("lm_loss", "usage_loss", "meme_loss", "emotion_loss")
SIDES = ("per-response, batch size 1", "per-response, batched", "packed windows", "padding-free rows")


@dataclass
class TrainingWork:
    """Sampled batches of a paper-profile epoch, collated every way the training rows compare, and the epoch's counts."""

    dialogues: list[list[dict]]  # the epoch's
    batches: list[list[Window]]  # the sampled `train.py` batches
    responses: list[Batch]  # one per response, in window order
    response_batches: list[Batch]
    packed: list[Batch]  # `train.py`'s batches
    padding_free: list[Batch]  # the same windows, batch for batch, packed into rows
    counts: EpochCounts

    @property
    def windows(self) -> list[Window]:
        return [window for batch in self.batches for window in batch]

    @property
    def sides(self) -> dict[str, list[Batch]]:
        return dict(zip(SIDES, (self.responses, self.response_batches, self.packed, self.padding_free)))

    def batch_tokens(self, side: str) -> int:
        return sum(batch["input_ids"].numel() for batch in self.sides[side])


def prepare(model: MODGPTForMemeDialogue, processor: MODProcessor, size: Size, workload: Workload) -> TrainingWork:
    """The sampled batches, and the per-response examples of their responses, at the epoch's batch size in tokens."""
    dialogues = paper_release(workload.epoch_fraction)["train"]
    every_window = epoch_windows(processor, dialogues)
    speakers = {processor.token_ids["[speaker1]"], processor.token_ids["[speaker2]"]}
    counts = count_epoch(every_window, speakers, size.batch_size)
    sampled = sample_batches(every_window, size.batch_size, workload.training_batches)
    collator = DialogueCollator(processor, model.meme_bank.ids, model.meme_bank.features)
    packer = PackedCollator(processor, model.meme_bank.ids, model.meme_bank.features)
    examples = response_examples(processor, dialogues, [window for batch in sampled for window in batch])
    lengths = [len(example["input_ids"]) for example in examples]
    return TrainingWork(
        dialogues=dialogues,
        batches=sampled,
        responses=[collator([example]) for example in examples],
        response_batches=[
            collator([examples[i] for i in batch]) for batch in token_budget_batches(lengths, counts.batch_tokens)
        ],
        packed=[collator([window.encoding for window in batch]) for batch in sampled],
        padding_free=[packer(pack_windows([window.encoding for window in batch], MAX_LENGTH)) for batch in sampled],
        counts=counts,
    )


def per_turn_text_losses(model: MODGPTForMemeDialogue, packed: Batch) -> list[torch.Tensor]:
    """Mean text loss of each labelled turn of a packed batch, dialogue by dialogue, in turn order."""
    inputs = {key: value for key, value in packed.items() if key != "labels"}
    logits = model(**inputs).logits[:, :-1]
    targets = packed["labels"][:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    speakers = torch.tensor([model.config.speaker1_token_id, model.config.speaker2_token_id])
    turns = torch.isin(packed["input_ids"], speakers).cumsum(-1)[:, 1:]
    parts = []
    for row_losses, row_turns, row_targets in zip(losses, turns, targets):
        labelled = row_targets != IGNORE_INDEX
        for turn in row_turns[labelled].unique().tolist():
            parts.append(row_losses[labelled & (row_turns == turn)].mean())
    return parts


@torch.no_grad()
def text_loss_gap(model: MODGPTForMemeDialogue, work: TrainingWork) -> tuple[float, float, float]:
    """Summed per-response text loss, the sum of the packed batches' per-turn parts, and the largest per-turn gap."""
    model.eval()
    per_response = torch.stack([model(**batch, logits_to_keep=None).lm_loss for batch in work.responses])
    packed_parts = torch.stack([part for batch in work.packed for part in per_turn_text_losses(model, batch)])
    model.train()
    if per_response.shape != packed_parts.shape:
        raise ValueError(
            f"{len(per_response)} responses but {len(packed_parts)} labelled turns in the packed batches."
        )
    gap = (per_response - packed_parts).abs().max().item()
    return per_response.sum().item(), packed_parts.sum().item(), gap


@torch.no_grad()
def packing_loss_gap(model: MODGPTForMemeDialogue, work: TrainingWork) -> float:
    """The largest gap between a padded batch's loss parts and those of the same windows in padding-free rows."""
    model.eval()
    gaps = []
    for padded, packed in zip(work.packed, work.padding_free):
        padded_outputs, packed_outputs = model(**padded), model(**packed, use_cache=False)
        gaps += [(padded_outputs[part] - packed_outputs[part]).abs().item() for part in LOSS_PARTS]
    model.train()
    return max(gaps)


def training_rows(model: MODGPTForMemeDialogue, work: TrainingWork, repeats: int) -> list[Row]:
    """The four ways of learning the same responses, timed in turn; three rows compare them."""
    summed, packed_sum, gap = text_loss_gap(model, work)
    packing_gap = packing_loss_gap(model, work)
    model.train()
    step = training_step(model)
    for batches in work.sides.values():  # warm-up: one step of each way
        step(batches[0])

    def run(batches: list[Batch]) -> None:
        for batch in batches:
            step(batch)

    times = interleaved({side: lambda b=batches: run(b) for side, batches in work.sides.items()}, repeats, warmup=0)
    count = len(work.responses)
    rates = {side: Stats.of([count / seconds for seconds in values]) for side, values in times.items()}
    loss_note = (
        f"text loss summed over the {count} responses (eval mode): per-response {summed:.4f}, packed per-turn parts "
        f"{packed_sum:.4f}, largest per-turn gap {gap:.1e} "
        f"({'within' if gap <= LOSS_TOLERANCE else 'OVER'} tolerance {LOSS_TOLERANCE:g})"
    )
    counts = work.counts
    shape = (
        f"{len(work.packed)} of `train.py`'s batches of {len(work.windows)} windows in all, taken from an epoch of "
        f"{len(work.dialogues):,} paper-profile dialogues"
    )

    def side_row(key: str, title: str, baseline: str, target: float) -> Row:
        return Row(
            key=key,
            title=title,
            unit="responses/s",
            a_name=baseline,
            a=rates[baseline],
            b_name="packed windows",
            b=rates["packed windows"],
            ratio_name="speed-up",
            ratio=Stats.of_ratios(times[baseline], times["packed windows"]),
            targets={"ratio": (">=", target)},
            checks_passed=gap <= LOSS_TOLERANCE,
            notes=[
                f"{shape}: {count} responses; {len(work.sides[baseline])} {baseline} step(s) of "
                f"{work.batch_tokens(baseline):,} tokens in all against {len(work.packed)} packed step(s) of "
                f"{work.batch_tokens('packed windows'):,}",
                f"over the whole epoch, tokens computed per labelled token: {baseline} "
                f"{counts.per_labelled(baseline):.2f}, packed windows {counts.per_labelled('packed windows'):.2f} "
                f"(so {counts.computed[baseline] / counts.computed['packed windows']:.2f}x the tokens)",
                loss_note,
            ],
        )

    padding_row = Row(
        key="training-padding",
        title="Padding over a training epoch: train.py's padded batches vs padding-free rows (tokens computed per "
        "labelled token)",
        unit="tokens/labelled",
        a_name="padded windows",
        a=Stats.of([counts.per_labelled("packed windows")]),
        b_name="padding-free rows",
        b=Stats.of([counts.per_labelled("padding-free rows")]),
        ratio_name="padding share of A",
        ratio=Stats.of([counts.padded_padding]),
        targets={"ratio": ("<=", 0.05)},
        checks_passed=packing_gap <= LOSS_TOLERANCE,
        notes=[
            f"epoch of {len(work.dialogues):,} dialogues, batches of {counts.batch_tokens:,} tokens on average: "
            f"padding is {100 * counts.padded_padding:.1f}% of what the padded batches compute, "
            f"{100 * counts.padding_free_padding:.1f}% for rows packed up to {MAX_LENGTH} tokens",
            f"timed on the sampled batches: padded {spread_rate(rates['packed windows'])}, padding-free "
            f"{spread_rate(rates['padding-free rows'])} responses/s, speed-up "
            f"{Stats.of_ratios(times['packed windows'], times['padding-free rows']).median:.2f}",
            f"loss parts of the same windows padded and packed into rows (eval mode): largest gap {packing_gap:.1e} "
            f"({'within' if packing_gap <= LOSS_TOLERANCE else 'OVER'} tolerance {LOSS_TOLERANCE:g})",
        ],
    )
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
        padding_row,
    ]


def spread_rate(stats: Stats) -> str:
    return f"{stats.median:.3g} [{stats.low:.3g}–{stats.high:.3g}]"


def mod_vs_plain_gpt2(model: MODGPTForMemeDialogue, batch: Batch, repeats: int) -> Row:
    """A MOD-GPT step (memes, segments, heads) vs a plain GPT-2 LM step of the same decoder, same tokens."""
    plain = GPT2LMHeadModel(copy.deepcopy(model.config.text_config)).train()
    plain_batch = {key: batch[key] for key in PLAIN_GPT2_INPUTS}
    model.train()
    mod_step, plain_step = training_step(model), training_step(plain)
    times = interleaved({"gpt2": lambda: plain_step(plain_batch), "mod": lambda: mod_step(batch)}, repeats)
    rows, length = batch["input_ids"].shape
    memes = 0 if batch.get("meme_features") is None else int(batch["meme_features"].shape[0])
    return Row(
        key="mod-vs-gpt2",
        title=f"Training step: MOD-GPT vs GPT2LMHeadModel, same decoder and tokens ({rows} x {length})",
        unit="ms",
        a_name="GPT2LMHeadModel",
        a=Stats.of(times["gpt2"]).scaled(1000),
        b_name="MOD-GPT",
        b=Stats.of(times["mod"]).scaled(1000),
        ratio_name="time ratio",
        ratio=Stats.of_ratios(times["mod"], times["gpt2"]),
        targets={"ratio": ("<=", 1.10)},
        notes=[f"{memes} memes in the batch; AdamW step and clipping on both sides"],
    )


@contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def data_pipeline(model: MODGPTForMemeDialogue, processor: MODProcessor, work: TrainingWork, repeats: int) -> Row:
    """`train.py`'s encoding (into windows) and collation of a batch's dialogues on one thread vs a training step."""
    collator = DialogueCollator(processor, model.meme_bank.ids, model.meme_bank.features)
    indices = sorted({window.dialogue_index for window in work.batches[0]})

    def pipeline() -> Batch:
        with one_thread():
            dialogues = [(index, work.dialogues[index]) for index in indices]
            return collator(
                [window for index, dialogue in dialogues for window in processor.encode_windows(dialogue, index)]
            )

    batch = pipeline()
    model.train()
    step = training_step(model)
    times = interleaved({"step": lambda: step(batch), "pipeline": pipeline}, repeats)
    rate = len(indices) / Stats.of(times["pipeline"]).median
    return Row(
        key="data-pipeline",
        title=f"Data pipeline: encoding + collation on one thread vs a training step ({len(indices)} dialogues)",
        unit="ms",
        a_name="training step",
        a=Stats.of(times["step"]).scaled(1000),
        b_name="pipeline",
        b=Stats.of(times["pipeline"]).scaled(1000),
        ratio_name="fraction",
        ratio=Stats.of_ratios(times["pipeline"], times["step"]),
        targets={"ratio": ("<=", 0.05)},
        notes=[f"{rate:,.0f} dialogues/s encoded into windows and collated on one core"],
    )
