"""The in-place KV cache that every front end generates with: the same keys, values and replies as transformers'
`DynamicLayer`, without copying what is cached at each step; and the joined cache that lets prompts run in short
passes and decode together, each run's rows attending to their own columns."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DIALOGUES, tiny_model
from test_openai_gpt_decoder import TEXT_CONFIG as OPENAI_GPT
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

import pipeline_mod
from attention_mod_gpt import sdpa_by_row_groups
from pipeline_mod import InPlaceLayer, encode_dialogues, generate_texts, in_place_cache, prompt_lengths, prompt_runs


def states(length: int, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 2, length, 4), torch.randn(batch, 2, length, 4)


def test_updates_return_what_dynamic_layer_returns_through_growth_crop_and_selection():
    torch.manual_seed(0)
    mine, reference = InPlaceLayer(), DynamicLayer()
    steps = [lambda layer: layer.update(*states(5))]
    steps += [lambda layer: layer.update(*states(1))] * 12  # past the first buffer's 10 positions
    steps += [lambda layer: layer.crop(-3), lambda layer: layer.update(*states(2))]
    steps += [
        lambda layer: layer.batch_select_indices(torch.tensor([2, 0])),
        lambda layer: layer.update(*states(1, 2)),
    ]
    for step in steps:
        seed = torch.seed()
        step(mine)
        torch.manual_seed(seed)
        step(reference)
        assert mine.get_seq_length() == reference.get_seq_length()
        assert torch.equal(mine.keys, reference.keys) and torch.equal(mine.values, reference.values)


def test_a_step_writes_into_the_buffer_without_copying_the_cache():
    layer = InPlaceLayer()
    layer.update(*states(8))
    buffer = layer.keys.data_ptr()
    for _ in range(8):  # the buffer holds 16 positions
        keys, _ = layer.update(*states(1))
        assert keys.data_ptr() == buffer
    layer.update(*states(1))
    assert layer.keys.data_ptr() != buffer and layer.get_seq_length() == 17


@pytest.fixture(params=["gpt2", "openai-gpt"])
def model(request, processor):
    return tiny_model(processor, **({"text_config": OPENAI_GPT} if request.param == "openai-gpt" else {}))


@pytest.fixture
def generate_calls(model, monkeypatch) -> list[tuple[dict, torch.Tensor]]:
    """The keyword arguments and the output of every `generate` call."""
    calls = []
    generate = model.generate

    def recorded(**kwargs):
        calls.append((kwargs, generate(**kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(model, "generate", recorded)
    return calls


def test_generation_equals_that_with_transformers_dynamic_cache(model, processor, generate_calls):
    greedy = {"do_sample": False, "max_new_tokens": 12, "min_new_tokens": 12}
    in_place = generate_texts(model, processor, DIALOGUES, **greedy)
    dynamic = generate_texts(model, processor, DIALOGUES, cache=DynamicCache(), **greedy)
    (mine, my_tokens), (reference, their_tokens) = generate_calls
    assert in_place == dynamic and torch.equal(my_tokens, their_tokens)
    assert {type(layer) for layer in mine["cache"].layers} == {InPlaceLayer}
    assert mine["cache"].get_seq_length() == reference["cache"].get_seq_length() == my_tokens.shape[1] - 1


@pytest.mark.parametrize("cache_implementation", ["static", "dynamic"])
def test_generation_with_a_cache_implementation_equals_the_in_place_cache(model, processor, cache_implementation):
    greedy = {"do_sample": False, "max_new_tokens": 8, "min_new_tokens": 8, "return_dict_in_generate": True}
    prompt = encode_dialogues(model, processor, DIALOGUES, add_generation_prompt=True)
    in_place = model.generate(**prompt, **greedy, cache=in_place_cache())
    other = model.generate(**prompt, **greedy, cache_implementation=cache_implementation)
    assert torch.equal(in_place.sequences, other.sequences)


def test_a_cache_the_caller_or_generation_config_sets_is_left_to_generate(model, processor, generate_calls):
    generate_texts(model, processor, DIALOGUES[:1], do_sample=False, max_new_tokens=2, use_cache=False)
    generate_texts(model, processor, DIALOGUES[:1], do_sample=False, max_new_tokens=2, cache_implementation="static")
    model.generation_config.cache_implementation = "dynamic"
    generate_texts(model, processor, DIALOGUES[:1], do_sample=False, max_new_tokens=2)
    assert [("cache" in kwargs) for kwargs, _ in generate_calls] == [False, False, False]


def test_prompt_runs_are_consecutive_and_within_the_budget():
    lengths = [5, 7, 9, 30, 31, 200, 12, 12]
    runs = prompt_runs(lengths, max_tokens=62)
    assert runs == [(0, 3), (3, 5), (5, 6), (6, 8)]
    assert prompt_runs(lengths, max_tokens=1) == [(index, index + 1) for index in range(len(lengths))]
    assert prompt_runs(lengths, max_tokens=10_000) == [(0, len(lengths))]


def test_row_group_attention_reads_only_each_groups_keys():
    torch.manual_seed(0)
    query, key, value = torch.randn(5, 2, 1, 8), torch.randn(5, 2, 9, 8), torch.randn(5, 2, 9, 8)
    groups = ((0, 2, 6), (2, 3, 0), (3, 5, 4))
    mask = torch.ones(5, 1, 1, 9, dtype=torch.bool)
    mask[0, ..., :7] = False  # padding within a group
    for first, end, first_key in groups:
        mask[first:end, ..., :first_key] = False
    expected, _ = sdpa_by_row_groups(torch.nn.Module(), query, key, value, mask)
    for first, end, first_key in groups:  # what a group skips may hold anything
        key[first:end, :, :first_key], value[first:end, :, :first_key] = float("nan"), float("nan")
    grouped, _ = sdpa_by_row_groups(torch.nn.Module(), query, key, value, mask, attention_row_groups=groups)
    torch.testing.assert_close(grouped, expected, rtol=1e-6, atol=1e-6)


@pytest.fixture
def nan_cache_buffers(monkeypatch):
    """Joined caches whose positions no prompt wrote hold NaN, so that attention reading one would show."""
    empty = pipeline_mod.cache_buffers

    def filled(*args):
        return [(keys.fill_(float("nan")), values.fill_(float("nan"))) for keys, values in empty(*args)]

    monkeypatch.setattr(pipeline_mod, "cache_buffers", filled)


def dialogues_by_length(model, processor) -> list[list[dict]]:
    dialogues = [dialogue[:end] for dialogue in DIALOGUES for end in range(1, len(dialogue) + 1)]
    lengths = prompt_lengths(model, processor, dialogues, max_new_tokens=10)
    return [dialogues[index] for index in sorted(range(len(dialogues)), key=lengths.__getitem__)]


def test_prompts_run_apart_decode_together_as_one_padded_batch(model, processor, generate_calls, nan_cache_buffers):
    greedy = {"do_sample": False, "max_new_tokens": 10, "min_new_tokens": 10}
    dialogues = dialogues_by_length(model, processor)
    joined = generate_texts(model, processor, dialogues, max_prompt_tokens=40, **greedy)
    padded = generate_texts(model, processor, dialogues, **greedy)
    (joined_call, joined_tokens), (padded_call, padded_tokens) = generate_calls
    groups = joined_call["attention_row_groups"]
    assert len(groups) > 2 and "attention_row_groups" not in padded_call
    assert [(first, end) for first, end, _ in groups] == prompt_runs(
        prompt_lengths(model, processor, dialogues, 10), 40
    )
    width = padded_tokens.shape[1] - joined_tokens.shape[1]  # the joined batch is padded to its widest run only
    assert torch.equal(joined_tokens[:, -10:], padded_tokens[:, -10:]) and joined == padded
    assert torch.equal(F.pad(joined_tokens, (width, 0), value=processor.tokenizer.pad_token_id), padded_tokens)


@pytest.mark.parametrize("model", ["gpt2"], indirect=True)  # the cached OpenAI-GPT decoder always runs SDPA
def test_decoders_that_cannot_skip_columns_run_one_padded_batch(processor, generate_calls, model):
    model.model.language_model.set_attn_implementation("eager")
    dialogues = dialogues_by_length(model, processor)
    generate_texts(model, processor, dialogues, max_prompt_tokens=40, do_sample=False, max_new_tokens=2)
    generate_texts(model, processor, dialogues, max_prompt_tokens=40, max_new_tokens=2, num_beams=2)
    assert ["attention_row_groups" in kwargs for kwargs, _ in generate_calls] == [False, False]


def test_the_decoder_attention_is_switched_back_even_after_an_error(processor, model, monkeypatch):
    decoder = model.model.language_model
    before = None if model.config.text_config.model_type != "gpt2" else decoder.config._attn_implementation

    def failing(**kwargs):
        if before is not None:
            assert decoder.config._attn_implementation == pipeline_mod.ROW_GROUPS_SDPA
        raise RuntimeError("interrupted")

    monkeypatch.setattr(model, "generate", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_texts(model, processor, dialogues_by_length(model, processor), max_prompt_tokens=40)
    assert before is None or decoder.config._attn_implementation == before == "sdpa"


@pytest.mark.parametrize("max_prompt_tokens", [0, -5, 2.5, True, "512"])
def test_a_bad_prompt_budget_is_refused_before_encoding(model, processor, generate_calls, max_prompt_tokens):
    with pytest.raises(
        ValueError, match=rf"max_prompt_tokens must be a positive integer or None, got {max_prompt_tokens!r}"
    ):
        generate_texts(model, processor, DIALOGUES, max_prompt_tokens=max_prompt_tokens)
    assert generate_calls == []
