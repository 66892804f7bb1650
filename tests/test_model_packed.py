"""Packed rows: several dialogues in one row, `position_ids` restarting at each and no attention mask. transformers'
masking utils then keep each dialogue to itself; through MOD-GPT's forward that must hold on every attention
implementation, giving each dialogue the outputs and losses it gets in a row of its own."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DIALOGUES, MEME_IDS, tiny_config

from modeling_mod_gpt import IGNORE_INDEX, MODGPTForMemeDialogue

SEQUENCE_KEYS = ("input_ids", "token_type_ids", "labels", "usage_labels", "emotion_labels")
LOSS_PARTS = ("lm_loss", "usage_loss", "meme_loss", "emotion_loss")


def packed_row(processor, dialogues) -> tuple[dict, list[int]]:
    """The dialogues' encodings one after another in a single row, positions restarting at each; and their lengths."""
    encodings = [processor.encode_dialogue(dialogue, index) for index, dialogue in enumerate(dialogues)]
    row = {key: torch.tensor([[token for encoding in encodings for token in encoding[key]]]) for key in SEQUENCE_KEYS}
    lengths = [len(encoding["input_ids"]) for encoding in encodings]
    row["position_ids"] = torch.cat([torch.arange(length) for length in lengths])[None]
    row["meme_ids"] = [meme for encoding in encodings for meme in encoding["meme_ids"]]
    return row, lengths


def text_loss_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one dialogue's logits `(length, vocab)` against its labels `(length,)`."""
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX)


@pytest.fixture(params=["eager", "sdpa"])
def attention_model(model, request):
    model.set_attn_implementation(request.param)
    assert model.model.language_model.config._attn_implementation == request.param
    return model


def test_each_packed_dialogue_gets_the_outputs_and_losses_of_its_own_row(attention_model, processor):
    model = attention_model
    row, lengths = packed_row(processor, DIALOGUES)
    packed = model(**row, logits_to_keep=0)
    assert packed.cache is None  # packed rows build no cache: it would let the dialogues see each other
    starts = torch.tensor([0, *lengths]).cumsum(0).tolist()
    heads = {name: [] for name in ("usage_logits", "meme_predictions", "emotion_logits")}
    for index, dialogue in enumerate(DIALOGUES):
        alone = model(**processor(dialogue, label_turns="all"), logits_to_keep=0)
        span = slice(starts[index], starts[index + 1])
        torch.testing.assert_close(packed.logits[0, span], alone.logits[0], rtol=1e-5, atol=1e-5)
        own_loss = text_loss_of(packed.logits[0, span], row["labels"][0, span])
        torch.testing.assert_close(own_loss, alone.lm_loss, rtol=1e-5, atol=1e-5)
        for name in heads:
            heads[name].append(getattr(alone, name))
    for name, parts in heads.items():
        torch.testing.assert_close(getattr(packed, name), torch.cat(parts), rtol=1e-5, atol=1e-5)


def test_a_packed_row_has_the_losses_of_the_padded_batch(attention_model, processor):
    model = attention_model
    row, _ = packed_row(processor, DIALOGUES)
    packed = model(**row)
    batch = model(**processor(DIALOGUES, label_turns="all"))
    for part in LOSS_PARTS:  # each a mean over the labelled tokens (or [TAG]s, [IMG]s) of all dialogues
        torch.testing.assert_close(getattr(packed, part), getattr(batch, part), rtol=1e-5, atol=1e-5)


def test_without_the_restart_the_dialogues_would_see_each_other(attention_model, processor):
    """The check above is not vacuous: with one cache over the row (or continuous positions) the outputs change."""
    model = attention_model
    row, lengths = packed_row(processor, DIALOGUES[:2])
    alone = model(**processor(DIALOGUES[1], label_turns="all"), logits_to_keep=0).logits[0]
    second = slice(lengths[0], None)
    with_cache = model(**row, use_cache=True, logits_to_keep=0).logits[0, second]
    assert not torch.allclose(with_cache, alone, atol=1e-3)
    continuous = dict(row, position_ids=torch.arange(sum(lengths))[None])
    assert not torch.allclose(model(**continuous, logits_to_keep=0).logits[0, second], alone, atol=1e-3)


def test_a_decoder_that_cannot_separate_packed_rows_refuses_them(processor):
    config = tiny_config(processor, text_config={"model_type": "openai-gpt", "n_layer": 1, "n_embd": 32, "n_head": 2})
    model = MODGPTForMemeDialogue(config).eval()
    model.add_memes(MEME_IDS, torch.randn(len(MEME_IDS), 256))
    row, _ = packed_row(processor, DIALOGUES)
    with pytest.raises(ValueError, match="OpenAIGPTModel decoder always attends to the whole row"):
        model(**row)
    one = processor(DIALOGUES[0], label_turns="all")
    positions = torch.arange(one["input_ids"].shape[1])[None]
    with_positions = model(
        **{key: value for key, value in one.items() if key != "attention_mask"}, position_ids=positions
    )
    torch.testing.assert_close(with_positions.loss, model(**one).loss)
