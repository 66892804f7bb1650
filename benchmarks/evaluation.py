"""Evaluation row: `evaluate_mod.py`'s response generation (batched, KV cache) vs the official inference's way (one
instance at a time, the whole sequence re-run for every new token), on paper-profile validation instances."""

import contextlib
import io
from collections.abc import Iterator

import torch

import evaluate_mod
from mod_dataset.sample import PAPER_PROFILE
from modeling_mod_gpt import MODGPTForMemeDialogue
from pipeline_mod import encode_dialogues
from processing_mod import MODProcessor

from .report import Row
from .steps import synchronize
from .synthetic import Workload, response_instances
from .timing import Stats, interleaved, timed

NEW_TOKENS = 32  # evaluate_mod.py's default --max_new_tokens
CHECKED_INSTANCES = 2  # instances whose logits are compared batched with the cache and alone without it
LOGITS_TOLERANCE = 1e-3
OFFICIAL_STRIDE = 4  # the one-at-a-time way runs on every 4th instance by prompt length
PREVIOUS_BATCH_SIZE = 16  # evaluate_mod.py's batches before they were grouped by length


def generate_replies(
    model: MODGPTForMemeDialogue,
    processor: MODProcessor,
    rows: list[dict],
    batch_size: int,
    max_batch_tokens: int | None = evaluate_mod.MAX_BATCH_TOKENS,
) -> None:
    """`evaluate_mod.py`'s response generation (its batches by prompt length, its defaults), without its progress
    bar."""
    with contextlib.redirect_stderr(io.StringIO()):
        evaluate_mod.generate_replies(model, processor, rows, batch_size, NEW_TOKENS, 0, max_batch_tokens)


def fixed_batches(model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict]) -> None:
    """The way `evaluate_mod.py` batched before: batches of `PREVIOUS_BATCH_SIZE` in dataset order, each padded to its
    longest (its own generation, run on one such batch at a time, with no token budget)."""
    for batch in batches_of(rows, PREVIOUS_BATCH_SIZE):
        generate_replies(model, processor, batch, PREVIOUS_BATCH_SIZE, None)


def batches_of(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


@contextlib.contextmanager
def generation_defaults(model: MODGPTForMemeDialogue, **defaults) -> Iterator[None]:
    """Set fields of the model's generation config, which `generate_replies` keeps where it passes nothing."""
    before = {name: getattr(model.generation_config, name) for name in defaults}
    model.generation_config.update(**defaults)
    try:
        yield
    finally:
        model.generation_config.update(**before)


def replies_of_full_length(model: MODGPTForMemeDialogue) -> contextlib.AbstractContextManager:
    """Every reply runs to `NEW_TOKENS` tokens: a random model ends its replies at random, and both sides must do the
    same work."""
    return generation_defaults(model, min_new_tokens=NEW_TOKENS)


def validation_instances(count: int, seed: int = 0) -> list[dict]:
    """The first `count` task-1 instances of a paper-profile validation split."""
    fraction = min(1.0, 2 * count / PAPER_PROFILE.validation_dialogues)
    instances = response_instances(fraction, ("val",), seed)[:count]
    if len(instances) < count:
        raise ValueError(f"The paper-profile validation split gave {len(instances)} task-1 instances, not {count}.")
    return instances


def prompt_inputs(model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict]) -> dict:
    prompt = encode_dialogues(
        model, processor, [row["history"] for row in rows], add_generation_prompt=True, max_new_tokens=NEW_TOKENS
    )
    return prompt


def generate(model: MODGPTForMemeDialogue, prompt: dict, use_cache: bool, **decoding) -> torch.LongTensor:
    """The new tokens `generate` gives after the prompt."""
    output = model.generate(**prompt, max_new_tokens=NEW_TOKENS, use_cache=use_cache, **decoding)
    return output[:, prompt["input_ids"].shape[1] :]


def prompt_passes(model: MODGPTForMemeDialogue, processor: MODProcessor, batches: list[list[dict]]) -> None:
    """The forward passes over the padded prompts that `generate` starts each batch with (the LM head on the last
    position only, as `generate` asks)."""
    for batch in batches:
        model(**prompt_inputs(model, processor, batch), logits_to_keep=1)
    synchronize(model.device)


