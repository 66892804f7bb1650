"""Interleaved timing (A B A B ...) after warm-up, the median and range of repeated measurements, and runs of a
benchmark module in a fresh process."""

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stats:
    """Median and range (min-max) of repeated measurements."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stats":
        return cls(statistics.median(values), min(values), max(values))


def synchronize() -> None:
    """Wait for queued GPU work, so that a timer read afterwards counts it; a CPU-only run has none."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(call: Callable[[], object]) -> float:
    """Seconds one call takes, with the garbage collector run before and kept off during it."""
    gc.collect()
    gc.disable()
    try:
        synchronize()
        start = time.perf_counter()
        call()
        synchronize()
        return time.perf_counter() - start
    finally:
        gc.enable()


def run_child(module: str, *arguments: str, environment: dict[str, str] | None = None) -> tuple[dict, float]:
    """`python -m module arguments...` in a fresh process: the JSON line it prints last, and its wall time in seconds."""
    command = [sys.executable, "-m", module, *arguments]
    start = time.perf_counter()
    completed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, **(environment or {})}
    )
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1]), seconds


def interleaved(sides: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each side, the sides run in turn (A B A B ...) after `warmup` untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(warmup + repeats):
        for name, side in sides.items():
            elapsed = timed(side)
            if round_index >= warmup:
                times[name].append(elapsed)
    return times
