"""What the benchmark rows compare computes the same on both sides, on the tiny model: per-response training learns
the packed windows' responses with the same text losses, and batched cached generation gives the logits of one
uncached pass per row."""

import torch
from conftest import DIALOGUES

from benchmarks.epoch import epoch_windows, response_examples
from mod_training.data import DialogueCollator
from modeling_mod_gpt import IGNORE_INDEX
from pipeline_mod import encode_dialogues

NEW_TOKENS = 8


def per_turn_text_losses(model, batch: dict) -> list[torch.Tensor]:
    """Mean text loss of each labelled turn of a batch of windows, window by window, in turn order."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    speakers = torch.tensor([model.config.speaker1_token_id, model.config.speaker2_token_id])
    turns = torch.isin(batch["input_ids"], speakers).cumsum(-1)[:, 1:]
    parts = []
    for row_losses, row_turns, row_targets in zip(losses, turns, targets):
        labelled = row_targets != IGNORE_INDEX
        for turn in row_turns[labelled].unique().tolist():
            parts.append(row_losses[labelled & (row_turns == turn)].mean())
    return parts


@torch.no_grad()
def test_per_response_text_losses_equal_the_packed_windows_per_turn_parts(model, processor):
    windows = epoch_windows(processor, DIALOGUES)
    collate = DialogueCollator(processor, model.meme_bank.ids, model.meme_bank.features)
    examples = response_examples(processor, DIALOGUES, windows)
    per_response = torch.stack([model(**collate([example]), logits_to_keep=None).lm_loss for example in examples])
    packed_parts = torch.stack(per_turn_text_losses(model, collate([window.encoding for window in windows])))
    assert len(per_response) == sum(len(dialogue) - 1 for dialogue in DIALOGUES)
    torch.testing.assert_close(packed_parts, per_response, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_batched_cached_greedy_logits_equal_one_uncached_pass_per_row(model, processor):
    histories = [DIALOGUES[0][:4], DIALOGUES[1][:1], DIALOGUES[2][:2]]  # prompts of different lengths: left padding
    prompt = encode_dialogues(model, processor, histories, add_generation_prompt=True, max_new_tokens=NEW_TOKENS)
    greedy = {"do_sample": False, "top_p": None, "temperature": None, "min_new_tokens": NEW_TOKENS}
    output = model.generate(
        **prompt, max_new_tokens=NEW_TOKENS, output_logits=True, return_dict_in_generate=True, **greedy
    )
    new_tokens = output.sequences[:, prompt["input_ids"].shape[1] :]
    batched_logits = torch.stack(output.logits, dim=1)
    assert (prompt["attention_mask"] == 0).any()
    for index, history in enumerate(histories):
        alone = encode_dialogues(model, processor, [history], add_generation_prompt=True, max_new_tokens=NEW_TOKENS)
        length = alone["input_ids"].shape[1]
        continued = new_tokens[index : index + 1, :-1]
        segment = alone["token_type_ids"][:, -1:].expand_as(continued)  # generation carries the last segment on
        logits = model(
            input_ids=torch.cat([alone["input_ids"], continued], dim=1),
            attention_mask=torch.ones(1, length + continued.shape[1], dtype=torch.long),
            token_type_ids=torch.cat([alone["token_type_ids"], segment], dim=1),
            meme_features=alone["meme_features"],
            use_cache=False,
        ).logits[0, length - 1 :]
        torch.testing.assert_close(logits, batched_logits[index], rtol=1e-4, atol=1e-4)