def prompt_lengths(model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict]) -> list[int]:
    return evaluate_mod.prompt_lengths(model, processor, rows, NEW_TOKENS)


def computed_tokens(lengths: list[int], batches: int | list[list[int]] | None) -> int:
    """
    Tokens the decoder runs to generate `NEW_TOKENS` for prompts of `lengths`: one at a time without cache, every
    step re-runs the prompt and what was generated (`batches` None); in `batches` (lists of indices, or a batch size:
    batches in order) with the cache, each batch's prompts padded to the longest, then one token per row and step.
    """
    if isinstance(batches, int):
        batches = batches_of(list(range(len(lengths))), batches)
    if batches is None:
        return sum(NEW_TOKENS * length + NEW_TOKENS * (NEW_TOKENS - 1) // 2 for length in lengths)
    return sum(len(batch) * (max(lengths[i] for i in batch) + NEW_TOKENS - 1) for batch in batches)


@torch.no_grad()
def cache_logits_gap(
    model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict], batch_size: int
) -> float:
    """
    The largest gap between the logits of each step of a greedy `generate` over the first batch, left-padded with the
    cache, and those of one forward pass without cache over each of the first `CHECKED_INSTANCES` rows alone followed
    by the same generated tokens: both ways compute the same thing (a gap, unlike a token that differs, does not grow
    from an argmax that float rounding tips).
    """
    prompt = prompt_inputs(model, processor, rows[:batch_size])
    greedy = {"do_sample": False, "top_p": None, "temperature": None, "min_new_tokens": NEW_TOKENS}
    output = model.generate(
        **prompt, max_new_tokens=NEW_TOKENS, output_logits=True, return_dict_in_generate=True, **greedy
    )
    new_tokens = output.sequences[:, prompt["input_ids"].shape[1] :]
    batched_logits = torch.stack(output.logits, dim=1)
    gaps = []
    for index, row in enumerate(rows[:CHECKED_INSTANCES]):
        alone = prompt_inputs(model, processor, [row])
        length = alone["input_ids"].shape[1]
        continued = new_tokens[index : index + 1, :-1]
        segment = alone["token_type_ids"][:, -1:].expand_as(continued)  # generation carries the last segment on
        logits = model(
            input_ids=torch.cat([alone["input_ids"], continued], dim=1),
            attention_mask=torch.ones(1, length + continued.shape[1], dtype=torch.long, device=model.device),
            token_type_ids=torch.cat([alone["token_type_ids"], segment], dim=1),
            meme_features=alone["meme_features"],
            use_cache=False,
        ).logits[0, length - 1 :]
        gaps.append((logits - batched_logits[index]).abs().max().item())
    return max(gaps)


def per_response(seconds: list[float], count: int) -> list[float]:
    return [value / count for value in seconds]


