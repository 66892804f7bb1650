"""Run every benchmark row at one size, print the table and write it as JSON.

python -m benchmarks [--size tiny|base] [--repeats N] [--output results.json]
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import transformers

from .inference import generation, retrieval
from .memory import peak_memory
from .report import Row, markdown_table, write_json
from .steps import model_inputs
from .synthetic import SIZES, build_model, build_processor, make_dialogues
from .training import data_pipeline, mod_vs_plain_gpt2, packed_vs_per_response


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="model size (default: tiny)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per row, after one warm-up round")
    parser.add_argument("--output", type=Path, default=Path("benchmark_results.json"), help="JSON file to write")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(size_name: str, repeats: int) -> list[Row]:
    size = SIZES[size_name]
    processor = build_processor(size)
    model = build_model(size, processor)
    dialogues = make_dialogues(size.batch_size)
    batch = model_inputs(model, processor(dialogues))
    rows = []
    for name, benchmark in [
        ("packed vs per-response training", lambda: packed_vs_per_response(model, processor, dialogues, repeats)),
        ("MOD-GPT vs GPT-2 step", lambda: mod_vs_plain_gpt2(model, batch, repeats)),
        ("generation", lambda: generation(model, processor, repeats)),
        ("retrieval", lambda: retrieval(model, repeats)),
        ("data pipeline", lambda: data_pipeline(model, processor, dialogues, repeats)),
        ("peak memory", lambda: peak_memory(size_name)),
    ]:
        started = time.perf_counter()
        rows.append(benchmark())
        progress(f"[{len(rows)}/6] {name}: {time.perf_counter() - started:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    rows = run(args.size, args.repeats)
    table = markdown_table(rows)
    print(table)
    write_json(args.output, rows, args.size, args.repeats, " ".join(["python -m benchmarks", *argv]))
    progress(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
