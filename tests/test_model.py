"""MOD-GPT core: config checks, save/load, packed vs per-response equality, losses, generation, retrieval."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import DIALOGUES, EMOTIONS, MEME_IDS, tiny_config
from huggingface_hub.errors import StrictDataclassError
from PIL import Image
from test_processor import long_dialogue, window_turns

from configuration_mod_gpt import MODGPTConfig
from modeling_mod_gpt import IGNORE_INDEX, MODGPTForMemeDialogue


def run(model, processor, dialogues, **encode_kwargs):
    """Encode (every turn labelled unless `encode_kwargs` says otherwise) and run: the losses and the full logits."""
    inputs = processor(dialogues, **{"label_turns": "all", **encode_kwargs})
    meme_features = model.meme_bank.lookup(inputs.pop("meme_ids"))
    return inputs, model(**inputs, meme_features=meme_features)


def turn_token_losses(logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor, speaker_ids) -> list:
    """Next-token losses of the labelled tokens of each labelled turn of one sequence, in turn order."""
    shifted = F.pad(labels[1:], (0, 1), value=IGNORE_INDEX)
    turn_index = torch.isin(input_ids, torch.tensor(speaker_ids)).cumsum(0) - 1
    losses = F.cross_entropy(logits, shifted.clamp(min=0), reduction="none")
    labelled = shifted != IGNORE_INDEX
    return [losses[labelled & (turn_index == t)] for t in turn_index[labelled].unique().tolist()]


def turn_text_losses(logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor, speaker_ids) -> list:
    """Mean next-token loss of each labelled turn of one sequence, in turn order."""
    return [losses.mean() for losses in turn_token_losses(logits, input_ids, labels, speaker_ids)]


# Config -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"tag_token_id": 10_000}, "tag_token_id"),
        ({"retrieval_distance": "dot"}, "retrieval_distance"),
        ({"emotion_names": ["happy"]}, "emotion_names"),
        ({"head_dropout": 1.5}, "head_dropout"),
        ({"usage_loss_weight": -1.0}, "usage_loss_weight"),
        ({"meme_bank_ids": ["001", "001"]}, "meme_bank_ids"),
    ],
)
def test_inconsistent_config_names_the_field(processor, overrides, field):
    with pytest.raises(StrictDataclassError, match=field):
        tiny_config(processor, **overrides)


def test_encoder_feature_size_mismatch_is_reported(processor):
    with pytest.raises(ValueError, match="meme_feature_size"):
        MODGPTForMemeDialogue(tiny_config(processor, meme_feature_size=512))


def test_default_config_is_cdial_gpt_base_sized():
    config = MODGPTConfig()
    text = config.text_config
    assert (text.model_type, text.n_layer, text.n_head, text.n_embd, text.n_positions) == ("gpt2", 12, 12, 768, 513)
    assert text.vocab_size == 13088 + 7
    assert config.meme_encoder_name == "efficientnet_b0" and config.retrieval_distance == "l2"


# Save and load ------------------------------------------------------------------------------------------------------


def test_save_load_round_trip_in_process(model, processor, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["do_sample"] and generation["top_p"] == 0.9 and generation["temperature"] == 0.7
    assert generation["eos_token_id"] == processor.special_token_ids["eos_token_id"]
    loaded = MODGPTForMemeDialogue.from_pretrained(tmp_path)
    assert loaded.meme_bank.ids == MEME_IDS
    torch.testing.assert_close(loaded.meme_bank.features, model.meme_bank.features)
    _, expected = run(model, processor, DIALOGUES)
    _, actual = run(loaded, processor, DIALOGUES)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(actual.meme_predictions, expected.meme_predictions, rtol=0, atol=0)


@pytest.mark.slow
def test_auto_classes_load_saved_code_in_fresh_process(model, processor, tmp_path):
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    # The modeling file's relative imports travel with it: the decoder, the meme bank and the inference it runs.
    code_files = ("configuration_mod_gpt", "modeling_mod_gpt", "modeling_cached_openai_gpt", "retrieval_mod_gpt")
    code_files += ("attention_mod_gpt",)
    for name in (*code_files, "pipeline_mod", "processing_mod"):
        assert (saved / f"{name}.py").exists(), name
    _, outputs = run(model, processor, DIALOGUES)
    torch.save(outputs.logits, tmp_path / "expected_logits.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor
        folder = {str(saved)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        causal = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        for obj in (config, model, causal, processor, processor.image_processor):
            assert type(obj).__module__.startswith("transformers_modules."), type(obj).__module__
        assert type(model).__name__ == "MODGPTForMemeDialogue" and type(processor).__name__ == "MODProcessor"
        dialogues = {DIALOGUES!r}
        inputs = processor(dialogues, label_turns="all")
        memes = model.meme_bank.lookup(inputs.pop("meme_ids"))
        inputs.pop("labels")
        logits = model(**inputs, meme_features=memes).logits
        torch.testing.assert_close(logits, torch.load({str(tmp_path / "expected_logits.pt")!r}))
        print("OK", processor.emotion_names)
        """
    )
    # Run from an unrelated directory, with the repo off the path, so only the saved folder's code can be used.
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf_home")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"OK {EMOTIONS}" in result.stdout


