"""Precision rows, for a GPU (they run on a CPU too): the training step in bf16 against fp32, SDPA against eager
attention, torch.compile against not, and model FLOPs utilisation against the card's bf16 peak. Each variant trains
its own copy of the model on a median `train.py` batch, `STEPS` AdamW steps a round, the variants in turn; bf16 is
autocast over fp32 weights, as `--mixed_precision bf16` trains.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch._dynamo

from modeling_mod_gpt import IGNORE_INDEX, MODGPTForMemeDialogue
from processing_mod import MODProcessor

from .epoch import Window
from .report import Row, comparison_row
from .timing import interleaved, timed
from .training import Batch, collator, training_step

STEPS = 5  # optimizer steps per timed round
# Dense bf16 peaks (FLOP/s, without sparsity) by a word of the device's name; the first that matches is taken.
BF16_PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12))


@dataclass(frozen=True)
class Variant:
    bf16: bool = True
    attention: str = "sdpa"
    compiled: bool = False


VARIANTS = {
    "fp32, SDPA": Variant(bf16=False),
    "bf16, eager attention": Variant(attention="eager"),
    "bf16, SDPA": Variant(),
    "bf16, SDPA, torch.compile": Variant(compiled=True),
}
# Rows comparing two variants (A, B); the compile row is left out when compilation fails.
COMPARISONS = [
    ("precision-bf16", "Training step: bf16 vs fp32 (SDPA)", "fp32, SDPA", "bf16, SDPA"),
    ("precision-attention", "Training step: SDPA vs eager attention (bf16)", "bf16, eager attention", "bf16, SDPA"),
    (
        "precision-compile",
        "Training step: torch.compile vs not (bf16, SDPA)",
        "bf16, SDPA",
        "bf16, SDPA, torch.compile",
    ),
]


def bf16_peak(device: torch.device, override_tflops: float | None) -> float | None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    known = next((peak for word, peak in BF16_PEAKS if word in name), None)
    return override_tflops * 1e12 if override_tflops else known


def per_token_parameters(model: MODGPTForMemeDialogue) -> int:
    """Trainable parameters every token goes through: the decoder blocks (no embeddings, heads or meme projector)."""
    skipped = {
        id(parameter)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Embedding) or name.endswith(("_head", "_projector"))
        for parameter in module.parameters()
    }
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in skipped)


def model_flops(model: MODGPTForMemeDialogue, batch: Batch, window_lengths: list[int]) -> float:
    """
    Training FLOPs of a step (forward and backward) on `batch`, whose real windows have `window_lengths`: the decoder
    blocks (6 x parameters per token), the LM head on the labelled positions, and attention within each window (12 x
    layers x width x length squared), on real tokens only.
    """
    config = model.config.text_config
    labelled = int((batch["labels"] != IGNORE_INDEX).sum())
    attention = 12 * config.num_hidden_layers * config.hidden_size * sum(length**2 for length in window_lengths)
    lm_head = 6 * labelled * config.vocab_size * config.hidden_size
    return 6 * per_token_parameters(model) * sum(window_lengths) + lm_head + attention


def variant_steps(model: MODGPTForMemeDialogue, variant: Variant, batch: Batch, backend: str) -> Callable[[], None]:
    """`STEPS` training steps of a copy of `model` run the variant's way."""
    copied = copy.deepcopy(model).train()
    copied.set_attn_implementation(variant.attention)
    step = training_step(torch.compile(copied, backend=backend) if variant.compiled else copied)

    def steps() -> None:
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=variant.bf16):
            for _ in range(STEPS):
                step(batch)

    return steps


def warmed_up(model: MODGPTForMemeDialogue, batch: Batch, backend: str) -> tuple[dict[str, Callable], list[str]]:
    """Each variant's steps after one untimed round (compilation included), and notes on compiling."""
    runs, notes = {}, []
    for name, variant in VARIANTS.items():
        steps = variant_steps(model, variant, batch, backend)
        try:
            seconds = timed(steps)
        except Exception as error:  # compilation fails in many ways (dynamo, inductor, the compiler); say how
            if not variant.compiled:
                raise
            notes.append(f"{name} skipped: {type(error).__name__}: {' '.join(str(error).split())[:300]}")
            continue
        runs[name] = steps
        if variant.compiled:
            breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
            notes.append(f"{name}: first round with compilation {seconds:.1f} s, {breaks} graph break(s)")
    return runs, notes


def precision_rows(
    model: MODGPTForMemeDialogue,
    processor: MODProcessor,
    windows: list[Window],
    repeats: int,
    compile_backend: str,
    peak_tflops: float | None,
) -> list[Row]:
    """The variants' training steps on the batch of `windows`, timed in turn: three comparisons and the MFU row."""
    batch = collator(model, processor)([window.encoding for window in windows])
    runs, notes = warmed_up(model, batch, compile_backend)
    seconds = {name: [value / STEPS for value in values] for name, values in interleaved(runs, repeats, 0).items()}
    lengths = [window.length for window in windows]
    width = batch["input_ids"].shape[1]
    shape = f"{len(lengths)} windows padded to {width} tokens, {STEPS} AdamW steps a round"
    rows = [
        comparison_row(key, f"{title} ({shape})", (a, seconds[a]), (b, seconds[b]), "tokens/s", sum(lengths))
        for key, title, a, b in COMPARISONS
        if b in seconds
    ]
    flops, peak = model_flops(model, batch, lengths), bf16_peak(model.device, peak_tflops)
    best = next(name for name in ("bf16, SDPA, torch.compile", "bf16, SDPA") if name in seconds)
    peak_note = f"bf16 dense peak {peak / 1e12:,.0f} TFLOP/s" if peak else "no bf16 peak known for this device"
    mfu = comparison_row(
        "precision-mfu",
        f"Model FLOPs utilisation of the bf16 training step ({shape})",
        ("bf16, SDPA", seconds["bf16, SDPA"]),
        (best, seconds[best]),
        "of peak" if peak else "TFLOP/s",
        flops / (peak or 1e12),
        notes=[f"{flops / 1e12:.3g} model TFLOPs a step over {sum(lengths):,} real tokens; {peak_note}", *notes],
    )
    return [*rows, mfu]
