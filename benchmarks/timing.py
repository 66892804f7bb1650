"""Interleaved timing (A B A B ...) after warm-up, and the median and range of repeated measurements."""

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    """Median and range (min-max) of repeated measurements."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stats":
        return cls(statistics.median(values), min(values), max(values))

    @classmethod
    def of_ratios(cls, numerators: Sequence[float], denominators: Sequence[float]) -> "Stats":
        """Stats of the ratios of paired measurements (one pair per interleaved round)."""
        return cls.of([numerator / denominator for numerator, denominator in zip(numerators, denominators)])

    def scaled(self, factor: float) -> "Stats":
        return Stats(self.median * factor, self.low * factor, self.high * factor)


def timed(call: Callable[[], object]) -> float:
    """Seconds one call takes, with the garbage collector run before and kept off during it."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start
    finally:
        gc.enable()


def interleaved(sides: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each side, the sides run in turn (A B A B ...) after `warmup` untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(warmup + repeats):
        for name, side in sides.items():
            elapsed = timed(side)
            if round_index >= warmup:
                times[name].append(elapsed)
    return times
