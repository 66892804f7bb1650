"""Inference rows: greedy generation with the KV cache against without it, and evaluation, `evaluate_mod.py`'s
response generation (batches by prompt length, KV cache) against the official inference's way (one instance at a
time, the whole sequence re-run for every new token) on paper-profile validation instances."""

import contextlib
import io
import random

import torch

import evaluate_mod
from modeling_mod_gpt import MODGPTForMemeDialogue
from pipeline_mod import encode_dialogues, prompt_lengths, prompt_runs
from processing_mod import MODProcessor

from .report import Row, comparison_row
from .synthetic import Workload, dialogue_of_length, validation_instances
from .timing import Stats, interleaved, timed

NEW_TOKENS = 32  # evaluate_mod.py's default --max_new_tokens
HISTORY_LENGTH = 200  # the generation row's
OFFICIAL_STRIDE = 4  # the one-at-a-time way runs on every 4th instance by prompt length
GREEDY = {"do_sample": False, "top_p": None, "temperature": None, "min_new_tokens": NEW_TOKENS}


def generate_replies(model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict], batch_size: int) -> None:
    """`evaluate_mod.py`'s response generation with its defaults, without its progress bar."""
    with contextlib.redirect_stderr(io.StringIO()):
        evaluate_mod.generate_replies(model, processor, rows, batch_size, NEW_TOKENS, 0)


def prompt_inputs(model: MODGPTForMemeDialogue, processor: MODProcessor, rows: list[dict]) -> dict:
    histories = [row["history"] for row in rows]
    return encode_dialogues(model, processor, histories, add_generation_prompt=True, max_new_tokens=NEW_TOKENS)


def generate(model: MODGPTForMemeDialogue, prompt: dict, use_cache: bool, **decoding) -> torch.LongTensor:
    """The new tokens `generate` gives after the prompt, with the model's decoding where `decoding` sets none."""
    output = model.generate(**prompt, max_new_tokens=NEW_TOKENS, use_cache=use_cache, **decoding)
    return output[:, prompt["input_ids"].shape[1] :]


def row_key(name: str, model: MODGPTForMemeDialogue) -> str:
    """A row's key, naming the decoder when it is not GPT-2 (`evaluation-openai-gpt`)."""
    decoder = model.config.text_config.model_type
    return name if decoder == "gpt2" else f"{name}-{decoder}"


