"""Evaluation row: `evaluate_mod.py`'s response generation (batched, KV cache) vs the official inference's way (one
instance at a time, the whole sequence re-run for every new token), on paper-profile validation instances."""

import contextlib
import io
from collections.abc import Iterator

import torch

import evaluate_mod
from mod_dataset.sample import PAPER_PROFILE
from modeling_mod_gpt import DIALOGUE_INPUTS, MODGPTForMemeDialogue
from processing_mod import MODProcessor

from .report import Row
from .synthetic import Workload, response_instances
from .timing import Stats, interleaved, timed

NEW_TOKENS = 32  # evaluate_mod.py's default --max_new_tokens
SAMPLING = {"do_sample": True, "top_p": 0.9, "temperature": 0.7}  # the paper's decoding, as evaluate_mod.py samples
CHECKED_INSTANCES = 2  # greedy outputs compared one at a time without cache against the batched ones


def generate_replies(model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict], batch_size: int) -> None:
    """`evaluate_mod.py`'s response generation, without its progress bar."""
    with contextlib.redirect_stderr(io.StringIO()):
        evaluate_mod.generate_replies(model, processor, rows, batch_size, NEW_TOKENS)


@contextlib.contextmanager
def replies_of_full_length(model: MODGPTForMemeDialogue) -> Iterator[None]:
    """
    Every reply runs to `NEW_TOKENS` tokens (the generation config's `min_new_tokens`, which `generate_replies`
    keeps): a random model ends its replies at random, and both sides must do the same work.
    """
    before = model.generation_config.min_new_tokens
    model.generation_config.min_new_tokens = NEW_TOKENS
    try:
        yield
    finally:
        model.generation_config.min_new_tokens = before


def validation_instances(count: int, seed: int = 0) -> list[dict]:
    """The first `count` task-1 instances of a paper-profile validation split."""
    fraction = min(1.0, 2 * count / PAPER_PROFILE.validation_dialogues)
    instances = response_instances(fraction, ("val",), seed)[:count]
    if len(instances) < count:
        raise ValueError(f"The paper-profile validation split gave {len(instances)} task-1 instances, not {count}.")
    return instances


def prompt_inputs(model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict]) -> dict:
    prompt = model.dialogue_inputs(
        processor, [row["history"] for row in rows], add_generation_prompt=True, max_new_tokens=NEW_TOKENS
    )
    return {key: prompt[key] for key in DIALOGUE_INPUTS}


def generate(model: MODGPTForMemeDialogue, prompt: dict, use_cache: bool, **decoding) -> torch.LongTensor:
    """The new tokens `generate` gives after the prompt."""
    output = model.generate(**prompt, max_new_tokens=NEW_TOKENS, use_cache=use_cache, **decoding)
    return output[:, prompt["input_ids"].shape[1] :]


def prompt_lengths(model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict]) -> list[int]:
    return [int(prompt_inputs(model, processor, [row])["input_ids"].shape[1]) for row in rows]


