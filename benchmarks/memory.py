"""Peak memory of training steps with and without gradient checkpointing: on a CPU, the resident-set high-water mark
(`VmHWM`, reset after setup) of a fresh process per variant, as torch keeps no CPU allocator statistics and
`ru_maxrss` carries the launching process's mark over fork and exec; on a GPU, `torch.cuda.max_memory_allocated`.
Run alone it measures one CPU variant: `python -m benchmarks.memory --size base [--gradient_checkpointing]`.
"""

import argparse
import json
import random
from pathlib import Path

import torch

from modeling_mod_gpt import MODGPTForMemeDialogue
from processing_mod import MODProcessor

from .dataset_build import memory_status_mib  # a module without torch, so that the build's child can read it too
from .report import Row
from .synthetic import SIZES, build_model, build_processor, dialogue_of_length
from .timing import Stats, run_child
from .training import Batch, to_device, training_step

BATCH_SIZE = 8
SEQUENCE_LENGTH = 256
STEPS = 2  # the second step holds the optimizer state as well as the activations and gradients


def memory_batch(model: MODGPTForMemeDialogue, processor: MODProcessor, seed: int = 0) -> Batch:
    """8 dialogues of exactly 256 tokens on the model's device, with their meme ids (the model looks them up)."""
    rng = random.Random(seed)
    inputs = dict(processor([dialogue_of_length(rng, SEQUENCE_LENGTH) for _ in range(BATCH_SIZE)], label_turns="all"))
    meme_ids = inputs.pop("meme_ids")
    return {**to_device(inputs, model.device), "meme_ids": meme_ids}


def training_steps(model: MODGPTForMemeDialogue, batch: Batch, gradient_checkpointing: bool) -> None:
    """`STEPS` AdamW steps, under bf16 autocast on a GPU; the model is left without gradient checkpointing."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    step = training_step(model.train())
    for _ in range(STEPS):
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=model.device.type == "cuda"):
            step(batch)
    if gradient_checkpointing:
        model.gradient_checkpointing_disable()


def measure(size_name: str, gradient_checkpointing: bool, threads: int) -> dict[str, float]:
    """Resident memory before, and its peak during, the training steps on 8 x 256 tokens (in the calling process)."""
    torch.set_num_threads(threads)
    size = SIZES[size_name]
    processor = build_processor(size)
    model = build_model(size, processor)
    batch = memory_batch(model, processor)
    before = memory_status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size to the current one
    training_steps(model, batch, gradient_checkpointing)
    return {"before_mib": before, "peak_mib": memory_status_mib("VmHWM")}


def memory_row(without: float, with_checkpointing: float, note: str) -> Row:
    title = f"Peak memory of training steps ({BATCH_SIZE} x {SEQUENCE_LENGTH} tokens), gradient checkpointing"
    a, b, fraction = (Stats.of([value]) for value in (without, with_checkpointing, with_checkpointing / without))
    return Row("memory", title, "MiB", "without", a, "with", b, "fraction", fraction, notes=[note])


def cpu_peak_memory(size_name: str, threads: int) -> Row:
    arguments = ["--size", size_name, "--threads", str(threads)]
    plain, _ = run_child("benchmarks.memory", *arguments)
    checkpointed, _ = run_child("benchmarks.memory", *arguments, "--gradient_checkpointing")
    return memory_row(
        plain["peak_mib"],
        checkpointed["peak_mib"],
        f"peak resident memory (VmHWM) of a fresh process per variant over {STEPS} AdamW steps; above the memory "
        f"before them (model, bank, batch): {plain['peak_mib'] - plain['before_mib']:,.0f} MiB without, "
        f"{checkpointed['peak_mib'] - checkpointed['before_mib']:,.0f} MiB with checkpointing",
    )


def cuda_peak_memory(model: MODGPTForMemeDialogue, processor: MODProcessor) -> Row:
    batch, peaks = memory_batch(model, processor), []
    for gradient_checkpointing in (False, True):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(model.device)
        training_steps(model, batch, gradient_checkpointing)
        peaks.append(torch.cuda.max_memory_allocated(model.device) / 2**20)
    return memory_row(
        *peaks,
        f"torch.cuda.max_memory_allocated over {STEPS} AdamW steps under bf16 autocast, the model and its optimizer "
        "state included",
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