@torch.no_grad()
def evaluation(
    model: MODGPTForMemeDialogue, processor: MODProcessor, workload: Workload, repeats: int, key: str = "evaluation"
) -> Row:
    """
    Responses per second of `evaluate_mod.generate_replies` (batches by prompt length within its token budget, the
    original order restored) against the official way, on the same model with the same sampling, and of two other
    batchings of the same code: batches of the same rows sorted by length without a token budget, and the batches of
    the dataset's order that `evaluate_mod.py` ran before. The batched ways generate for every instance, `repeats`
    times in turn. The one-at-a-time way, whose every response is `NEW_TOKENS` forward passes, runs once, on every
    `OFFICIAL_STRIDE`-th instance in order of prompt length (the same spread of lengths); the speed-up compares
    seconds per response.
    """
    model.eval()
    rows = validation_instances(workload.eval_instances)
    batch_size, budget = workload.eval_batch_size, evaluate_mod.MAX_BATCH_TOKENS
    lengths = prompt_lengths(model, processor, rows)
    by_length = [rows[i] for i in sorted(range(len(rows)), key=lengths.__getitem__)]
    official_rows = by_length[min(OFFICIAL_STRIDE // 2, len(rows) - 1) :: OFFICIAL_STRIDE]
    gap = cache_logits_gap(model, processor, rows, batch_size)
    batchings = {
        "evaluate_mod": evaluate_mod.length_batches(lengths, batch_size, budget),
        "sorted": evaluate_mod.length_batches(lengths, batch_size, None),
        "dataset order": batches_of(list(range(len(rows))), PREVIOUS_BATCH_SIZE),
    }

    def one_at_a_time() -> None:
        for row in official_rows:  # the model's decoding (its generation config), as evaluate_mod.py samples
            generate(model, prompt_inputs(model, processor, [row]), use_cache=False)
        synchronize(model.device)

    torch.manual_seed(0)
    with replies_of_full_length(model):
        official = timed(one_at_a_time) / len(official_rows)
        times = interleaved(
            {
                "evaluate_mod": lambda: generate_replies(model, processor, rows, batch_size),
                "sorted": lambda: generate_replies(model, processor, rows, batch_size, None),
                "dataset order": lambda: fixed_batches(model, processor, rows),
            },
            repeats,
        )
    seconds = {way: per_response(values, len(rows)) for way, values in times.items()}
    prompts = {
        way: timed(lambda batches=batches: prompt_passes(model, processor, [[rows[i] for i in b] for b in batches]))
        / len(rows)
        for way, batches in batchings.items()
    }
    alone = computed_tokens(lengths, None)

    def way_note(way: str, name: str) -> str:
        median = Stats.of(seconds[way]).median
        return (
            f"{name}: {1 / median:.3g} responses/s, speed-up {official / median:.3g} (counting the tokens the decoder "
            f"runs, at most {alone / computed_tokens(lengths, batchings[way]):.1f}); its prompt passes "
            f"{prompts[way] * 1000:.0f} ms a response ({100 * prompts[way] / median:.0f}% of its time)"
        )

    sizes = [len(batch) for batch in batchings["evaluate_mod"]]
    return Row(
        key=key,
        title=f"Evaluation: response generation, evaluate_mod.py (batches by prompt length, at most {batch_size} rows "
        f"and {budget:,} padded prompt tokens, KV cache) vs one instance at a time without cache (the official "
        f"inference), {NEW_TOKENS} sampled tokens",
        unit="responses/s",
        a_name="one at a time",
        a=Stats.of([1 / official]),
        b_name="evaluate_mod",
        b=Stats.of([1 / value for value in seconds["evaluate_mod"]]),
        ratio_name="speed-up",
        ratio=Stats.of([official / value for value in seconds["evaluate_mod"]]),
        targets={"ratio": (">=", 20.0)},
        checks_passed=gap <= LOGITS_TOLERANCE,
        notes=[
            f"{len(rows)} paper-profile validation instances, prompts of {min(lengths)}-{max(lengths)} tokens (mean "
            f"{sum(lengths) / len(rows):.0f}); one at a time: {len(official_rows)} of them, every "
            f"{OFFICIAL_STRIDE}th by prompt length, run once ({official:.2f} s a response); the batched ways "
            f"{len(times['evaluate_mod'])} time(s) each, all through evaluate_mod.generate_replies",
            way_note(
                "evaluate_mod",
                f"evaluate_mod, {len(sizes)} batches by length of {min(sizes)}-{max(sizes)} rows within {budget:,} "
                "padded prompt tokens",
            ),
            way_note("sorted", f"batches of {batch_size} sorted by prompt length, no token budget"),
            way_note("dataset order", f"batches of {PREVIOUS_BATCH_SIZE} in dataset order (evaluate_mod.py before)"),
            f"logits of {NEW_TOKENS} greedy steps batched with the cache against one pass without it, for "
            f"{CHECKED_INSTANCES} instances: largest gap {gap:.1e} "
            f"({'within' if gap <= LOGITS_TOLERANCE else 'OVER'} tolerance {LOGITS_TOLERANCE:g})",
        ],
    )
