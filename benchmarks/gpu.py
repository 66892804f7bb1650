"""GPU rows: the base training step in bf16 against fp32, SDPA against eager attention, torch.compile, padding-free
rows (and flash attention where `flash-attn` is installed), model FLOPs utilisation against the card's bf16 peak, peak
memory by `torch.cuda.max_memory_allocated`, and evaluation's response generation.

    python -m benchmarks.gpu --output BENCHMARKS_gpu.json                  # base size, on the GPU: a few minutes
    python -m benchmarks.gpu --device cpu --size tiny --compile_backend eager --repeats 1 --batch_size 2 \
        --eval_instances 2 --threads 1                                      # the same code on a CPU, in seconds

Each training variant runs `--repeats` rounds of `STEPS` optimizer steps on the same batch: a median-sized batch of
`--batch_size` paper-profile windows as `train.py` groups them (or the same windows packed into rows). Model FLOPs
count the decoder blocks (6 x parameters per token), the LM head on the labelled positions, and attention within each
window (12 x layers x width x length squared), on real tokens only.
"""

import argparse
import contextlib
import copy
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._dynamo
import transformers

from mod_training.data import DialogueCollator
from modeling_mod_gpt import IGNORE_INDEX, MODGPTForMemeDialogue
from processing_mod import MODProcessor

from .epoch import epoch_windows, sample_batches
from .evaluation import evaluation
from .memory import BATCH_SIZE, SEQUENCE_LENGTH, memory_batch
from .packing import PackedCollator, pack_windows
from .report import Row, markdown_table, write_json
from .steps import Batch, synchronize, training_step
from .synthetic import MAX_LENGTH, SIZES, WORKLOADS, build_model, build_processor, paper_release
from .timing import Stats

STEPS = 5  # optimizer steps per timed round
WARMUP_STEPS = 3
EPOCH_FRACTION = 1 / 16  # the epoch whose median batch is timed
EVAL_BATCH_SIZE = 16  # evaluate_mod.py's default
# Dense bf16 peaks (FLOP/s, without sparsity) by a word of the device's name; the first that matches is taken.
BF16_PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12))
ORDER = [
    "gpu-bf16",
    "gpu-attention",
    "gpu-compile",
    "gpu-padding-free",
    "gpu-flash",
    "gpu-mfu",
    "gpu-memory",
    "gpu-evaluation",
]


@dataclass(frozen=True)
class Variant:
    """How a training step runs: precision, attention kernel, compilation, and padded batches or packed rows."""

    name: str
    bf16: bool = True
    attention: str = "sdpa"
    compiled: bool = False
    padding_free: bool = False


@dataclass
class Measured:
    seconds: list[float]  # per step, one value per round
    flops: float  # model FLOPs per step
    tokens: int  # real tokens per step
    note: str = ""

    @property
    def tokens_per_second(self) -> Stats:
        return Stats.of([self.tokens / seconds for seconds in self.seconds])

    def utilisation(self, peak: float | None) -> Stats:
        """Model FLOPs utilisation against `peak`, or achieved TFLOP/s when the peak is unknown."""
        scale = peak if peak else 1e12
        return Stats.of([self.flops / seconds / scale for seconds in self.seconds])


def bf16_peak(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for word, peak in BF16_PEAKS if word in name), None)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


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
    """Training FLOPs of a step (forward and backward) on `batch`, whose real windows have `window_lengths`."""
    config = model.config.text_config
    labelled = int((batch["labels"] != IGNORE_INDEX).sum())
    attention = 12 * config.num_hidden_layers * config.hidden_size * sum(length**2 for length in window_lengths)
    lm_head = 6 * labelled * config.vocab_size * config.hidden_size
    return 6 * per_token_parameters(model) * sum(window_lengths) + lm_head + attention


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device) for key, value in batch.items()}


@contextlib.contextmanager
def precision(device: torch.device, autocast: bool) -> Iterator[None]:
    """bf16 autocast over fp32 weights (what `--mixed_precision bf16` does through accelerate), or none."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        yield


def autocast_error(model: MODGPTForMemeDialogue, batch: Batch, device: torch.device) -> str | None:
    """Why the model's forward fails under bf16 autocast, or None when it runs."""
    try:
        with torch.no_grad(), precision(device, True):
            model(**batch, use_cache=False, logits_to_keep=None)
    except RuntimeError as error:
        return str(error).splitlines()[0]
    return None


