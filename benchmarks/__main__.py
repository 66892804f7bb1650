"""Run the benchmark rows at one size on one device, print the table and write it as JSON.

python -m benchmarks [--size tiny|base] [--device cpu|cuda] [--repeats N] [--rows GROUP ...] [--threads N]
                     [--compile_backend NAME] [--peak_tflops N] [--output results.json] [--update]
"""

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from .epoch import sample_batches
from .inference import evaluation, generation
from .memory import cpu_peak_memory, cuda_peak_memory
from .precision import COMPARISONS, precision_rows
from .release import release_build
from .report import Row, earlier_records, markdown_table, write_json
from .synthetic import SIZES, WORKLOADS, build_model, build_processor
from .training import mod_vs_plain_gpt2, prepare, training_rows

# Groups of rows in table order, and the keys of the rows each gives.
ROW_KEYS = {
    "training": ["training-per-response-bs1", "training-per-response-batched"],
    "overhead": ["mod-vs-gpt2"],
    "memory": ["memory"],
    "generation": ["generation-cache"],
    "evaluation": ["evaluation"],
    "release": ["release-build"],
    "openai-gpt": ["generation-cache-openai-gpt", "evaluation-openai-gpt"],  # CDial-GPT's decoder
    "precision": [key for key, *_ in COMPARISONS] + ["precision-mfu"],
}
ORDER = [key for keys in ROW_KEYS.values() for key in keys]


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="model and workload size")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per row, after one warm-up round")
    parser.add_argument("--rows", nargs="+", choices=list(ROW_KEYS), default=list(ROW_KEYS), help="groups to run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (shared CPU: 1)")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend of the precision rows")
    parser.add_argument("--peak_tflops", type=float, help="the device's dense bf16 peak, if not recognised")
    parser.add_argument("--output", type=Path, default=Path("benchmark_results.json"), help="JSON file to write")
    parser.add_argument("--update", action="store_true", help="keep the rows of --output that this run does not run")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.update:
        try:
            earlier_records(args.output)  # checked now, not after an hour of measuring
        except ValueError as error:
            parser.error(f"--update: {error}")
    return args


def benchmarks(args: argparse.Namespace) -> dict[str, Callable[[], list[Row]]]:
    """Each group's rows, computed on call; the model and the sampled training batches are built once, when needed."""
    size, workload, repeats = SIZES[args.size], WORKLOADS[args.size], args.repeats

    @functools.cache
    def processor():
        return build_processor(size)

    @functools.cache
    def model():
        return build_model(size, processor()).to(args.device)

    @functools.cache
    def openai_gpt():
        return build_model(size, processor(), decoder_type="openai-gpt").to(args.device)

    @functools.cache
    def work():
        return prepare(model(), processor(), size, workload)

    def memory() -> list[Row]:
        if args.device == "cuda":
            return [cuda_peak_memory(model(), processor())]
        return [cpu_peak_memory(args.size, torch.get_num_threads())]

    def precision() -> list[Row]:
        (windows,) = sample_batches(work().epoch, workload.precision_batch_size, 1)
        return precision_rows(model(), processor(), windows, repeats, args.compile_backend, args.peak_tflops)

    return {
        "training": lambda: training_rows(model(), work(), repeats),
        "overhead": lambda: [mod_vs_plain_gpt2(model(), work().packed[0], repeats)],
        "memory": memory,
        "generation": lambda: [generation(model(), processor(), repeats)],
        "evaluation": lambda: [evaluation(model(), processor(), workload, repeats)],
        "release": lambda: [release_build(workload.release_fraction, repeats)],
        "precision": precision,
        "openai-gpt": lambda: [
            generation(openai_gpt(), processor(), repeats),
            evaluation(openai_gpt(), processor(), workload, repeats),
        ],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    every, chosen, rows = benchmarks(args), [group for group in ROW_KEYS if group in args.rows], []
    for number, group in enumerate(chosen, start=1):
        started = time.perf_counter()
        rows += every[group]()
        print(f"[{number}/{len(chosen)}] {group}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    header = {
        "command": " ".join(["python -m benchmarks", *argv]),
        "size": args.size,
        "repeats": args.repeats,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({args.threads} threads)",
    }
    written = write_json(args.output, rows, header, ORDER, args.update)
    print(markdown_table(written))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