# Packed dialogues and padding ---------------------------------------------------------------------------------------


def test_packed_dialogue_matches_per_response_encodings(model, processor):
    dialogue = DIALOGUES[0]
    packed_inputs, packed = run(model, processor, dialogue)
    speakers = [processor.token_ids["[speaker1]"], processor.token_ids["[speaker2]"]]
    packed_losses = turn_text_losses(
        packed.logits[0], packed_inputs["input_ids"][0], packed_inputs["labels"][0], speakers
    )
    assert len(packed_losses) == len(dialogue) - 1
    for answer_index in range(1, len(dialogue)):
        inputs, single = run(model, processor, dialogue[: answer_index + 1], label_turns="last")
        (loss,) = turn_text_losses(single.logits[0], inputs["input_ids"][0], inputs["labels"][0], speakers)
        torch.testing.assert_close(loss, packed_losses[answer_index - 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(single.usage_logits[-1], packed.usage_logits[answer_index], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            single.meme_predictions[-1], packed.meme_predictions[answer_index], rtol=1e-5, atol=1e-5
        )


def test_training_windows_give_each_response_its_per_response_losses(model, processor):
    """Turn k learned in a window that starts at turn s gets the losses of the per-response view s..k run alone."""
    dialogue = long_dialogue()
    windows = processor.encode_windows(dialogue, max_length=64)
    speakers = [processor.token_ids["[speaker1]"], processor.token_ids["[speaker2]"]]
    batch = processor.pad(windows)
    memes = model.meme_bank.lookup(batch.pop("meme_ids"))
    outputs = model(**{key: value for key, value in batch.items() if key != "labels"}, meme_features=memes)
    compared = []
    for row, (start, new) in enumerate(window_turns(processor, windows)):
        mask = batch["attention_mask"][row].bool()
        window_losses = turn_token_losses(
            outputs.logits[row][mask], batch["input_ids"][row][mask], batch["labels"][row][mask], speakers
        )
        assert len(window_losses) == len(new)
        for turn_index, losses in zip(new, window_losses):
            inputs, alone = run(model, processor, dialogue[start : turn_index + 1], label_turns="last")
            (expected,) = turn_token_losses(alone.logits[0], inputs["input_ids"][0], inputs["labels"][0], speakers)
            torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)
            compared.append(turn_index)
    assert compared == list(range(1, len(dialogue)))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padded_batch_matches_each_dialogue_alone(model, processor, padding_side):
    batch_inputs, batch = run(model, processor, DIALOGUES, padding_side=padding_side)
    tag_offset = image_offset = 0
    for row, dialogue in enumerate(DIALOGUES):
        alone_inputs, alone = run(model, processor, dialogue)
        mask = batch_inputs["attention_mask"][row].bool()
        torch.testing.assert_close(batch.logits[row][mask], alone.logits[0], rtol=1e-5, atol=1e-5)
        tags, images = len(alone.usage_logits), len(alone.emotion_logits)
        torch.testing.assert_close(
            batch.usage_logits[tag_offset : tag_offset + tags], alone.usage_logits, rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            batch.emotion_logits[image_offset : image_offset + images], alone.emotion_logits, rtol=1e-5, atol=1e-5
        )
        tag_offset, image_offset = tag_offset + tags, image_offset + images


# Losses -------------------------------------------------------------------------------------------------------------


def losses(model, inputs, meme_features):
    outputs = model(**inputs, meme_features=meme_features)
    return {name: getattr(outputs, name).item() for name in ("lm_loss", "usage_loss", "meme_loss", "emotion_loss")}


def test_each_loss_part_moves_only_with_its_own_labels(model, processor):
    inputs = processor(DIALOGUES, label_turns="all")
    memes = model.meme_bank.lookup(inputs.pop("meme_ids"))
    base = losses(model, inputs, memes)
    assert all(torch.isfinite(torch.tensor(value)) for value in base.values())

    changed = dict(inputs)
    labels = inputs["labels"].clone()
    labels[labels != IGNORE_INDEX] = processor.token_ids["[EOS]"]
    changed["labels"] = labels
    moved = losses(model, changed, memes)
    assert moved["lm_loss"] != pytest.approx(base["lm_loss"])
    assert {k: moved[k] for k in moved if k != "lm_loss"} == {k: base[k] for k in base if k != "lm_loss"}

    changed = dict(inputs)
    emotion = inputs["emotion_labels"].clone()
    emotion[emotion != IGNORE_INDEX] = (emotion[emotion != IGNORE_INDEX] + 1) % len(EMOTIONS)
    changed["emotion_labels"] = emotion
    moved = losses(model, changed, memes)
    assert moved["emotion_loss"] != pytest.approx(base["emotion_loss"])
    assert {k: moved[k] for k in moved if k != "emotion_loss"} == {k: base[k] for k in base if k != "emotion_loss"}

    # A text-only turn's usage label moves the usage loss alone; the meme loss covers the turns that use a meme.
    changed = dict(inputs)
    usage = inputs["usage_labels"].clone()
    first_no_meme = (usage == 0).nonzero()[0]
    usage[tuple(first_no_meme)] = IGNORE_INDEX
    changed["usage_labels"] = usage
    moved = losses(model, changed, memes)
    assert moved["usage_loss"] != pytest.approx(base["usage_loss"])
    assert {k: moved[k] for k in moved if k != "usage_loss"} == {k: base[k] for k in base if k != "usage_loss"}

    # The meme loss is the regression error on the memes that follow a [TAG] labelled 1.
    outputs = model(**inputs, meme_features=memes)
    tag_usage = inputs["usage_labels"][inputs["input_ids"] == processor.token_ids["[TAG]"]]
    targets = model.meme_bank.lookup([m for d in DIALOGUES for t in d[1:] if (m := t["meme"]) is not None])
    expected = F.mse_loss(outputs.meme_predictions[tag_usage == 1], targets)
    torch.testing.assert_close(outputs.meme_loss, expected)


def test_loss_parts_send_gradients_to_their_heads(model, processor):
    model.train()
    inputs = processor(DIALOGUES, label_turns="all")
    memes = model.meme_bank.lookup(inputs.pop("meme_ids"))
    outputs = model(**inputs, meme_features=memes)
    part_to_head = {
        "lm_loss": model.get_input_embeddings(),
        "usage_loss": model.usage_head,
        "meme_loss": model.meme_head,
        "emotion_loss": model.emotion_head,
    }
    for part, module in part_to_head.items():
        model.zero_grad()
        getattr(outputs, part).backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), part
    model.zero_grad()
    outputs.loss.backward()
    for module in (model.model.meme_projector, model.model.segment_embeddings):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_text_loss_on_labelled_positions_equals_full_logits_loss(model, processor):
    inputs = processor(DIALOGUES, label_turns="all")
    memes = model.meme_bank.lookup(inputs.pop("meme_ids"))
    labels = inputs.pop("labels")
    logits = model(**inputs, meme_features=memes).logits
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(model(**inputs, labels=labels, meme_features=memes).lm_loss, expected)


