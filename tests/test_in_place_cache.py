"""The in-place KV cache that every front end generates with: the same keys, values and replies as transformers'
`DynamicLayer`, without copying what is cached at each step."""

import pytest
import torch
from conftest import DIALOGUES, tiny_model
from test_openai_gpt_decoder import TEXT_CONFIG as OPENAI_GPT
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from pipeline_mod import InPlaceLayer, encode_dialogues, generate_texts, in_place_cache


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