def timed_steps(step: Callable[[], None], device: torch.device, steps: int) -> float:
    """Seconds per step, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def variant_model(
    model: MODGPTForMemeDialogue, variant: Variant, bf16_weights: bool, compile_backend: str
) -> torch.nn.Module:
    """A copy of `model` with the variant's attention kernel (ImportError where it is not installed), its weights in
    bf16 if asked, compiled if asked."""
    copied = copy.deepcopy(model).train()
    copied.set_attn_implementation(variant.attention)
    if variant.bf16 and bf16_weights:
        copied.to(torch.bfloat16)
    return torch.compile(copied, backend=compile_backend) if variant.compiled else copied


def measure(
    model: MODGPTForMemeDialogue,
    variant: Variant,
    batches: "TrainingBatches",
    args: argparse.Namespace,
    bf16_weights: bool,
) -> Measured:
    """`repeats` rounds of `STEPS` steps of the variant on its batch, after `WARMUP_STEPS` (and compilation). bf16 is
    autocast over fp32 weights, or bf16 weights where the model fails under autocast (`bf16_weights`)."""
    batch, device = batches.packed if variant.padding_free else batches.padded, batches.device
    step = training_step(variant_model(model, variant, bf16_weights, args.compile_backend))

    def one_step() -> None:
        with precision(device, variant.bf16 and not bf16_weights):
            step(batch)

    started = time.perf_counter()
    timed_steps(one_step, device, WARMUP_STEPS)
    warmup = time.perf_counter() - started
    seconds = [timed_steps(one_step, device, STEPS) for _ in range(args.repeats)]
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    note = f"warm-up with compilation {warmup:.1f} s, {breaks} graph break(s)" if variant.compiled else ""
    return Measured(seconds, model_flops(model, batch, batches.window_lengths), sum(batches.window_lengths), note)


@dataclass
class TrainingBatches:
    """The median `train.py` batch of a paper-profile epoch, padded and packed into rows, on the device."""

    padded: Batch
    packed: Batch
    window_lengths: list[int]
    responses: int
    device: torch.device

    def shape(self) -> str:
        (rows, length), (packed_rows, packed_length) = self.padded["input_ids"].shape, self.packed["input_ids"].shape
        return (
            f"{rows} windows ({self.responses} responses) padded to {rows} x {length}, or packed into "
            f"{packed_rows} x {packed_length}; {STEPS} AdamW steps a round"
        )


def training_batches(
    model: MODGPTForMemeDialogue, processor: MODProcessor, batch_size: int, device: torch.device
) -> TrainingBatches:
    windows = epoch_windows(processor, paper_release(EPOCH_FRACTION)["train"])
    (batch,) = sample_batches(windows, batch_size, 1)
    bank = (model.meme_bank.ids, model.meme_bank.features.cpu())
    encodings = [window.encoding for window in batch]
    return TrainingBatches(
        padded=to_device(DialogueCollator(processor, *bank)(encodings), device),
        packed=to_device(PackedCollator(processor, *bank)(pack_windows(encodings, MAX_LENGTH)), device),
        window_lengths=[window.length for window in batch],
        responses=sum(len(window.responses) for window in batch),
        device=device,
    )


def speed_row(key: str, title: str, sides: tuple[tuple[str, Measured], tuple[str, Measured]], notes: list[str]) -> Row:
    (a_name, a), (b_name, b) = sides
    return Row(
        key=key,
        title=title,
        unit="tokens/s",
        a_name=a_name,
        a=a.tokens_per_second,
        b_name=b_name,
        b=b.tokens_per_second,
        ratio_name="speed-up",
        ratio=Stats.of_ratios(a.seconds, b.seconds),
        notes=[
            note
            for note in [*notes, f"{a_name}: {a.note}" if a.note else "", f"{b_name}: {b.note}" if b.note else ""]
            if note
        ],
    )


def utilisation_row(measured: dict[str, Measured], names: dict[str, str], peak: float | None, shape: str) -> Row:
    """Model FLOPs utilisation (or achieved TFLOP/s where the peak is unknown) of the bf16 step, eager and compiled."""
    plain, compiled = measured["sdpa"], measured.get("compiled", measured["sdpa"])
    unit = "of peak" if peak else "TFLOP/s"
    return Row(
        key="gpu-mfu",
        title=f"GPU model FLOPs utilisation of the bf16 training step ({shape})",
        unit=unit,
        a_name=names["sdpa"],
        a=plain.utilisation(peak),
        b_name=names["compiled"] if "compiled" in measured else names["sdpa"],
        b=compiled.utilisation(peak),
        ratio_name="speed-up",
        ratio=Stats.of_ratios(plain.seconds, compiled.seconds),
        notes=[
            f"{plain.flops / 1e12:.3g} model TFLOPs a step over {plain.tokens:,} real tokens; "
            + (f"bf16 dense peak {peak / 1e12:,.0f} TFLOP/s" if peak else "no bf16 peak known for this device")
        ],
    )


VARIANTS = {
    "fp32": Variant("fp32, SDPA", bf16=False),
    "eager": Variant("bf16, eager attention", attention="eager"),
    "sdpa": Variant("bf16, SDPA"),
    "compiled": Variant("bf16, SDPA, torch.compile", compiled=True),
    "packed": Variant("bf16, SDPA, padding-free rows", padding_free=True),
    "flash": Variant("bf16, flash_attention_2, padding-free rows", attention="flash_attention_2", padding_free=True),
}
# Rows comparing two variants: key, title, the variants (A, B); a row whose variant did not run is left out.
COMPARISONS = [
    ("gpu-bf16", "GPU training step: bf16 vs fp32 (SDPA)", ("fp32", "sdpa")),
    ("gpu-attention", "GPU training step: SDPA vs eager attention (bf16)", ("eager", "sdpa")),
    ("gpu-compile", "GPU training step: torch.compile vs not (bf16, SDPA)", ("sdpa", "compiled")),
    (
        "gpu-padding-free",
        "GPU training step: padding-free rows vs padded windows (bf16, SDPA with a block-diagonal mask)",
        ("sdpa", "packed"),
    ),
    (
        "gpu-flash",
        "GPU training step: flash attention (varlen) vs SDPA, padding-free rows (bf16)",
        ("packed", "flash"),
    ),
]


def training_rows(
    model: MODGPTForMemeDialogue, processor: MODProcessor, args: argparse.Namespace, device: torch.device
) -> tuple[list[Row], list[str]]:
    batches = training_batches(model, processor, args.batch_size, device)
    failure = autocast_error(model, batches.padded, device)
    skipped = [f"bf16 autocast (the model fails under it: {failure}); bf16 weights instead"] if failure else []
    measured = {}
    for name, variant in VARIANTS.items():
        try:
            measured[name] = measure(model, variant, batches, args, bf16_weights=failure is not None)
        except ImportError as error:  # an attention kernel that is not installed
            skipped.append(f"{variant.name}: {error}")
        except Exception as error:  # compilation fails in many ways (dynamo, inductor, the compiler); say how
            if not variant.compiled:
                raise
            skipped.append(f"{variant.name}: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
        progress(f"  {variant.name}: {'done' if name in measured else 'skipped'}")
    names = {name: variant.name for name, variant in VARIANTS.items()}
    rows = [
        speed_row(key, title, ((names[a], measured[a]), (names[b], measured[b])), [])
        for key, title, (a, b) in COMPARISONS
        if a in measured and b in measured
    ]
    rows.append(utilisation_row(measured, names, bf16_peak(device, args.peak_tflops), batches.shape()))
    return rows, skipped


def peak_memory_row(model: MODGPTForMemeDialogue, processor: MODProcessor, device: torch.device) -> Row:
    """Peak allocated memory of two bf16 AdamW steps on 8 x 256 tokens, with and without gradient checkpointing."""
    batch = to_device(memory_batch(model, processor), device)
    bf16_weights = autocast_error(model, batch, device) is not None
    peaks = {}
    for checkpointing in (False, True):
        runner = copy.deepcopy(model).train()
        if bf16_weights:
            runner.to(torch.bfloat16)
        if checkpointing:
            runner.gradient_checkpointing_enable()
        step = training_step(runner)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            with precision(device, not bf16_weights):
                step(batch)
        peaks[checkpointing] = torch.cuda.max_memory_allocated(device) / 2**20
        del runner, step
        torch.cuda.empty_cache()
    return Row(
        key="gpu-memory",
        title=f"GPU peak memory of bf16 training steps ({BATCH_SIZE} x {SEQUENCE_LENGTH} tokens), gradient "
        "checkpointing",
        unit="MiB",
        a_name="without",
        a=Stats.of([peaks[False]]),
        b_name="with",
        b=Stats.of([peaks[True]]),
        ratio_name="fraction",
        ratio=Stats.of([peaks[True] / peaks[False]]),
        notes=[
            "torch.cuda.max_memory_allocated over 2 AdamW steps, the model and its optimizer state included; "
            + ("bf16 weights (the model fails under autocast)" if bf16_weights else "bf16 autocast over fp32 weights")
        ],
    )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant")
    parser.add_argument("--batch_size", type=int, default=32, help="windows per training batch")
    parser.add_argument("--eval_instances", type=int, default=32, help="instances generated for in the evaluation row")
    parser.add_argument(
        "--compile_backend", default="inductor", help="torch.compile backend (eager: no code generation)"
    )
    parser.add_argument("--peak_tflops", type=float, help="the device's dense bf16 peak, when it is not recognised")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS_gpu.json"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is available; run with --device cpu to try the script on a CPU")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv)
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = SIZES[args.size]
    processor = build_processor(size)
    model = build_model(size, processor).to(device)
    started = time.perf_counter()
    rows, skipped = training_rows(model, processor, args, device)
    progress(f"training rows: {time.perf_counter() - started:.1f} s")
    if device.type == "cuda":
        rows.append(peak_memory_row(model, processor, device))
    else:
        skipped.append("peak memory: torch.cuda.max_memory_allocated needs a CUDA device")
    workload = dataclasses.replace(
        WORKLOADS[args.size], eval_instances=args.eval_instances, eval_batch_size=EVAL_BATCH_SIZE
    )
    rows.append(evaluation(model, processor, workload, args.repeats, key="gpu-evaluation"))
    progress(f"all rows: {time.perf_counter() - started:.1f} s")
    command = " ".join(["python -m benchmarks.gpu", *argv])
    extra = {"device": device_name(device), "skipped": skipped}
    written = write_json(args.output, rows, args.size, args.repeats, command, ORDER, extra=extra)
    print(f"Device: {device_name(device)}\n")
    print(markdown_table(written))
    if skipped:
        print("\nSkipped: " + "; ".join(skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