def test_images_through_encoder_equal_their_features(model, processor):
    images = {meme: Image.new("RGB", (48, 48), color=(30 * i, 200 - 20 * i, 90)) for i, meme in enumerate(MEME_IDS)}
    inputs = processor(DIALOGUES, meme_images=images, label_turns="all")
    assert "meme_ids" not in inputs  # the images stand for the memes: one source, so model(**inputs) takes it
    from_images = model(**inputs)
    pixel_values = inputs.pop("pixel_values")
    assert len(pixel_values) == len(processor(DIALOGUES, label_turns="all")["meme_ids"])
    from_features = model(**inputs, meme_features=model.model.get_meme_features(pixel_values))
    for part in ("loss", "lm_loss", "usage_loss", "meme_loss", "emotion_loss", "emotion_logits"):
        torch.testing.assert_close(getattr(from_images, part), getattr(from_features, part))


# The plain call: model(**processor(dialogue, label_turns="all")) ------------------------------------------------------------------------


LOSS_PARTS = ("lm_loss", "usage_loss", "meme_loss", "emotion_loss")


def test_the_processor_output_runs_as_is_with_memes_from_the_bank(model, processor):
    inputs = processor(DIALOGUES, label_turns="all")
    plain = model(**inputs)
    features = model.meme_bank.lookup(inputs["meme_ids"])
    explicit = model(**{key: value for key, value in inputs.items() if key != "meme_ids"}, meme_features=features)
    for part in ("loss", *LOSS_PARTS, "meme_predictions", "emotion_logits"):
        torch.testing.assert_close(getattr(plain, part), getattr(explicit, part))
    assert torch.isfinite(plain.loss)


