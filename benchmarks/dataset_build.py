"""The child processes of the release row, which import no torch: `python -m mod_dataset build` measured, and
`datasets.load_dataset` on what it built.

    python -m benchmarks.dataset_build build RAW_DIR OUT_DIR [--profile]   # prints a JSON line
    python -m benchmarks.dataset_build load OUT_DIR                         # every config, cold then cached

`build` runs `python -m mod_dataset build` itself, through its `main`, then reads the process's peak resident
memory (`VmHWM`); `--profile` prints where its time goes (cProfile's top functions) to stderr.
"""

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import datasets

from mod_dataset import expected_counts
from mod_dataset.__main__ import main as mod_dataset_main

CONFIGS = ("dialogues", "memes", "response", "retrieval", "emotion")
PROFILE_LINES = 25


def memory_status_mib(field: str) -> float:
    """A memory field of `/proc/self/status` (`VmRSS`, `VmHWM`: the resident set and its peak), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field} line.")


def build(raw_dir: str, out_dir: str, profile: bool = False) -> dict:
    profiler = cProfile.Profile()
    with contextlib.redirect_stdout(io.StringIO()), profiler if profile else contextlib.nullcontext():
        status = mod_dataset_main(["build", raw_dir, out_dir])
    if profile:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(PROFILE_LINES)
    if status != 0:
        raise RuntimeError(f"python -m mod_dataset build {raw_dir} {out_dir} exited with {status}.")
    return {"peak_mib": memory_status_mib("VmHWM")}


def load(out_dir: str) -> dict:
    """Seconds to load every config with an empty `datasets` cache (Arrow files written), then with it filled."""
    datasets.disable_progress_bars()
    seconds, rows = [], {}
    for _ in range(2):
        start = time.perf_counter()
        loaded = {config: datasets.load_dataset(out_dir, config) for config in CONFIGS}
        seconds.append(time.perf_counter() - start)
        rows = {config: {split: len(data) for split, data in splits.items()} for config, splits in loaded.items()}
    return {"cold_s": seconds[0], "warm_s": seconds[1], "counts_match": rows == expected_counts(out_dir)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_command = commands.add_parser("build")
    build_command.add_argument("raw_dir")
    build_command.add_argument("out_dir")
    build_command.add_argument("--profile", action="store_true", help="print cProfile's top functions to stderr")
    load_command = commands.add_parser("load")
    load_command.add_argument("out_dir")
    args = parser.parse_args(argv)
    result = build(args.raw_dir, args.out_dir, args.profile) if args.command == "build" else load(args.out_dir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
