"""Where the time goes, by torch.profiler: one batch of `evaluate_mod.py`'s generation against one response generated
the official way, and a packed training step. Prints, for each, the wall time, the shares of the LM head, the other
matrix products and attention, and the top operators.

    python -m benchmarks.profiles evaluation [--size base] [--threads 1] [--top 12]
    python -m benchmarks.profiles training [--size base] [--threads 1]

The build of a release is profiled by `python -m benchmarks.dataset_build build RAW OUT --profile` (cProfile).
"""

import argparse
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from .evaluation import (
    generate,
    generate_replies,
    prompt_inputs,
    prompt_lengths,
    replies_of_full_length,
    validation_instances,
)
from .steps import training_step
from .synthetic import SIZES, WORKLOADS, build_model, build_processor
from .training import prepare

MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm")
ATTENTION = "scaled_dot_product"


def profiled(call: Callable[[], object]) -> tuple[float, torch.profiler.profile]:
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        call()
    return time.perf_counter() - started, profiler


def summary(title: str, seconds: float, profiler: torch.profiler.profile, vocab_size: int, top: int) -> str:
    """Wall time, the time of operators by kind (self CPU time), and the top operators."""
    events = profiler.key_averages(group_by_input_shape=True)
    total = sum(event.self_cpu_time_total for event in events) / 1e6

    def share(matches: Callable) -> float:
        return sum(event.self_cpu_time_total for event in events if matches(event)) / 1e6 / seconds

    def lm_head(event) -> bool:
        return event.key in MATRIX_PRODUCTS and any(vocab_size in shape for shape in event.input_shapes if shape)

    lines = [
        f"== {title}: {seconds:.2f} s wall, {total:.2f} s in operators ({100 * (1 - total / seconds):.0f}% of the wall "
        "time outside them: Python, generation logic)",
        f"   LM head {100 * share(lm_head):.0f}%, other matrix products "
        f"{100 * share(lambda e: e.key in MATRIX_PRODUCTS and not lm_head(e)):.0f}%, attention "
        f"{100 * share(lambda e: ATTENTION in e.key):.0f}%",
        profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=top),
    ]
    return "\n".join(lines)


def evaluation_profile(size_name: str, top: int) -> None:
    size, workload = SIZES[size_name], WORKLOADS[size_name]
    processor = build_processor(size)
    model = build_model(size, processor).eval()
    rows = validation_instances(workload.eval_instances)
    batch = rows[: workload.eval_batch_size]
    lengths = prompt_lengths(model, processor, batch)
    alone = batch[lengths.index(sorted(lengths)[len(lengths) // 2])]  # the median prompt
    vocab = model.config.text_config.vocab_size
    with torch.no_grad(), replies_of_full_length(model):
        generate_replies(model, processor, batch[:1], 1)  # warm-up
        batched = profiled(lambda: generate_replies(model, processor, batch, len(batch), None))
        official = profiled(lambda: generate(model, prompt_inputs(model, processor, [alone]), False))
    print(f"prompts of the batch: {sorted(lengths)} tokens (padded to {max(lengths)})")
    print(summary(f"evaluate_mod, a batch of {len(batch)}", *batched, vocab, top))
    print(
        summary(
            f"one response the official way (prompt of {prompt_lengths(model, processor, [alone])[0]})",
            *official,
            vocab,
            top,
        )
    )


def training_profile(size_name: str, top: int) -> None:
    size, workload = SIZES[size_name], WORKLOADS[size_name]
    processor = build_processor(size)
    model = build_model(size, processor).train()
    work = prepare(model, processor, size, workload)
    step = training_step(model)
    step(work.packed[0])  # warm-up, and the optimizer's state
    print(
        summary(
            "a packed training step", *profiled(lambda: step(work.packed[0])), model.config.text_config.vocab_size, top
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiles", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["evaluation", "training"])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    (evaluation_profile if args.what == "evaluation" else training_profile)(args.size, args.top)


if __name__ == "__main__":
    main()