@pytest.mark.parametrize("other", ["meme_features", "pixel_values"])
def test_memes_given_two_ways_are_refused(model, processor, other):
    inputs = processor(DIALOGUES[1], label_turns="all")
    values = {"meme_features": model.meme_bank.lookup(inputs["meme_ids"]), "pixel_values": torch.zeros(1, 3, 32, 32)}
    with pytest.raises(ValueError, match=rf"Got memes as {other} and meme_ids: pass them one way only"):
        model(**inputs, **{other: values[other]})


def test_unknown_meme_ids_in_the_plain_call_are_named(model, processor):
    inputs = processor(DIALOGUES[1], label_turns="all")
    with pytest.raises(ValueError, match=r"Unknown meme id\(s\) \['404'\]: not in the model's meme bank of 8"):
        model(**dict(inputs, meme_ids=["404"]))
    with pytest.raises(ValueError, match="meme_ids must be a list of meme ids, got str '002'"):
        model(**dict(inputs, meme_ids="002"))


def test_a_dialogue_with_nothing_to_learn_gives_zero_losses_that_keep_the_graph(model, processor):
    one_turn = [DIALOGUES[0][0]]  # a text turn: no labelled text, usage or emotion (the first turn is context)
    outputs = model(**processor(one_turn, label_turns="all"))
    parts = torch.stack([getattr(outputs, part) for part in LOSS_PARTS])  # as the training loop stacks them
    assert parts.tolist() == [0.0] * 4 and outputs.loss.item() == 0.0
    assert outputs.loss.requires_grad
    outputs.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_an_unlabelled_dialogue_in_a_batch_changes_no_loss(model, processor):
    alone = model(**processor(DIALOGUES, label_turns="all"))
    with_one_turn = model(**processor([*DIALOGUES, [DIALOGUES[0][0]]], label_turns="all"))
    for part in ("loss", *LOSS_PARTS):
        torch.testing.assert_close(getattr(with_one_turn, part), getattr(alone, part))


# Generation ---------------------------------------------------------------------------------------------------------


