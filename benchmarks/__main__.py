"""Run the benchmark rows at one size, print the table and write it as JSON.

python -m benchmarks [--size tiny|base] [--repeats N] [--rows GROUP ...] [--threads N] [--output results.json]
                     [--update]
"""

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from modeling_mod_gpt import MODGPTForMemeDialogue
from processing_mod import MODProcessor

from .evaluation import evaluation
from .inference import generation, retrieval
from .memory import peak_memory
from .release import release_build
from .report import Row, earlier_records, markdown_table, write_json
from .scaling import scaling_rows
from .synthetic import SIZES, WORKLOADS, build_model, build_processor
from .training import TrainingWork, data_pipeline, mod_vs_plain_gpt2, prepare, training_rows

# Groups of rows in table order, and the keys of the rows each gives.
ROW_KEYS = {
    "training": ["training-per-response-bs1", "training-per-response-batched", "training-padding"],
    "overhead": ["mod-vs-gpt2"],
    "pipeline": ["data-pipeline"],
    "memory": ["memory"],
    "generation": ["generation-cache"],
    "evaluation": ["evaluation"],
    "retrieval": ["retrieval"],
    "release": ["release-build"],
    "scaling": ["scaling-training", "scaling-evaluation"],
}
ORDER = [key for keys in ROW_KEYS.values() for key in keys]


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="tiny", help="model and workload size (default: tiny)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per row, after one warm-up round")
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=list(ROW_KEYS),
        default=list(ROW_KEYS),
        help="groups of rows to run (default: all)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads (default: torch's choice); on a machine shared with other work, 1 often runs faster",
    )
    parser.add_argument("--output", type=Path, default=Path("benchmark_results.json"), help="JSON file to write")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the rows of an existing --output file that this run does not measure",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.update:
        try:
            earlier_records(args.output)  # checked now, not after an hour of measuring
        except ValueError as error:
            parser.error(f"--update: {error}")
    return args


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def benchmarks(size_name: str, repeats: int) -> dict[str, Callable[[], list[Row]]]:
    """Each group's rows, computed on call; the model and the sampled training batches are built once, when needed."""
    size, workload = SIZES[size_name], WORKLOADS[size_name]

    @functools.cache
    def built() -> tuple[MODProcessor, MODGPTForMemeDialogue]:
        processor = build_processor(size)
        return processor, build_model(size, processor)

    @functools.cache
    def work() -> TrainingWork:
        return prepare(built()[1], built()[0], size, workload)

    return {
        "training": lambda: training_rows(built()[1], work(), repeats),
        "overhead": lambda: [mod_vs_plain_gpt2(built()[1], work().packed[0], repeats)],
        "pipeline": lambda: [data_pipeline(built()[1], built()[0], work(), repeats)],
        "memory": lambda: [peak_memory(size_name, torch.get_num_threads())],
        "generation": lambda: [generation(built()[1], built()[0], repeats)],
        "evaluation": lambda: [evaluation(built()[1], built()[0], workload, repeats)],
        "retrieval": lambda: [retrieval(built()[1], repeats)],
        "release": lambda: [release_build(workload.release_fraction, repeats)],
        "scaling": lambda: scaling_rows(workload, repeats),
    }


def run(size_name: str, repeats: int, groups: list[str]) -> list[Row]:
    every = benchmarks(size_name, repeats)
    chosen = [group for group in ROW_KEYS if group in groups]
    rows = []
    for number, group in enumerate(chosen, start=1):
        started = time.perf_counter()
        rows += every[group]()
        progress(f"[{number}/{len(chosen)}] {group}: {time.perf_counter() - started:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rows = run(args.size, args.repeats, args.rows)
    command = " ".join(["python -m benchmarks", *argv])
    written = write_json(args.output, rows, args.size, args.repeats, command, ORDER, args.update)
    print(markdown_table(written))
    progress(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