def batches_of(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def computed_tokens(lengths: list[int], batch_size: int | None) -> int:
    """
    Tokens the decoder runs to generate `NEW_TOKENS` for prompts of `lengths`: one at a time without cache, every
    step re-runs the prompt and what was generated (`batch_size` None); in batches with the cache, the batch's prompts
    padded to the longest, then one token per row and step.
    """
    if batch_size is None:
        return sum(NEW_TOKENS * length + NEW_TOKENS * (NEW_TOKENS - 1) // 2 for length in lengths)
    return sum(len(batch) * (max(batch) + NEW_TOKENS - 1) for batch in batches_of(lengths, batch_size))


@torch.no_grad()
def greedy_agreement(model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict], batch_size: int) -> int:
    """How many of the first `CHECKED_INSTANCES` rows get the same greedy tokens in the first batch, with the cache, as
    alone without it (every row generates all `NEW_TOKENS`)."""
    greedy = {"do_sample": False, "top_p": None, "temperature": None, "min_new_tokens": NEW_TOKENS}
    batched = generate(model, prompt_inputs(model, processor, rows[:batch_size]), True, **greedy)
    alone = [
        generate(model, prompt_inputs(model, processor, [row]), False, **greedy)[0] for row in rows[:CHECKED_INSTANCES]
    ]
    return sum(torch.equal(batched[i], alone[i]) for i in range(len(alone)))


@torch.no_grad()
def evaluation(
    model: MODGPTForMemeDialogue, processor: MODProcessor, workload: Workload, repeats: int, key: str = "evaluation"
) -> Row:
    """
    Responses per second of `evaluate_mod.generate_replies` (dataset order, and sorted by prompt length) against the
    official way, on the same model and instances with the same sampling. The one-at-a-time side runs once (each of its
    responses is already `NEW_TOKENS` forward passes); the batched sides run `repeats` times, in turn.
    """
    model.eval()
    rows = validation_instances(workload.eval_instances)
    batch_size = workload.eval_batch_size
    lengths = prompt_lengths(model, processor, rows)
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    by_length = [rows[i] for i in order]
    prompts = [prompt_inputs(model, processor, batch) for batch in batches_of(rows, batch_size)]
    agreed = greedy_agreement(model, processor, rows, batch_size)

    generated: list[int] = []

    def one_at_a_time() -> None:
        generated.clear()
        for row in rows:
            new = generate(model, prompt_inputs(model, processor, [row]), use_cache=False, **SAMPLING)
            generated.append(new.shape[1])

    def prompt_passes() -> None:
        for prompt in prompts:
            model(**prompt)

    torch.manual_seed(0)
    with replies_of_full_length(model):
        official = timed(one_at_a_time)
        times = interleaved(
            {
                "batched": lambda: generate_replies(model, processor, rows, batch_size),
                "sorted": lambda: generate_replies(model, processor, by_length, batch_size),
                "prompt": prompt_passes,
            },
            repeats,
        )
    count = len(rows)
    official_rate = count / official
    limit = computed_tokens(lengths, None) / computed_tokens(lengths, batch_size)
    sorted_limit = computed_tokens(lengths, None) / computed_tokens(sorted(lengths), batch_size)
    prompt_share = Stats.of_ratios(times["prompt"], times["batched"]).median
    return Row(
        key=key,
        title=f"Evaluation: response generation, evaluate_mod.py (batches of {batch_size}, KV cache) vs one instance "
        f"at a time without cache (the official inference), {NEW_TOKENS} sampled tokens",
        unit="responses/s",
        a_name="one at a time",
        a=Stats.of([official_rate]),
        b_name="evaluate_mod",
        b=Stats.of([count / seconds for seconds in times["batched"]]),
        ratio_name="speed-up",
        ratio=Stats.of([official / seconds for seconds in times["batched"]]),
        targets={"ratio": (">=", 20.0)},
        checks_passed=agreed == CHECKED_INSTANCES,
        notes=[
            f"{count} paper-profile validation instances, prompts of {min(lengths)}-{max(lengths)} tokens "
            f"(mean {sum(lengths) / count:.0f}); the one-at-a-time side ran once "
            f"({official:,.1f} s, {sum(generated)} tokens), the batched sides {len(times['batched'])} time(s)",
            f"batches sorted by prompt length: {count / Stats.of(times['sorted']).median:.3g} responses/s, speed-up "
            f"{official / Stats.of(times['sorted']).median:.3g}",
            f"counting the tokens the decoder runs, the speed-up can reach {limit:.1f} in dataset order and "
            f"{sorted_limit:.1f} sorted by length",
            f"the prompt passes alone take {100 * prompt_share:.0f}% of evaluate_mod's time; the "
            f"{NEW_TOKENS - 1} cached steps the rest",
            f"greedy tokens batched with the cache equal those one at a time without it for {agreed}/"
            f"{CHECKED_INSTANCES} instances",
        ],
    )