def generation_prompt(model, processor):
    prompt = processor(DIALOGUES, add_generation_prompt=True, padding_side="left", label_turns="all")
    memes = model.meme_bank.lookup(prompt["meme_ids"])
    return {key: prompt[key] for key in ("input_ids", "attention_mask", "token_type_ids")}, memes


def test_generate_takes_the_processor_meme_ids(model, processor):
    prompt, memes = generation_prompt(model, processor)
    meme_ids = processor(DIALOGUES, add_generation_prompt=True, padding_side="left", label_turns="all")["meme_ids"]
    kwargs = dict(prompt, do_sample=False, max_new_tokens=6, min_new_tokens=6)
    for use_cache in (True, False):
        from_ids = model.generate(**kwargs, meme_ids=meme_ids, use_cache=use_cache)
        assert torch.equal(from_ids, model.generate(**kwargs, meme_features=memes, use_cache=use_cache))


def test_greedy_generate_with_cache_equals_without(model, processor):
    prompt, memes = generation_prompt(model, processor)
    kwargs = dict(prompt, meme_features=memes, do_sample=False, max_new_tokens=12, min_new_tokens=12)
    with_cache = model.generate(**kwargs, use_cache=True)
    without_cache = model.generate(**kwargs, use_cache=False)
    assert with_cache.shape[1] == prompt["input_ids"].shape[1] + 12
    assert torch.equal(with_cache, without_cache)


def test_generated_tokens_are_never_dialogue_special_tokens(model, processor):
    prompt, memes = generation_prompt(model, processor)
    torch.manual_seed(0)
    generated = model.generate(**prompt, meme_features=memes, max_new_tokens=20, temperature=5.0)
    new_tokens = generated[:, prompt["input_ids"].shape[1] :]
    forbidden = [v for k, v in processor.special_token_ids.items() if k not in ("eos_token_id", "pad_token_id")]
    assert not torch.isin(new_tokens, torch.tensor(forbidden)).any()


def test_respond_returns_text_meme_and_emotion(model, processor):
    torch.manual_seed(0)
    model.usage_head.out_proj.bias.data = torch.tensor([-50.0, 50.0])  # force "attach a meme"
    reply = model.respond(DIALOGUES[0], processor, max_new_tokens=8)
    assert reply["speaker"] == "speaker2"
    assert isinstance(reply["text"], str)
    assert reply["meme"] in MEME_IDS and reply["emotion"] in EMOTIONS
    assert reply["top_memes"][0]["meme"] == reply["meme"]
    replies = model.respond(DIALOGUES, processor, candidates=[["006", "007"]] * 3, max_new_tokens=4)
    assert len(replies) == 3 and all(r["meme"] in ("006", "007") for r in replies)
    model.usage_head.out_proj.bias.data = torch.tensor([50.0, -50.0])
    assert model.respond(DIALOGUES[1], processor, max_new_tokens=4)["meme"] is None


# Retrieval ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_retrieval_ranks_planted_nearest_meme_first(processor, distance):
    model = MODGPTForMemeDialogue(tiny_config(processor, retrieval_distance=distance))
    bank = torch.randn(50, 256)
    model.add_memes([f"m{i}" for i in range(50)], bank)
    predictions = bank[[7, 31]] + 0.01 * torch.randn(2, 256)
    ranked = model.meme_bank.rank(predictions)
    assert [r.meme_ids[0] for r in ranked] == ["m7", "m31"]
    assert ranked[0].distances == sorted(ranked[0].distances)
    ranked = model.meme_bank.rank(predictions, candidates=[["m1", "m2", "m7"], ["m31", "m3", "m4"]])
    assert [r.meme_ids[0] for r in ranked] == ["m7", "m31"]


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_candidate_sets_of_different_sizes_rank_as_each_alone(processor, distance):
    model = MODGPTForMemeDialogue(tiny_config(processor, retrieval_distance=distance))
    bank_ids = [f"m{i}" for i in range(40)]
    model.add_memes(bank_ids, torch.randn(40, 256))
    generator = torch.Generator().manual_seed(0)
    candidates = [[bank_ids[i] for i in torch.randperm(40, generator=generator)[:size]] for size in (10, 11, 11, 10)]
    predictions = torch.randn(4, 256, generator=generator)
    for top_k in (None, 3, 11):
        mixed = model.meme_bank.rank(predictions, candidates, top_k=top_k)
        for prediction, ids, ranking in zip(predictions, candidates, mixed):
            (alone,) = model.meme_bank.rank(prediction[None], [ids], top_k=top_k)
            assert ranking.meme_ids == alone.meme_ids and len(ranking.meme_ids) == min(top_k or 11, len(ids))
            torch.testing.assert_close(torch.tensor(ranking.distances), torch.tensor(alone.distances))
            assert set(ranking.meme_ids) <= set(ids) and ranking.distances == sorted(ranking.distances)


