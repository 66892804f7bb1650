"""mod_scoring: what training's validation adds up per example, checked against the model's own losses and a
brute-force ranking; evaluate_mod.py scores usage and perplexity with the same functions."""

import math

import torch
from conftest import DIALOGUES

from mod_scoring import VALIDATION_SUMS, response_nll, usage_decisions, validation_metrics, validation_sums
from processing_mod import IGNORE_INDEX


def validation_batch(model, processor) -> dict[str, torch.Tensor]:
    """The dialogues as training's collator gives them: padded, with the features of their memes."""
    batch = dict(processor(DIALOGUES, label_turns="all"))
    batch["meme_features"] = model.meme_bank.lookup(batch.pop("meme_ids"))
    return batch


def forward_without_labels(model, batch: dict[str, torch.Tensor]):
    return model(**{key: value for key, value in batch.items() if key != "labels"})


def test_the_text_scores_are_the_training_loss_of_each_dialogue(model, processor):
    batch = validation_batch(model, processor)
    nll, tokens = response_nll(forward_without_labels(model, batch).logits, batch["labels"])
    for row in range(len(DIALOGUES)):
        alone = {key: value[row : row + 1] for key, value in batch.items() if key != "meme_features"}
        alone["meme_features"] = model.meme_bank.lookup(processor([DIALOGUES[row]], label_turns="all")["meme_ids"])
        assert tokens[row] == (alone["labels"][:, 1:] != IGNORE_INDEX).sum()
        torch.testing.assert_close(nll[row] / tokens[row], model(**alone).lm_loss, rtol=1e-5, atol=1e-5)


def test_usage_decisions_are_read_at_every_labelled_tag(model, processor):
    batch = validation_batch(model, processor)
    outputs = forward_without_labels(model, batch)
    rows, predicted, labelled = usage_decisions(
        batch["input_ids"], batch["usage_labels"], outputs.usage_logits, model.config.tag_token_id
    )
    # From the second turn on, every turn's meme use is labelled, in reading order.
    assert rows.tolist() == [row for row, turns in enumerate(DIALOGUES) for _ in turns[1:]]
    assert labelled.tolist() == [int(turn["meme"] is not None) for turns in DIALOGUES for turn in turns[1:]]
    decisions = iter(outputs.usage_logits.argmax(-1).tolist())  # one [TAG] closes every turn
    per_dialogue = [[next(decisions) for _ in turns] for turns in DIALOGUES]
    assert predicted.tolist() == [decision for tags in per_dialogue for decision in tags[1:]]


def brute_force_hits(model, outputs, batch, negatives: torch.Tensor) -> list[int]:
    """R10@1 hits per dialogue: each scored meme's distance to the prediction at its [TAG], one meme at a time."""
    hits = [0] * len(DIALOGUES)
    memes = iter(batch["meme_features"])
    predictions = iter(outputs.meme_predictions)
    for row, turns in enumerate(DIALOGUES):
        order = 0  # of the meme among the dialogue's memes
        for index, turn in enumerate(turns):
            prediction = next(predictions)
            if turn["meme"] is None:
                continue
            gold = next(memes)
            if index == 0:  # the first turn is context, never scored
                continue
            candidates = model.meme_bank.features[negatives[row, order]]
            others = [c for c in candidates if not torch.equal(c, gold)]
            gold_distance = torch.dist(prediction, gold)
            hits[row] += int(all(gold_distance < torch.dist(prediction, other) for other in others))
            order += 1
    return hits


def test_validation_sums_count_every_example_once_and_rank_its_memes_against_its_negatives(model, processor):
    batch = validation_batch(model, processor)
    outputs = forward_without_labels(model, batch)
    most = max(sum(turn["meme"] is not None for turn in turns[1:]) for turns in DIALOGUES)
    # Each meme against 9 copies of one bank row. The first meme of the first dialogue (turn 1) against a bank row
    # set to the prediction at its [TAG], so it misses; its second ("003") against itself, which then is no negative
    # at all, so it hits.
    negatives = (torch.arange(len(DIALOGUES) * most).view(-1, most, 1) % len(model.meme_bank.ids)).expand(-1, -1, 9)
    negatives = negatives.clone()
    unused = model.meme_bank.ids.index("000")
    model.meme_bank.features[unused] = outputs.meme_predictions[1].detach()
    negatives[0, 0] = unused
    negatives[0, 1] = model.meme_bank.ids.index("003")
    sums = validation_sums(model, outputs, batch, negatives)
    assert sums.shape == (len(DIALOGUES), len(VALIDATION_SUMS)) and sums.dtype == torch.float64
    columns = dict(zip(VALIDATION_SUMS, sums.T))
    nll, tokens = response_nll(outputs.logits, batch["labels"])
    torch.testing.assert_close(columns["nll"], nll.double())
    assert columns["tokens"].tolist() == tokens.tolist()
    assert columns["usage_labelled"].tolist() == [len(turns) - 1 for turns in DIALOGUES]
    rows, predicted, labelled = usage_decisions(
        batch["input_ids"], batch["usage_labels"], outputs.usage_logits, model.config.tag_token_id
    )
    correct = [sum(p == g for r, p, g in zip(rows, predicted, labelled) if r == row) for row in range(len(DIALOGUES))]
    assert columns["usage_correct"].tolist() == correct
    assert columns["memes"].tolist() == [sum(turn["meme"] is not None for turn in turns[1:]) for turns in DIALOGUES]
    hits = brute_force_hits(model, outputs, batch, negatives)
    assert columns["retrieval_hits"].tolist() == hits
    assert 0 < sum(hits) < columns["memes"].sum()


def test_validation_metrics_are_ratios_of_the_sums():
    totals = torch.tensor([30.0, 10.0, 6.0, 8.0, 1.0, 4.0], dtype=torch.float64)
    metrics = validation_metrics(totals)
    assert metrics == {
        "eval_loss": 3.0,
        "eval_perplexity": math.exp(3.0),
        "eval_usage_accuracy": 0.75,
        "eval_r10@1": 0.25,
    }
    assert validation_metrics(torch.zeros(6, dtype=torch.float64))["eval_r10@1"] == 0.0
