"""The model's outputs follow transformers' conventions: tuples with `return_dict=False`, every layer's hidden states
on request, `logits_to_keep`, logits with labels when asked, and a real LM head tied to the input embeddings."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DIALOGUES

from modeling_mod_gpt import IGNORE_INDEX, MODGPTModel, MODGPTOutput, loss_item_counts

HEAD_OUTPUTS = ("usage_logits", "meme_predictions", "emotion_logits")
LOSS_PARTS = ("lm_loss", "usage_loss", "meme_loss", "emotion_loss")


def plain_inputs(processor, model, dialogues=DIALOGUES) -> dict:
    """The processor's tensors with the bank features of their memes, without labels."""
    inputs = dict(processor(dialogues, label_turns="all"))
    inputs["meme_features"] = model.meme_bank.lookup(inputs.pop("meme_ids"))
    return {key: value for key, value in inputs.items() if not key.endswith("labels")}


def test_return_dict_false_gives_the_output_as_a_tuple(model, processor):
    inputs = processor(DIALOGUES, label_turns="all")
    as_dict = model(**inputs, use_cache=False)
    as_tuple = model(**inputs, use_cache=False, return_dict=False)
    assert isinstance(as_tuple, tuple) and not isinstance(as_tuple, MODGPTOutput)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected)
    for actual, wanted in zip(as_tuple, expected):
        torch.testing.assert_close(actual, wanted)
    assert as_tuple[0] is not None and as_tuple[0].dim() == 0  # the loss first, as in transformers' models
    base_tuple = model.model(**plain_inputs(processor, model), return_dict=False)
    torch.testing.assert_close(base_tuple[0], model.model(**plain_inputs(processor, model)).last_hidden_state)


def test_hidden_states_are_every_layer_and_only_on_request(model, processor):
    inputs = plain_inputs(processor, model)
    plain = model(**inputs)
    assert plain.hidden_states is None
    outputs = model(**inputs, output_hidden_states=True)
    layers = model.config.text_config.n_layer
    assert len(outputs.hidden_states) == layers + 1
    assert all(state.shape == (*inputs["input_ids"].shape, 64) for state in outputs.hidden_states)
    last = model.model(**inputs).last_hidden_state
    torch.testing.assert_close(outputs.hidden_states[-1], last)
    torch.testing.assert_close(model.lm_head(outputs.hidden_states[-1]), plain.logits)
    assert not torch.allclose(outputs.hidden_states[0], outputs.hidden_states[1])


def test_the_lm_head_is_a_real_module_tied_to_the_input_embeddings(model):
    lm_head = model.get_output_embeddings()
    assert isinstance(lm_head, torch.nn.Linear) and lm_head is model.lm_head
    assert lm_head.weight is model.get_input_embeddings().weight
    assert model.all_tied_weights_keys == {"lm_head.weight": "model.language_model.wte.weight"}
    model.resize_token_embeddings(model.config.text_config.vocab_size + 3)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.lm_head.weight.shape[0] == model.config.text_config.vocab_size


@pytest.mark.parametrize("keep", [1, 3])
def test_logits_to_keep_an_int_keeps_the_last_positions(model, processor, keep):
    inputs = plain_inputs(processor, model)
    full = model(**inputs).logits
    kept = model(**inputs, logits_to_keep=keep)
    torch.testing.assert_close(kept.logits, full[:, -keep:])
    for name in HEAD_OUTPUTS:  # the heads read their own positions whatever logits are kept
        torch.testing.assert_close(getattr(kept, name), getattr(model(**inputs), name))


def test_logits_to_keep_a_tensor_keeps_those_positions(model, processor):
    inputs = plain_inputs(processor, model)
    full = model(**inputs).logits
    positions = torch.tensor([0, 4, 7])
    torch.testing.assert_close(model(**inputs, logits_to_keep=positions).logits, full[:, positions])
    is_tag = inputs["input_ids"] == model.config.tag_token_id
    torch.testing.assert_close(model(**inputs, logits_to_keep=is_tag).logits, full[is_tag])