def test_meme_added_from_image_becomes_candidate(model):
    image = Image.new("RGB", (64, 64), color=(250, 10, 10))
    from processing_mod import MemeImageProcessor

    pixel_values = MemeImageProcessor.from_timm_model("test_efficientnet")(image)["pixel_values"]
    model.add_memes(["unseen-1"], pixel_values=pixel_values)
    assert model.meme_bank.ids[-1] == "unseen-1"
    feature = model.model.get_meme_features(pixel_values)
    assert model.meme_bank.rank(feature)[0].meme_ids[0] == "unseen-1"
    model.add_memes(["001"], meme_features=feature)  # replacing an existing meme keeps the bank size
    assert len(model.meme_bank.ids) == len(MEME_IDS) + 1


# Bad input ----------------------------------------------------------------------------------------------------------


def test_unknown_meme_id_names_the_turn(model, processor):
    dialogue = [dict(DIALOGUES[1][0]), {"speaker": "speaker1", "text": "嗯", "meme": "999", "emotion": None}]
    with pytest.raises(ValueError, match=r"turn 1: 'meme' '999'"):
        model.respond(dialogue, processor)
    with pytest.raises(ValueError, match="999"):
        model.meme_bank.lookup(["001", "999"])


@pytest.mark.parametrize(
    "dialogue, message",
    [
        ([{"text": "你好"}], r"dialogue 0, turn 1: 'speaker'"),
        ([{"speaker": "speaker2", "text": "好"}, {"speaker": "speaker3", "text": "好"}], r"turn 2: 'speaker'"),
        ([{"speaker": "speaker2"}], r"turn 1: a turn needs 'text' or 'meme'"),
        ([{"speaker": "speaker2", "text": "好", "meme": "001", "emotion": "bored"}], r"turn 1: 'emotion'"),
        (["你好"], r"turn 1: a turn must be a dict"),
    ],
)
def test_bad_turns_name_field_and_turn(processor, dialogue, message):
    with pytest.raises(ValueError, match=message):
        processor([DIALOGUES[0][0], *dialogue], label_turns="all")


def test_empty_dialogue_is_rejected(processor):
    with pytest.raises(ValueError, match="non-empty list of turns"):
        processor([], label_turns="all")
    with pytest.raises(ValueError, match="dialogue 1: a dialogue must be a non-empty list"):
        processor([DIALOGUES[0], []], label_turns="all")


def test_overlong_turn_names_text_and_turn(processor):
    dialogue = [DIALOGUES[0][0], {"speaker": "speaker2", "text": "好" * 40, "meme": None, "emotion": None}]
    with pytest.raises(ValueError, match=r"dialogue 0, turn 1: 'text' encodes to 44 tokens.*max_length=30"):
        processor(dialogue, max_length=30, label_turns="all")


def test_image_count_mismatch_is_reported(model, processor):
    inputs = processor(DIALOGUES, label_turns="all")
    memes = model.meme_bank.lookup(inputs.pop("meme_ids"))
    with pytest.raises(ValueError, match=r"input_ids hold 6 \[IMG\] tokens but 5 memes were given"):
        model(**inputs, meme_features=memes[:-1])
    with pytest.raises(ValueError, match=r"input_ids hold 6 \[IMG\] tokens but 0 memes were given"):
        model(**inputs)
