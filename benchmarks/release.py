"""Release row: wall time and peak memory of `python -m mod_dataset build` on a paper-profile release, then the time
of `datasets.load_dataset` on what it built, each in a fresh process (`benchmarks.dataset_build`)."""

import os
import tempfile
import time
from pathlib import Path

from mod_dataset.sample import PAPER_PROFILE, make_profile_release

from .dataset_build import CONFIGS
from .report import Row
from .timing import Stats, run_child

BUILD_TARGET_S = 120.0
MEMORY_TARGET_MIB = 2048.0
CHILD = "benchmarks.dataset_build"


def release_build(fraction: float, repeats: int) -> Row:
    """Build the release `repeats` times, each in a fresh process, and load each build with an empty cache."""
    with tempfile.TemporaryDirectory(prefix="mod-release-") as folder:
        start = time.perf_counter()
        raw = make_profile_release(Path(folder) / "raw", fraction)
        generation = time.perf_counter() - start
        builds, loads = [], []
        for round_index in range(repeats):
            out, cache = Path(folder) / "built", Path(folder) / f"cache-{round_index}"
            built, seconds = run_child(CHILD, "build", str(raw), str(out))
            builds.append({**built, "seconds": seconds})
            loads.append(run_child(CHILD, "load", str(out), environment={"HF_DATASETS_CACHE": str(cache)})[0])
    return Row(
        key="release-build",
        title=f"Building the release: `python -m mod_dataset build` on {sum(PAPER_PROFILE.split_sizes(fraction).values()):,} paper-profile "
        f"dialogues and {PAPER_PROFILE.memes} memes, then `load_dataset`",
        unit="s",
        a_name="build",
        a=Stats.of([item["seconds"] for item in builds]),
        b_name="load_dataset (empty cache)",
        b=Stats.of([item["cold_s"] for item in loads]),
        ratio_name="peak memory of the build",
        ratio=Stats.of([item["peak_mib"] for item in builds]),
        ratio_unit="MiB",
        targets={"a": ("<=", BUILD_TARGET_S), "ratio": ("<=", MEMORY_TARGET_MIB)},
        checks_passed=all(item["counts_match"] for item in loads),
        notes=[
            f"each build a fresh process on {os.cpu_count()} cores, wall time from start to exit; peak resident "
            f"memory (VmHWM); the raw release took {generation:.1f} s to generate",
            f"load_dataset of all {len(CONFIGS)} configs: {Stats.of([item['cold_s'] for item in loads]).median:.1f} s "
            f"with an empty cache, {Stats.of([item['warm_s'] for item in loads]).median:.1f} s cached; rows as the "
            f"card declares: {all(item['counts_match'] for item in loads)}",
        ],
    )