def computed_tokens(lengths: list[int], passes: list[list[int]] | None) -> int:
    """Tokens the decoder runs to generate `NEW_TOKENS` for prompts of `lengths`: one at a time without cache, every
    step re-runs the prompt and what was generated (`passes` None); with the cache, each prompt pass (a list of
    indices) padded to its longest, then one token per row and step."""
    if passes is None:
        return sum(NEW_TOKENS * length + NEW_TOKENS * (NEW_TOKENS - 1) // 2 for length in lengths)
    return sum(len(rows) * (max(lengths[i] for i in rows) + NEW_TOKENS - 1) for rows in passes)


@torch.no_grad()
def generation(model: MODGPTForMemeDialogue, processor: MODProcessor, repeats: int, seed: int = 0) -> Row:
    """Greedy `generate` of 32 tokens after a 200-token history, with the KV cache vs without it."""
    dialogue = dialogue_of_length(random.Random(seed), HISTORY_LENGTH, generation_prompt=True)
    prompt = encode_dialogues(model, processor, [dialogue], add_generation_prompt=True)
    model.eval()
    outputs: dict[bool, torch.Tensor] = {}

    def greedy(use_cache: bool) -> None:
        outputs[use_cache] = generate(model, prompt, use_cache, **GREEDY)

    times = interleaved({"no cache": lambda: greedy(False), "cache": lambda: greedy(True)}, repeats)
    same, new_tokens = torch.equal(outputs[True], outputs[False]), outputs[True].shape[1]
    return comparison_row(
        row_key("generation-cache", model),
        f"Generation: {NEW_TOKENS} greedy tokens after a {HISTORY_LENGTH}-token history, KV cache vs none "
        f"({model.config.text_config.model_type} decoder)",
        ("use_cache=False", times["no cache"]),
        ("use_cache=True", times["cache"]),
        targets={"ratio": (">=", 3.0)},
        notes=[f"{new_tokens} new tokens, {'identical' if same else 'DIFFERENT'} with and without the cache"],
        checks_passed=same and new_tokens == NEW_TOKENS,
    )


@torch.no_grad()
def evaluation(model: MODGPTForMemeDialogue, processor: MODProcessor, workload: Workload, repeats: int) -> Row:
    """
    Seconds per response of `evaluate_mod.generate_replies` on every instance, `repeats` times, against the official
    way, whose every response is `NEW_TOKENS` forward passes: run once, on every `OFFICIAL_STRIDE`-th instance in
    order of prompt length (the same spread of lengths).
    """
    model.eval()
    rows = validation_instances(workload.eval_instances)
    batch_size, budget = workload.eval_batch_size, evaluate_mod.MAX_BATCH_TOKENS
    lengths = prompt_lengths(model, processor, [row["history"] for row in rows], NEW_TOKENS)
    order = sorted(range(len(rows)), key=lengths.__getitem__)
    official_rows = [rows[i] for i in order[min(OFFICIAL_STRIDE // 2, len(rows) - 1) :: OFFICIAL_STRIDE]]
    batches = [order[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    passes = [batch[start:end] for batch in batches for start, end in prompt_runs([lengths[i] for i in batch], budget)]

    def one_at_a_time() -> None:
        for row in official_rows:
            generate(model, prompt_inputs(model, processor, [row]), use_cache=False)

    def prompt_passes() -> None:  # what each batch starts with: the prompts' passes, less their last tokens
        for rows_of_pass in passes:
            prompt = prompt_inputs(model, processor, [rows[i] for i in rows_of_pass])
            model.model(
                **{name: value[:, :-1] for name, value in prompt.items() if name != "meme_features"},
                meme_features=prompt["meme_features"],
            )

    torch.manual_seed(0)
    # A random model ends its replies at random: both sides run all `NEW_TOKENS` (`generate_replies` keeps this).
    before, model.generation_config.min_new_tokens = model.generation_config.min_new_tokens, NEW_TOKENS
    try:
        official = timed(one_at_a_time) / len(official_rows)
        times = interleaved({"evaluate_mod": lambda: generate_replies(model, processor, rows, batch_size)}, repeats)
    finally:
        model.generation_config.min_new_tokens = before
    seconds = [value / len(rows) for value in times["evaluate_mod"]]
    prompts = timed(prompt_passes) / len(rows)
    sizes, pass_sizes = [len(batch) for batch in batches], [len(rows_of_pass) for rows_of_pass in passes]
    return comparison_row(
        row_key("evaluation", model),
        f"Evaluation: response generation, evaluate_mod.py (batches of {batch_size} rows by prompt length, their "
        f"prompts in passes of at most {budget:,} padded tokens, KV cache) vs one instance at a time without cache "
        f"(the official inference), {NEW_TOKENS} sampled tokens ({model.config.text_config.model_type} decoder)",
        ("one at a time", [official] * len(seconds)),
        ("evaluate_mod", seconds),
        unit="responses/s",
        work=1,
        targets={"ratio": (">=", 20.0)},
        notes=[
            f"{len(rows)} paper-profile validation instances, prompts of {min(lengths)}-{max(lengths)} tokens (mean "
            f"{sum(lengths) / len(rows):.0f}); one at a time: {len(official_rows)} of them, every "
            f"{OFFICIAL_STRIDE}th by prompt length, run once ({official:.2f} s a response)",
            f"evaluate_mod: {len(sizes)} batches of {min(sizes)}-{max(sizes)} rows, their prompts in {len(passes)} "
            f"passes of {min(pass_sizes)}-{max(pass_sizes)} rows; counting the tokens the decoder runs, a speed-up "
            f"of at most {computed_tokens(lengths, None) / computed_tokens(lengths, passes):.1f}; "
            f"its prompt passes take {prompts * 1000:.0f} ms a response "
            f"({100 * prompts / Stats.of(seconds).median:.0f}% of its time)",
        ],
    )
