"""Peak memory of training steps with and without gradient checkpointing, each in a fresh process.

The figure is the process's resident-set high-water mark (see `resident`), reset after setup. Run alone it measures
one variant: `python -m benchmarks.memory --size base [--gradient_checkpointing]` prints a JSON line.
"""

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import torch

from modeling_mod_gpt import MODGPTForMemeDialogue
from processing_mod import MODProcessor

from .report import Row
from .resident import memory_status_mib, reset_peak_rss
from .steps import Batch, model_inputs, training_step
from .synthetic import SIZES, build_model, build_processor, dialogue_of_length
from .timing import Stats

BATCH_SIZE = 8
SEQUENCE_LENGTH = 256
STEPS = 2  # the second step holds the optimizer state as well as the activations and gradients
REPO_ROOT = Path(__file__).resolve().parents[1]


def memory_batch(model: MODGPTForMemeDialogue, processor: MODProcessor, seed: int = 0) -> Batch:
    """8 dialogues of exactly 256 tokens, their memes' features looked up."""
    rng = random.Random(seed)
    dialogues = [dialogue_of_length(rng, SEQUENCE_LENGTH) for _ in range(BATCH_SIZE)]
    return model_inputs(model, processor(dialogues, label_turns="all"))


def measure(size_name: str, gradient_checkpointing: bool, threads: int) -> dict[str, float]:
    """Resident memory before, and its peak during, `STEPS` training steps on 8 x 256 tokens."""
    torch.set_num_threads(threads)
    size = SIZES[size_name]
    processor = build_processor(size)
    model = build_model(size, processor).train()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    batch = memory_batch(model, processor)
    step = training_step(model)
    before = memory_status_mib("VmRSS")
    reset_peak_rss()
    for _ in range(STEPS):
        step(batch)
    return {"before_mib": before, "peak_mib": memory_status_mib("VmHWM")}


def measure_in_subprocess(size_name: str, gradient_checkpointing: bool, threads: int) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.memory", "--size", size_name, "--threads", str(threads)]
    if gradient_checkpointing:
        command.append("--gradient_checkpointing")
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def peak_memory(size_name: str, threads: int) -> Row:
    plain = measure_in_subprocess(size_name, gradient_checkpointing=False, threads=threads)
    checkpointed = measure_in_subprocess(size_name, gradient_checkpointing=True, threads=threads)
    return Row(
        key="memory",
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
    parser.add_argument("--gradient_checkpointing", "--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.size, args.gradient_checkpointing, args.threads)))


if __name__ == "__main__":
    main()