def test_logits_come_with_labels_by_default_and_the_loss_stays_the_same(model, processor):
    inputs = processor(DIALOGUES, label_turns="all")
    without_labels = model(**{key: value for key, value in inputs.items() if key != "labels"})
    default = model(**inputs)
    torch.testing.assert_close(default.logits, without_labels.logits)  # as every transformers causal LM
    training = model(**inputs, logits_to_keep=None)  # the training call: the LM head on labelled positions only
    assert training.logits is None and training.lm_loss is not None
    last_only = model(**inputs, logits_to_keep=1)
    torch.testing.assert_close(last_only.logits, without_labels.logits[:, -1:])
    for outputs in (training, last_only):
        torch.testing.assert_close(outputs.lm_loss, default.lm_loss)
        torch.testing.assert_close(outputs.loss, default.loss)
    labels = inputs["labels"]
    expected = F.cross_entropy(
        default.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(training.lm_loss, expected)


def test_generation_runs_the_lm_head_on_the_last_position_only(model, processor, monkeypatch):
    prompt = processor(DIALOGUES, add_generation_prompt=True, padding_side="left", label_turns="all")
    rows = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: rows.append(output.shape[1]))
    model.generate(
        **{key: prompt[key] for key in ("input_ids", "attention_mask", "token_type_ids", "meme_ids")},
        do_sample=False,
        max_new_tokens=3,
        min_new_tokens=3,
    )
    hook.remove()
    assert rows == [1, 1, 1]


def test_the_base_model_splices_memes_and_returns_their_features(model, processor):
    assert isinstance(model.model, MODGPTModel)
    inputs = plain_inputs(processor, model)
    outputs = model.model(**inputs)
    torch.testing.assert_close(outputs.meme_features, inputs["meme_features"])
    image_mask = inputs["input_ids"] == model.config.image_token_id
    changed = dict(inputs, meme_features=inputs["meme_features"] + 1.0)
    moved = model.model(**changed).last_hidden_state
    first_image = int(image_mask[0].nonzero()[0])
    torch.testing.assert_close(moved[0, :first_image], outputs.last_hidden_state[0, :first_image])
    assert not torch.allclose(moved[0, first_image:], outputs.last_hidden_state[0, first_image:])


def test_a_training_step_runs_under_bf16_autocast(model, processor):
    inputs = processor(DIALOGUES, return_tensors="pt", label_turns="all")
    inputs["meme_features"] = model.meme_bank.lookup(inputs.pop("meme_ids"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(**inputs)
    assert outputs.loss.isfinite()
    outputs.loss.backward()
    assert model.model.meme_projector.weight.grad is not None


@pytest.mark.parametrize("meme_loss", ["l2", "contrastive"])
def test_losses_over_the_global_item_counts_add_up_across_shards(model, processor, meme_loss):
    """Two shards of a batch, each averaged over the whole batch's items (`num_items_in_batch`), give together the
    losses and gradients of the whole batch averaged over its own: what training relies on across processes."""
    model.config.meme_loss = meme_loss
    model.eval()  # no dropout: the shards and the whole batch compute the same hidden states
    whole = processor(DIALOGUES, label_turns="all")
    shards = [processor(DIALOGUES[:1], label_turns="all"), processor(DIALOGUES[1:], label_turns="all")]
    counts = loss_item_counts(whole["labels"], whole["usage_labels"], whole["emotion_labels"])
    assert all(count > 0 for count in counts.tolist())

    def loss_and_grads(batches, num_items=None):
        model.zero_grad()
        outputs = [model(**batch, logits_to_keep=None, num_items_in_batch=num_items) for batch in batches]
        parts = torch.stack([torch.stack([getattr(o, n) for n in LOSS_PARTS]) for o in outputs]).sum(0)
        sum(o.loss for o in outputs).backward()
        return parts.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    expected_parts, expected_grads = loss_and_grads([whole])
    parts, grads = loss_and_grads(shards, counts)
    torch.testing.assert_close(parts, expected_parts)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    # Without the global counts each shard is its own mean: not the whole batch's.
    alone, _ = loss_and_grads(shards)
    assert not torch.allclose(alone, expected_parts)
