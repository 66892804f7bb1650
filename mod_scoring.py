"""
How MOD-GPT's outputs are scored against the labels of the dialogues it ran on, shared by the validation of
`train.py` and the paper's evaluation in `evaluate_mod.py`: the response text's negative log-likelihood, the usage
decision at each `[TAG]`, and (validation only) R10@1 of each attached meme against random memes of the bank.
"""

import math

import torch
import torch.nn.functional as F

from configuration_mod_gpt import IGNORE_INDEX
from modeling_mod_gpt import attached_meme_features

# What `validation_sums` adds up per example, in its column order.
VALIDATION_SUMS = ("nll", "tokens", "usage_correct", "usage_labelled", "retrieval_hits", "memes")


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed negative log-likelihood of the labelled next tokens, and how many there are."""
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(-1), (targets != IGNORE_INDEX).sum(-1)


def usage_decisions(
    input_ids: torch.Tensor, usage_labels: torch.Tensor, usage_logits: torch.Tensor, tag_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The usage decision at every labelled `[TAG]` (`usage_logits` has one row per `[TAG]`, in reading order): its
    row in the batch, the decision predicted and the labelled one.
    """
    is_tag = input_ids == tag_token_id
    labels = usage_labels[is_tag]
    labelled = labels != IGNORE_INDEX
    return is_tag.nonzero()[labelled, 0], usage_logits.argmax(-1)[labelled], labels[labelled]


def validation_sums(model, outputs, batch: dict[str, torch.Tensor], negatives: torch.Tensor) -> torch.Tensor:
    """
    Per example (row) of a validation batch whose `outputs` the model gave for `batch`, the `VALIDATION_SUMS` as a
    `(rows, 6)` float64 tensor. `negatives` holds the 9 bank rows that each of the example's memes ranks against,
    `(rows, memes, 9)`.
    """
    labels = batch["labels"]
    nll, tokens = response_nll(outputs.logits, labels)
    usage_row, predicted, labelled = usage_decisions(
        batch["input_ids"], batch["usage_labels"], outputs.usage_logits, model.config.tag_token_id
    )
    is_tag = batch["input_ids"] == model.config.tag_token_id
    uses_meme = batch["usage_labels"][is_tag] == 1
    meme_row = is_tag.nonzero()[:, 0][uses_meme]
    meme_order = torch.arange(len(meme_row), device=meme_row.device) - torch.searchsorted(meme_row, meme_row)
    hits = retrieval_hits(model, outputs, batch, uses_meme, negatives.to(meme_row.device)[meme_row, meme_order])

    def per_row(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(labels), dtype=torch.float64, device=labels.device).index_add_(0, rows, values.double())

    return torch.stack(
        [
            nll.double(),
            tokens.double(),
            per_row(predicted == labelled, usage_row),
            per_row(torch.ones_like(usage_row), usage_row),
            per_row(hits, meme_row),
            per_row(torch.ones_like(meme_row), meme_row),
        ],
        dim=1,
    )


def retrieval_hits(model, outputs, batch, uses_meme: torch.Tensor, negative_rows: torch.Tensor) -> torch.Tensor:
    """For each meme-using `[TAG]`: whether its gold meme ranks before its 9 negatives (rows of the meme bank)."""
    if not uses_meme.any():
        return uses_meme.new_zeros(0)
    features = (
        batch["meme_features"] if "meme_features" in batch else model.model.get_meme_features(batch["pixel_values"])
    )
    gold = attached_meme_features(model.config, batch["input_ids"], features, uses_meme)
    predictions = outputs.meme_predictions[uses_meme]
    negatives = model.meme_bank.features[negative_rows]
    is_gold = (negatives == gold.unsqueeze(1)).all(-1)
    gold_distance = model.meme_bank.distances(predictions, gold.unsqueeze(1)).squeeze(1)
    negative_distance = model.meme_bank.distances(predictions, negatives).masked_fill(is_gold, float("inf"))
    return gold_distance < negative_distance.min(-1).values


def validation_metrics(totals: torch.Tensor) -> dict[str, float]:
    """Loss and perplexity of the response text, usage accuracy and R10@1, from `validation_sums` over all examples."""
    sums = dict(zip(VALIDATION_SUMS, totals.tolist()))
    loss = sums["nll"] / max(sums["tokens"], 1)
    return {
        "eval_loss": loss,
        "eval_perplexity": math.exp(min(loss, 50)),
        "eval_usage_accuracy": sums["usage_correct"] / max(sums["usage_labelled"], 1),
        "eval_r10@1": sums["retrieval_hits"] / max(sums["memes"], 1),
    }
