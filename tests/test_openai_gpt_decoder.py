"""The OpenAI-GPT (CDial-GPT) decoder with a KV cache: the same weights and outputs as transformers' `OpenAIGPTModel`,
which has no cache."""

import pytest
import torch
from conftest import DIALOGUES, tiny_model
from test_backbones import cdial_gpt_folder, mod_gpt_from
from transformers import AutoModel, OpenAIGPTConfig, OpenAIGPTLMHeadModel, OpenAIGPTModel

from modeling_mod_gpt import CachedOpenAIGPTModel, MODGPTForMemeDialogue

TEXT_CONFIG = {"model_type": "openai-gpt", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 256}
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def model(processor):
    return tiny_model(processor, text_config=TEXT_CONFIG)


def with_transformers_decoder(model: MODGPTForMemeDialogue) -> MODGPTForMemeDialogue:
    """The same MOD-GPT with transformers' own (cache-less) `OpenAIGPTModel` as its decoder, every weight copied."""
    other = MODGPTForMemeDialogue(model.config)
    other.model.language_model = OpenAIGPTModel(model.config.text_config)
    other.model.decoder_has_cache = other.generation_config.use_cache = False
    other.load_state_dict(model.state_dict())
    return other.eval()


def generation_kwargs(model, processor, new_tokens=10):
    prompt = processor(DIALOGUES, add_generation_prompt=True, padding_side="left")
    kwargs = {key: prompt[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    memes = model.meme_bank.lookup(prompt["meme_ids"])
    return dict(kwargs, meme_features=memes, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)


def test_openai_gpt_text_config_builds_the_cached_decoder(model):
    assert type(model.model.language_model) is CachedOpenAIGPTModel
    assert model.model.decoder_has_cache and model.generation_config.use_cache


def test_hidden_states_equal_transformers_openai_gpt_on_a_padded_batch():
    torch.manual_seed(0)
    config = OpenAIGPTConfig(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    reference = OpenAIGPTModel(config).eval()
    decoder = CachedOpenAIGPTModel(config).eval()
    decoder.load_state_dict(reference.state_dict())
    assert decoder.state_dict().keys() == reference.state_dict().keys()
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[0, :4] = 0  # left padding
    attention_mask[1, 6:] = 0  # right padding
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    inputs = dict(
        inputs_embeds=reference.tokens_embed(torch.randint(0, 50, (3, 9))),
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=True,
    )
    expected, actual = reference(**inputs), decoder(**inputs)
    real = attention_mask.bool()
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    for mine, theirs in zip(actual.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine[real], theirs[real], **TOLERANCE)
    assert not actual.last_hidden_state.isnan().any()  # padding rows attend to themselves


def test_mod_gpt_logits_equal_those_on_transformers_openai_gpt(model, processor):
    inputs = processor(DIALOGUES, padding_side="left")
    expected = with_transformers_decoder(model)(**inputs, logits_to_keep=0).logits
    actual = model(**inputs, logits_to_keep=0).logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(actual[real], expected[real], **TOLERANCE)


def test_greedy_generation_with_cache_equals_without_and_transformers_decoder(model, processor):
    kwargs = generation_kwargs(model, processor)
    outputs = dict(return_dict_in_generate=True, output_scores=True)
    with_cache = model.generate(**kwargs, **outputs, use_cache=True)
    without_cache = model.generate(**kwargs, **outputs, use_cache=False)
    reference = with_transformers_decoder(model).generate(**kwargs, **outputs)
    assert with_cache.sequences.shape[1] == kwargs["input_ids"].shape[1] + 10
    for other in (without_cache, reference):
        assert torch.equal(with_cache.sequences, other.sequences)
        for mine, theirs in zip(with_cache.scores, other.scores, strict=True):
            finite = theirs.isfinite()
            assert torch.equal(finite, mine.isfinite())
            torch.testing.assert_close(mine[finite], theirs[finite], **TOLERANCE)


def test_a_cdial_gpt_folder_loads_every_tensor_and_keeps_its_logits(tmp_path):
    folder = cdial_gpt_folder(tmp_path / "CDial-GPT_LCCC-base", "openai-gpt")
    model, processor = mod_gpt_from(folder)
    assert type(model.model.language_model) is CachedOpenAIGPTModel
    saved = torch.load(folder / "pytorch_model.bin", weights_only=True)
    decoder = model.model.language_model.state_dict()
    loaded = {name.removeprefix("transformer."): value for name, value in saved.items() if name != "lm_head.weight"}
    assert set(loaded) == set(decoder)
    for name, tensor in loaded.items():
        assert torch.equal(decoder[name][: tensor.shape[0]], tensor), name

    reference = OpenAIGPTLMHeadModel.from_pretrained(folder).eval()
    input_ids = torch.randint(0, 13088, (2, 12))
    expected = reference(input_ids=input_ids).logits
    actual = model.lm_head(model.model.language_model(input_ids=input_ids).last_hidden_state)[..., :13088]
    torch.testing.assert_close(actual, expected, **TOLERANCE)


def test_save_and_load_round_trip_keeps_every_tensor_and_the_logits(model, processor, tmp_path):
    model.save_pretrained(tmp_path)
    inputs = processor(DIALOGUES, padding_side="left")
    expected = model(**inputs, logits_to_keep=0).logits
    reloaded, info = MODGPTForMemeDialogue.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    remote = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__module__.startswith("transformers_modules.")
    for loaded in (reloaded, remote):
        assert type(loaded.model.language_model).__name__ == "CachedOpenAIGPTModel"
        state = loaded.state_dict()
        for name, tensor in model.state_dict().items():
            assert torch.equal(state[name], tensor), name
        torch.testing.assert_close(loaded(**inputs, logits_to_keep=0).logits, expected, rtol=0, atol=0)
