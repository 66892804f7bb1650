"""Row 6: peak memory of training steps with and without gradient checkpointing, each in a fresh process.

CPU tensors are invisible to `tracemalloc` and torch keeps no CPU allocator statistics, so the figure is the
process's resident-set high-water mark. It is read as `VmHWM` from `/proc/self/status` (Linux), reset after setup
through `/proc/self/clear_refs`: `getrusage(...).ru_maxrss` would carry the launching process's larger mark over
fork and exec. Run alone it measures one variant: `python -m benchmarks.memory --size base
[--gradient-checkpointing]` prints a JSON line.
"""

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from .report import Row
from .steps import model_inputs, training_step
from .synthetic import SIZES, build_model, build_processor, dialogue_of_length
from .timing import Stats

BATCH_SIZE = 8
SEQUENCE_LENGTH = 256
STEPS = 2  # the second step holds the optimizer state as well as the activations and gradients
REPO_ROOT = Path(__file__).resolve().parents[1]


def memory_status_mib(field: str) -> float:
    """A memory field of `/proc/self/status` (`VmRSS`, `VmHWM`), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field} line.")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size to the current one


def measure(size_name: str, gradient_checkpointing: bool) -> dict[str, float]:
    """Resident memory before, and its peak during, `STEPS` training steps on 8 x 256 tokens."""
    size = SIZES[size_name]
    processor = build_processor(size)
    model = build_model(size, processor).train()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    rng = random.Random(0)
    batch = model_inputs(model, processor([dialogue_of_length(rng, SEQUENCE_LENGTH) for _ in range(BATCH_SIZE)]))
    step = training_step(model)
    before = memory_status_mib("VmRSS")
    reset_peak_rss()
    for _ in range(STEPS):
        step(batch)
    return {"before_mib": before, "peak_mib": memory_status_mib("VmHWM")}


def measure_in_subprocess(size_name: str, gradient_checkpointing: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.memory", "--size", size_name]
    if gradient_checkpointing:
        command.append("--gradient-checkpointing")
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def peak_memory(size_name: str) -> Row:
    plain = measure_in_subprocess(size_name, gradient_checkpointing=False)
    checkpointed = measure_in_subprocess(size_name, gradient_checkpointing=True)
    return Row(
        title=f"Peak memory of training steps ({BATCH_SIZE} x {SEQUENCE_LENGTH} tokens), gradient checkpointing",
        unit="MiB",
        a_name="without",
        a=Stats.of([plain["peak_mib"]]),
        b_name="with",
        b=Stats.of([checkpointed["peak_mib"]]),
        ratio_name="fraction",
        ratio=Stats.of([checkpointed["peak_mib"] / plain["peak_mib"]]),
        notes=[
            f"peak resident memory (VmHWM) of a fresh process per variant over {STEPS} AdamW steps; above the "
            f"memory before them (model, bank, batch): {plain['peak_mib'] - plain['before_mib']:,.0f} MiB without, "
            f"{checkpointed['peak_mib'] - checkpointed['before_mib']:,.0f} MiB with checkpointing"
        ],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.size, args.gradient_checkpointing)))


if __name__ == "__main__":
    main()
