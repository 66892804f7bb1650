"""Training rows: packed vs per-response training, MOD-GPT vs plain GPT-2, and the data pipeline's share."""

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from modeling_mod_gpt import IGNORE_INDEX, MODGPTForMemeDialogue
from processing_mod import MODProcessor
from train import DialogueCollator

from .report import Row
from .steps import Batch, model_inputs, training_step
from .timing import Stats, interleaved

LOSS_TOLERANCE = 1e-3
PLAIN_GPT2_INPUTS = ("input_ids", "attention_mask", "labels")


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
def text_loss_gap(model: MODGPTForMemeDialogue, packed: Batch, responses: list[Batch]) -> tuple[float, float, float]:
    """Summed per-response text loss, the sum of the packed loss's per-turn parts, and the largest per-turn gap."""
    model.eval()
    per_response = torch.stack([model(**batch).lm_loss for batch in responses])
    packed_parts = torch.stack(per_turn_text_losses(model, packed))
    model.train()
    if per_response.shape != packed_parts.shape:
        raise ValueError(f"{len(per_response)} responses but {len(packed_parts)} labelled turns in the packed batch.")
    gap = (per_response - packed_parts).abs().max().item()
    return per_response.sum().item(), packed_parts.sum().item(), gap


def packed_vs_per_response(
    model: MODGPTForMemeDialogue, processor: MODProcessor, dialogues: list[list[dict]], repeats: int
) -> Row:
    """Row 1: the baseline's batch-size-1 step per response (history re-encoded each time) vs one packed step."""
    packed = model_inputs(model, processor(dialogues))
    responses = [
        model_inputs(model, processor(dialogue[: index + 1], label_turns="last"))
        for dialogue in dialogues
        for index in range(1, len(dialogue))
    ]
    summed, packed_sum, gap = text_loss_gap(model, packed, responses)
    step = training_step(model)

    def per_response() -> None:
        for batch in responses:
            step(batch)

    times = interleaved({"per-response": per_response, "packed": lambda: step(packed)}, repeats)
    count = len(responses)
    return Row(
        title=f"Training: packed dialogues vs one step per response ({len(dialogues)} dialogues, {count} responses)",
        unit="responses/s",
        a_name="per-response",
        a=Stats.of([count / seconds for seconds in times["per-response"]]),
        b_name="packed",
        b=Stats.of([count / seconds for seconds in times["packed"]]),
        ratio_name="speed-up",
        ratio=Stats.of_ratios(times["per-response"], times["packed"]),
        target=(">=", 4.0),
        checks_passed=gap <= LOSS_TOLERANCE,
        notes=[
            f"text loss summed over the {count} responses (eval mode): per-response {summed:.4f}, "
            f"packed per-turn parts {packed_sum:.4f}, largest per-turn gap {gap:.1e} "
            f"({'within' if gap <= LOSS_TOLERANCE else 'OVER'} tolerance {LOSS_TOLERANCE:g})"
        ],
    )


def mod_vs_plain_gpt2(model: MODGPTForMemeDialogue, batch: Batch, repeats: int) -> Row:
    """Row 2: a MOD-GPT step (memes, segments, heads) vs a plain GPT-2 LM step of the same decoder, same tokens."""
    plain = GPT2LMHeadModel(copy.deepcopy(model.config.text_config)).train()
    plain_batch = {key: batch[key] for key in PLAIN_GPT2_INPUTS}
    model.train()
    mod_step, plain_step = training_step(model), training_step(plain)
    times = interleaved({"gpt2": lambda: plain_step(plain_batch), "mod": lambda: mod_step(batch)}, repeats)
    rows, length = batch["input_ids"].shape
    return Row(
        title=f"Training step: MOD-GPT vs GPT2LMHeadModel, same decoder and tokens ({rows} x {length})",
        unit="ms",
        a_name="GPT2LMHeadModel",
        a=Stats.of(times["gpt2"]).scaled(1000),
        b_name="MOD-GPT",
        b=Stats.of(times["mod"]).scaled(1000),
        ratio_name="time ratio",
        ratio=Stats.of_ratios(times["mod"], times["gpt2"]),
        target=("<=", 1.10),
        notes=[f"{int(batch['meme_features'].shape[0])} memes in the batch; AdamW step and clipping on both sides"],
    )


@contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def data_pipeline(
    model: MODGPTForMemeDialogue, processor: MODProcessor, dialogues: list[list[dict]], repeats: int
) -> Row:
    """Row 5: `train.py`'s encoding and collation of a batch on one thread vs a training step on that batch."""
    collator = DialogueCollator(processor, model.meme_bank_ids, model.meme_bank_features)

    def pipeline() -> Batch:
        with one_thread():
            return collator([processor.encode_dialogue(dialogue, index) for index, dialogue in enumerate(dialogues)])

    batch = pipeline()
    model.train()
    step = training_step(model)
    times = interleaved({"step": lambda: step(batch), "pipeline": pipeline}, repeats)
    rate = len(dialogues) / Stats.of(times["pipeline"]).median
    return Row(
        title=f"Data pipeline: encoding + collation on one thread vs a training step ({len(dialogues)} dialogues)",
        unit="ms",
        a_name="training step",
        a=Stats.of(times["step"]).scaled(1000),
        b_name="pipeline",
        b=Stats.of(times["pipeline"]).scaled(1000),
        ratio_name="fraction",
        ratio=Stats.of_ratios(times["pipeline"], times["step"]),
        target=("<=", 0.05),
        notes=[f"{rate:,.0f} dialogues/s encoded and collated on one core"],
    )
