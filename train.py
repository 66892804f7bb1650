"""Train MOD-GPT on a built MOD dataset, from one CPU to many GPUs.

    accelerate launch train.py --dataset demo_output/data --output_dir demo_output/model --model_config tiny
    python train.py args.yaml --max_steps 10   # the arguments of a YAML or JSON file, then any overrides

Every dialogue is one packed sequence (history turns and their responses at once), or, when longer than
--max_length, a few windows of whole turns that each learn new responses; batches are length-grouped and padded per
batch. Everything distributed goes through `Accelerator`.

Every argument is checked before any work starts. The output folder must be new or empty, or hold the run being
resumed (--resume_from_checkpoint), or hold an earlier training run that --overwrite_output_dir then deletes; a
folder that is not a training run's (such as a dataset) is never written into. It ends up holding:

    training_run.json     the marker of a training run, with the arguments that started it
    config.json, model.safetensors, ...
                          the final model, so that `from_pretrained(output_dir)` loads it. Each file is a link to
                          `.model/<name>`; `.model` links to a hidden folder `.model-*` holding one whole save. A save
                          writes a new such folder and then switches `.model` to it with one rename, so a reader sees
                          the old model or the new one, never a mix of both.
    best_model/           the model with the lowest validation loss, laid out the same way
    checkpoint-N/         `save_state` checkpoints, written aside and renamed into place; their
                          checkpoint_complete.json holds the loop state and the size and SHA-256 of every file, which
                          resuming checks
    metrics.jsonl         one JSON object per logged step (a value that is not finite is written as null)

A step whose loss or gradient norm is not finite is skipped (no update); --max_nonfinite_steps of them in a row stop
the run. Weights are checked to be finite before every save. SIGTERM (a preempted job) stops the run after the
current step with a checkpoint. Exit status: 0 done; 1 training failed; 2 bad arguments or data, reported before
anything is written; 143 stopped by SIGTERM, resumable with --resume_from_checkpoint latest.
"""

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import timm
import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModel, AutoProcessor, BertTokenizer, HfArgumentParser, get_linear_schedule_with_warmup

from configuration_mod_gpt import MODGPTConfig
from mod_dataset import expected_counts
from modeling_mod_gpt import MODGPTForMemeDialogue
from pipeline_mod import MemeDialoguePipeline
from processing_mod import IGNORE_INDEX, MemeImageProcessor, MODProcessor

logger = logging.getLogger("train")

COMPLETE_MARKER = "checkpoint_complete.json"
RUN_MARKER = "training_run.json"
MODEL_LINK = ".model"
IMFE_ENCODER_FILE = "meme_encoder.safetensors"
ARGUMENT_FILE_SUFFIXES = (".yaml", ".yml", ".json")
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM
TASK_LOSS_WEIGHTS = {
    "mod": {"text": 1.0, "usage": 1.0, "meme": 1.0, "emotion": 1.0},
    "cem": {"text": 0.0, "usage": 0.0, "meme": 0.0, "emotion": 1.0},
}
PRESETS = {
    "tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 512},
    "base": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 513},
}


class ArgumentError(ValueError):
    """A bad argument, or data the arguments name, reported as one line without a traceback (exit status 2)."""


class TrainingError(RuntimeError):
    """Training could not go on (exit status 1)."""


class Preempted(Exception):
    """SIGTERM stopped the run after a step, once its checkpoint was saved (exit status 143)."""


@dataclass
class TrainArguments:
    dataset: str = field(
        metadata={"help": "Built MOD dataset: a local folder (python -m mod_dataset build) or hub id."}
    )
    output_dir: str = field(
        metadata={
            "help": "Where checkpoints, logs and the final model go: a new or empty folder, the run being resumed, "
            "or an earlier run to replace with --overwrite_output_dir."
        }
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete the earlier training run in --output_dir first (never a folder of anything else)."},
    )
    task: str = field(
        default="mod",
        metadata={
            "help": "mod: the full objective. cem: emotion prediction only (cross-modal emotion pre-training), "
            "continued by --task mod --init_from its output. imfe: meme encoder pre-training by image "
            "classification; later stages use it through --meme_encoder_checkpoint OUTPUT/meme_encoder.safetensors."
        },
    )
    imfe_dataset: str | None = field(
        default=None,
        metadata={
            "help": "imfe: an imagefolder-style folder of labelled images (default: the dataset's memes, "
            "labelled with their most frequent emotion)."
        },
    )
    model_config: str = field(default="tiny", metadata={"help": "Preset 'tiny' or 'base', or a MODGPTConfig JSON."})
    init_from: str | None = field(
        default=None, metadata={"help": "A local GPT-2/CDial-GPT folder (decoder weights) or a MOD-GPT checkpoint."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Load a MOD-GPT --init_from folder with the code files it holds instead of this package's "
            "classes. Only for folders whose code you have read."
        },
    )
    meme_features: Literal["encoder", "release"] = field(
        default="encoder",
        metadata={
            "help": "encoder: encode the meme images with --meme_encoder. release: the organisers' precomputed "
            "vectors (id2feature.json, the `feature` column of the dataset's memes); the model then has no image "
            "encoder and new memes enter it as features."
        },
    )
    meme_encoder: str = field(
        default="efficientnet_b0", metadata={"help": "timm model that encodes memes (--meme_features encoder)."}
    )
    meme_encoder_checkpoint: str | None = field(default=None, metadata={"help": "Local timm weights for it."})
    meme_feature_normalization: Literal["standardize", "rms", "none"] = field(
        default="standardize",
        metadata={
            "help": "standardize: per-dimension mean and std of the meme bank (what lets retrieval learn from the "
            "nearly collinear features of an untrained encoder); rms: each feature to RMS 1; none: raw (the paper)."
        },
    )
    normalize_meme_features: bool = field(
        default=False, metadata={"help": "Former flag, the same as --meme_feature_normalization rms."}
    )
    meme_loss: Literal["l2", "contrastive"] = field(
        default="l2",
        metadata={
            "help": "l2: regress the meme's feature (the paper). contrastive: cross-entropy of ranking the meme "
            "first among the meme bank."
        },
    )
    meme_loss_temperature: float = field(default=0.1, metadata={"help": "Temperature of the contrastive meme loss."})
    train_meme_encoder: bool = field(
        default=False, metadata={"help": "Fine-tune the meme encoder (frozen otherwise)."}
    )
    vocab_size: int = field(default=13088, metadata={"help": "Vocabulary size when building it from the corpus."})
    num_train_epochs: float = 3.0
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides num_train_epochs when > 0."})
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate (paper: 5e-5)."})
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_nonfinite_steps: int = field(
        default=3,
        metadata={
            "help": "Stop after this many steps in a row whose loss or gradient norm is not finite (each is skipped)."
        },
    )
    max_length: int = field(
        default=500,
        metadata={
            "help": "Longest training sequence (at most the decoder's positions); a longer dialogue is cut into "
            "windows of whole turns that each learn new responses."
        },
    )
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'fp16' or 'bf16'."})
    gradient_checkpointing: bool = False
    seed: int = 42
    logging_steps: int = 10
    eval_steps: int = field(default=0, metadata={"help": "Validate every N steps (0: only at the end)."})
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N steps (0: never)."})
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep at most N checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest': the newest intact one in --output_dir."}
    )
    skip_corrupt_checkpoints: bool = field(
        default=False,
        metadata={"help": "With --resume_from_checkpoint latest: pass over damaged checkpoints to the newest intact."},
    )
    push_to_hub: bool = False
    hub_model_id: str | None = None
    report_to: str = field(default="none", metadata={"help": "Trackers: 'tensorboard', 'wandb', 'all' or 'none'."})


# Arguments ----------------------------------------------------------------------------------------------------------


class ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` whose errors raise `ArgumentError` rather than exiting, so all of them are reported alike."""

    def error(self, message: str):
        raise ArgumentError(message)


def parse_arguments(argv: list[str]) -> TrainArguments:
    """The arguments of the command line, whose first one may be a YAML or JSON file of them; all checked."""
    parser = ArgumentParser(TrainArguments, prog="train.py")
    if argv and argv[0].endswith(ARGUMENT_FILE_SUFFIXES):
        argv = [*file_arguments(Path(argv[0])), *argv[1:]]
    try:
        (args,) = parser.parse_args_into_dataclasses(argv)
    except ValueError as error:  # arguments no field takes
        raise ArgumentError(str(error)) from error
    check_arguments(args)
    return args


def file_arguments(path: Path) -> list[str]:
    """The arguments of a YAML or JSON file as `--name=value` strings, so that the parser checks their types."""
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except OSError as error:
        raise ArgumentError(f"{path}: cannot read the arguments file ({error.strerror}).") from error
    except (ValueError, yaml.YAMLError) as error:
        raise ArgumentError(f"{path}: not a valid {path.suffix[1:].upper()} file: {error}") from error
    if not isinstance(values, dict):
        raise ArgumentError(f"{path}: expected a mapping of argument names to values, got {type(values).__name__}.")
    names = [f.name for f in dataclasses.fields(TrainArguments)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ArgumentError(f"{path}: unknown argument {key!r}{hint}.")
    return [
        f"--{key}={str(value).lower() if isinstance(value, bool) else value}"
        for key, value in values.items()
        if value is not None
    ]


def check_arguments(args: TrainArguments) -> None:
    """Everything about the arguments that can be known before loading anything; raises `ArgumentError`."""
    if args.task not in (*TASK_LOSS_WEIGHTS, "imfe"):
        raise ArgumentError(f"--task {args.task!r}: use 'mod', 'cem' or 'imfe'.")
    if args.mixed_precision not in ("no", "fp16", "bf16"):
        raise ArgumentError(f"--mixed_precision {args.mixed_precision!r}: use 'no', 'fp16' or 'bf16'.")
    if args.push_to_hub and not args.hub_model_id:
        raise ArgumentError("--push_to_hub needs --hub_model_id.")
    if args.meme_features == "release" and (args.train_meme_encoder or args.meme_encoder_checkpoint):
        raise ArgumentError(
            "--meme_features release trains on precomputed features: the model has no meme encoder to load "
            "(--meme_encoder_checkpoint) or fine-tune (--train_meme_encoder)."
        )
    check_numbers(args)
    read_model_config(args.model_config)
    check_input_paths(args)
    check_output_dir(args)


COUNTS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "logging_steps",
    "max_length",
    "vocab_size",
    "max_nonfinite_steps",
)
NON_NEGATIVE = ("eval_steps", "save_steps", "warmup_steps", "learning_rate", "weight_decay")
POSITIVE = ("num_train_epochs", "max_grad_norm", "meme_loss_temperature")


def check_numbers(args: TrainArguments) -> None:
    rules = [
        (COUNTS, lambda value: value >= 1, "at least 1"),
        (NON_NEGATIVE, lambda value: 0 <= value < math.inf, "a finite number >= 0"),
        (POSITIVE, lambda value: 0 < value < math.inf, "a finite number > 0"),
    ]
    for names, valid, requirement in rules:
        for name in names:
            if not valid(getattr(args, name)):
                raise ArgumentError(f"--{name} must be {requirement}, got {getattr(args, name)}.")
    if args.max_steps == 0 or args.max_steps < -1:
        raise ArgumentError(f"--max_steps must be positive, or -1 to train --num_train_epochs; got {args.max_steps}.")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise ArgumentError(f"--save_total_limit must be at least 1, got {args.save_total_limit}.")


def looks_local(name: str) -> bool:
    """Whether a dataset or model name means a local path rather than a hub id ('user/name', or a bare name)."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists():
        return True
    return name.count("/") == 1 and Path(name.split("/")[0]).is_dir()


def check_input_paths(args: TrainArguments) -> None:
    """Local paths that the arguments name must exist; a missing one is reported, never looked up on the hub."""
    if looks_local(args.dataset) and not Path(args.dataset).is_dir():
        raise ArgumentError(
            f"--dataset {args.dataset!r}: no such folder (build one with `python -m mod_dataset build`)."
        )
    if args.init_from is not None and looks_local(args.init_from) and not Path(args.init_from).is_dir():
        raise ArgumentError(f"--init_from {args.init_from!r}: no such folder.")
    if args.meme_encoder_checkpoint is not None:
        if not Path(args.meme_encoder_checkpoint).is_file():
            raise ArgumentError(f"--meme_encoder_checkpoint {args.meme_encoder_checkpoint!r}: no such file.")
        if is_mod_checkpoint(args.init_from):
            raise ArgumentError(
                f"--init_from {args.init_from!r} is a MOD-GPT model, which brings its own meme encoder: drop "
                "--meme_encoder_checkpoint."
            )
    if args.imfe_dataset is not None and not Path(args.imfe_dataset).is_dir():
        raise ArgumentError(f"--imfe_dataset {args.imfe_dataset!r}: no such folder.")


def check_output_dir(args: TrainArguments) -> None:
    """
    Refuse an output folder whose contents training would mix with or destroy: a file; the dataset folder or a folder
    inside it; a non-empty folder unless it holds the run being resumed, or an earlier training run (it has the run
    marker) that --overwrite_output_dir may delete because none of the run's inputs lie inside it.
    """
    output_dir = Path(args.output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise ArgumentError(f"--output_dir {args.output_dir!r} is a file, not a folder.")
    if looks_local(args.dataset):
        dataset = Path(args.dataset).resolve()
        if output_dir == dataset or dataset in output_dir.parents:
            raise ArgumentError(
                f"--output_dir {args.output_dir!r} is, or lies inside, the dataset folder {args.dataset!r}: nothing "
                "was written. Give a folder outside the dataset."
            )
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if resumes_inside(args, output_dir):
        if args.overwrite_output_dir:
            raise ArgumentError(
                "--overwrite_output_dir would delete the checkpoint that --resume_from_checkpoint resumes from: "
                "give one or the other."
            )
        return
    if not is_training_run(output_dir):
        found = ", ".join(sorted(p.name for p in output_dir.iterdir())[:5])
        raise ArgumentError(
            f"--output_dir {args.output_dir!r} is not empty and is not the folder of a training run (it has no "
            f"{RUN_MARKER}; it holds {found}, ...): nothing was written, and --overwrite_output_dir never deletes "
            "such a folder. Give a new or empty folder."
        )
    if not args.overwrite_output_dir:
        raise ArgumentError(
            f"--output_dir {args.output_dir!r} holds an earlier training run: nothing was written. Continue it "
            "with --resume_from_checkpoint latest, replace it with --overwrite_output_dir, or give another folder."
        )
    for name in ("dataset", "init_from", "model_config", "meme_encoder_checkpoint", "imfe_dataset"):
        value = getattr(args, name)
        if value is not None and looks_local(value) and output_dir in Path(value).resolve().parents:
            raise ArgumentError(
                f"--overwrite_output_dir would delete --{name} {value!r}, which lies inside --output_dir: nothing "
                "was written. Move it out first."
            )


def resumes_inside(args: TrainArguments, output_dir: Path) -> bool:
    checkpoint = args.resume_from_checkpoint
    return checkpoint == "latest" or (checkpoint is not None and Path(checkpoint).parent.resolve() == output_dir)


def is_training_run(folder: Path) -> bool:
    """Whether `folder` holds the marker that training writes when it starts a run there."""
    try:
        marker = json.loads((folder / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and "arguments" in marker


def start_run_folder(output_dir: Path, args: TrainArguments, resumed_step: int | None) -> None:
    """
    Make the output folder a run's, once the run is ready to train: delete the earlier run that
    --overwrite_output_dir replaces, write the run marker, and on resuming forget the metrics logged after the
    checkpoint (the run logs those steps again).
    """
    if args.overwrite_output_dir and is_training_run(output_dir):
        for entry in output_dir.iterdir():
            remove_path(entry)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not (output_dir / RUN_MARKER).exists():
        marker = {"arguments": asdict(args), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (output_dir / RUN_MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n")
    metrics_file = output_dir / "metrics.jsonl"
    if resumed_step is not None and metrics_file.exists():
        lines = metrics_file.read_text().splitlines(keepends=True)
        metrics_file.write_text("".join(line for line in lines if logged_step(line) <= resumed_step))


def logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line cut short (by a run that was killed)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def remove_path(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


# Data ---------------------------------------------------------------------------------------------------------------


def load_splits(dataset: str) -> tuple[datasets.DatasetDict, datasets.Dataset]:
    """The `dialogues` splits and the `memes` table of a built MOD dataset, checked against its card."""
    try:
        dialogues = datasets.load_dataset(dataset, "dialogues")
        memes = datasets.load_dataset(dataset, "memes")
    except datasets.exceptions.SplitsVerificationError as error:
        raise ArgumentError(
            f"--dataset {dataset!r}: its files do not hold the rows its card declares ({error}). Rebuild it with "
            "`python -m mod_dataset build`."
        ) from error
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise ArgumentError(f"--dataset {dataset!r} is not a built MOD dataset: {error}") from error
    check_row_counts(dataset, {"dialogues": dialogues, "memes": memes})
    for split in ("train", "validation"):
        if split not in dialogues or len(dialogues[split]) == 0:
            raise ArgumentError(f"--dataset {dataset!r}: its dialogues have no {split!r} split, which training needs.")
    return dialogues, next(iter(memes.values()))


def check_row_counts(dataset: str, loaded: dict[str, datasets.DatasetDict]) -> None:
    """Stop when the rows loaded are not those the dataset card declares (`datasets` may serve a stale cache)."""
    expected = expected_counts(dataset)
    if expected is None:
        return
    for config, splits in loaded.items():
        declared = expected.get(config, {})
        for split in sorted({*declared, *splits}):
            rows = len(splits[split]) if split in splits else 0
            if rows != declared.get(split, rows):
                raise ArgumentError(
                    f"--dataset {dataset!r}: config {config!r}, split {split!r} loaded {rows} rows but the dataset "
                    f"card declares {declared[split]}. The `datasets` cache may hold another dataset of the same "
                    "folder name: clear it (HF_DATASETS_CACHE) or rebuild the dataset."
                )


def emotion_names(dialogues: datasets.DatasetDict) -> list[str]:
    return next(iter(dialogues.values())).features["turns"].feature["emotion"].names


def encode_split(split: datasets.Dataset, processor: MODProcessor, max_length: int) -> list[dict[str, list]]:
    """The training examples of a split: every window of every dialogue (one window when the dialogue fits)."""
    return [
        window
        for index, row in enumerate(split)
        for window in processor.encode_windows(row["turns"], index, max_length=max_length)
    ]


class LengthGroupedBatches(torch.utils.data.Sampler):
    """
    Batches of similar length, reshuffled each epoch from `(seed, epoch)` alone, so a resumed run sees the same
    order. Indices are shuffled, cut into groups of 50 batches, each group sorted by length and cut into batches,
    and the batch order shuffled; an incomplete last batch is dropped when `drop_last`.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = True):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        if not self.shuffle:
            order = list(range(len(self.lengths)))
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        group_size = 50 * self.batch_size
        batches = []
        for start in range(0, len(order), group_size):
            group = sorted(order[start : start + group_size], key=lambda i: -self.lengths[i])
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


class DialogueCollator:
    """
    Pads encoded dialogues and looks up the features of their memes (computed once, by meme id); passes on the
    `example_index` of validation examples.
    """

    def __init__(self, processor: MODProcessor, meme_ids: list[str], meme_features: torch.Tensor, images=None):
        self.processor = processor
        self.row_of = {meme_id: row for row, meme_id in enumerate(meme_ids)}
        self.meme_features = meme_features
        self.images = images  # meme id -> image, when the encoder is trained and needs pixels

    def __call__(self, encodings: list[dict[str, list]]) -> dict[str, torch.Tensor]:
        batch = dict(self.processor.pad(encodings))
        meme_ids = batch.pop("meme_ids")
        if self.images is not None:
            pixels = self.processor.image_processor([self.images[m] for m in meme_ids])["pixel_values"]
            batch["pixel_values"] = pixels if meme_ids else None
        else:
            batch["meme_features"] = self.meme_features[[self.row_of[m] for m in meme_ids]] if meme_ids else None
        if "example_index" in encodings[0]:
            batch["example_index"] = torch.tensor([encoding["example_index"] for encoding in encodings])
        return {key: value for key, value in batch.items() if value is not None}


def validation_loader(encodings: list[dict], collator: DialogueCollator, args: TrainArguments, processes: int):
    """Validation batches in a fixed order. Prepared, each process takes its share of every batch."""
    sampler = LengthGroupedBatches(
        [len(e["input_ids"]) for e in encodings],
        args.per_device_eval_batch_size * processes,
        0,
        shuffle=False,
        drop_last=False,  # accelerate reads it too, and must not drop the last batch
    )
    return DataLoader(encodings, batch_sampler=sampler, collate_fn=collator)


def check_training_batches(examples: int, dialogues: int, batches: int, args: TrainArguments, processes: int) -> None:
    """An epoch must hold at least one optimizer step; an incomplete last batch is dropped."""
    if batches >= args.gradient_accumulation_steps:
        return
    batch_size = args.per_device_train_batch_size * processes
    raise ArgumentError(
        f"the train split gives {examples} training examples ({dialogues} dialogues), too few for one optimizer "
        f"step of {batch_size * args.gradient_accumulation_steps} examples (--per_device_train_batch_size "
        f"{args.per_device_train_batch_size} x {processes} processes x --gradient_accumulation_steps "
        f"{args.gradient_accumulation_steps}). Lower them, or train on more dialogues."
    )


def retrieval_negatives(encodings: list[dict[str, list]], bank_size: int, seed: int) -> torch.Tensor:
    """
    The 9 random bank rows that each meme a validation example attaches is ranked against, `(examples, memes of the
    example with most, 9)`: drawn once, so R10@1 depends neither on batching nor on the number of processes.
    """
    most = max(max(encoding["usage_labels"].count(1) for encoding in encodings), 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(bank_size, (len(encodings), most, 9), generator=generator)


# Model --------------------------------------------------------------------------------------------------------------


def is_mod_checkpoint(path: str | None) -> bool:
    """Whether `path` is a local folder holding a saved MOD-GPT model."""
    config_file = Path(path) / "config.json" if path is not None else None
    if config_file is None or not config_file.is_file():
        return False
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ArgumentError(f"--init_from {path!r}: {config_file} is not valid JSON ({error}).") from error
    return isinstance(config, dict) and config.get("model_type") == MODGPTConfig.model_type


def load_mod_processor(folder: str, trust_remote_code: bool) -> MODProcessor:
    """
    The processor of a saved MOD-GPT model, read by this package's own classes: the copies of the code that the
    folder holds run only when the user trusts them (`AutoProcessor` would import them).
    """
    if trust_remote_code:
        return AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    settings, kwargs = MODProcessor.get_processor_dict(folder)
    parts = [MemeImageProcessor.from_pretrained(folder), BertTokenizer.from_pretrained(folder)]
    return MODProcessor.from_args_and_dict(parts, settings, **kwargs)


def build_processor(args: TrainArguments, dialogues: datasets.DatasetDict) -> MODProcessor:
    names = emotion_names(dialogues)
    if is_mod_checkpoint(args.init_from):
        processor = load_mod_processor(args.init_from, args.trust_remote_code)
    elif args.init_from is not None and (Path(args.init_from) / "vocab.txt").exists():
        processor = MODProcessor.from_vocab(args.init_from, meme_encoder_name=args.meme_encoder)
    else:
        texts = (turn["text"] for turn_list in dialogues["train"]["turns"] for turn in turn_list if turn["text"])
        processor = MODProcessor.from_corpus(texts, vocab_size=args.vocab_size, meme_encoder_name=args.meme_encoder)
    processor.max_length, processor.emotion_names = args.max_length, names
    return processor


def build_model(
    args: TrainArguments, processor: MODProcessor, names: list[str], memes: datasets.Dataset
) -> MODGPTForMemeDialogue:
    model = load_or_create_model(args, processor, names, memes)
    model.config.update({f"{part}_loss_weight": weight for part, weight in TASK_LOSS_WEIGHTS[args.task].items()})
    return model


def load_or_create_model(
    args: TrainArguments, processor: MODProcessor, names: list[str], memes: datasets.Dataset
) -> MODGPTForMemeDialogue:
    if is_mod_checkpoint(args.init_from):
        if args.trust_remote_code:
            return AutoModel.from_pretrained(args.init_from, trust_remote_code=True)
        return MODGPTForMemeDialogue.from_pretrained(args.init_from)
    mod_kwargs = dict(
        **meme_encoder_kwargs(args, memes),
        meme_feature_normalization="rms" if args.normalize_meme_features else args.meme_feature_normalization,
        meme_loss=args.meme_loss,
        meme_loss_temperature=args.meme_loss_temperature,
        freeze_meme_encoder=not args.train_meme_encoder,
        num_emotions=len(names),
        emotion_names=names,
        **processor.special_token_ids,
    )
    if args.init_from is not None:
        try:
            model = MODGPTForMemeDialogue.from_text_backbone(
                args.init_from, vocab_size=len(processor.tokenizer), **mod_kwargs
            )
        except (OSError, ValueError) as error:
            raise ArgumentError(f"--init_from {args.init_from!r}: not a GPT-2 or CDial-GPT model ({error})") from error
    else:
        model = model_from_config(args.model_config, len(processor.tokenizer), mod_kwargs)
    if args.meme_encoder_checkpoint:
        load_meme_encoder_weights(model.meme_encoder, args.meme_encoder_checkpoint)
    return model


def read_model_config(value: str) -> dict[str, Any]:
    """The decoder config (or whole MOD-GPT config) that --model_config names: a preset, or a JSON file."""
    if value in PRESETS:
        return {"model_type": "gpt2", **PRESETS[value]}
    if not Path(value).is_file():
        raise ArgumentError(f"--model_config {value!r}: not a preset {sorted(PRESETS)} nor a JSON file.")
    try:
        config = json.loads(Path(value).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ArgumentError(f"--model_config {value!r}: not valid JSON ({error}).") from error
    if not isinstance(config, dict):
        raise ArgumentError(f"--model_config {value!r}: expected a JSON object, got {type(config).__name__}.")
    if config.get("model_type") == MODGPTConfig.model_type and not isinstance(config.get("text_config"), dict):
        raise ArgumentError(f"--model_config {value!r}: a MOD-GPT config needs a `text_config` object.")
    return config


def model_from_config(value: str, vocab_size: int, mod_kwargs: dict[str, Any]) -> MODGPTForMemeDialogue:
    """A new model from --model_config; a whole MOD-GPT config also sets the heads (the run's arguments win)."""
    text_config = read_model_config(value)
    if text_config.get("model_type") == MODGPTConfig.model_type:
        mod_kwargs = {**{k: v for k, v in text_config.items() if k != "text_config"}, **mod_kwargs}
        text_config = text_config["text_config"]
    try:
        config = MODGPTConfig(text_config={**text_config, "vocab_size": vocab_size}, **mod_kwargs)
        return MODGPTForMemeDialogue(config)
    except (TypeError, ValueError, KeyError) as error:
        raise ArgumentError(f"--model_config {value!r}: not a valid configuration ({error}).") from error


def load_meme_encoder_weights(encoder: nn.Module, path: str) -> None:
    """
    Load timm weights into a meme encoder. The checkpoint's classifier (an IMFE stage's, or ImageNet's) is left out;
    any other key the encoder lacks or misses is an error, so that weights of another architecture are never
    silently ignored. Only the weights enter the model: its config does not keep the path.
    """
    classifier = encoder.pretrained_cfg.get("classifier", "classifier")
    try:
        weights = timm.models.load_state_dict(path)
        weights = {k: v for k, v in weights.items() if not k.startswith(f"{classifier}.")}
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
    except (OSError, RuntimeError, ValueError) as error:
        raise ArgumentError(
            f"--meme_encoder_checkpoint {path!r}: cannot load it into the encoder ({error})"
        ) from error
    missing = [key for key in missing if not key.startswith(f"{classifier}.")]
    if missing or unexpected:
        raise ArgumentError(
            f"--meme_encoder_checkpoint {path!r} does not fit the meme encoder: it lacks {missing[:3]} and has "
            f"unknown {unexpected[:3]} ({len(missing)} and {len(unexpected)} keys)."
        )


def meme_encoder_kwargs(args: TrainArguments, memes: datasets.Dataset) -> dict[str, Any]:
    """The config's meme encoder: the timm model of --meme_encoder, or none for the release's precomputed features."""
    if args.meme_features == "release":
        return dict(meme_encoder_name=None, meme_feature_size=len(release_meme_features(args.dataset, memes)[0]))
    return dict(
        meme_encoder_name=args.meme_encoder,
        meme_feature_size=MODGPTForMemeDialogue.encoder_feature_size(args.meme_encoder),
    )


def release_meme_features(dataset: str, memes: datasets.Dataset) -> torch.Tensor:
    """The organisers' feature vector of every meme (the `feature` column the dataset builder takes from id2feature.json)."""
    if "feature" not in memes.column_names:
        raise ArgumentError(
            f"--meme_features release: the memes of dataset {dataset!r} have no `feature` column, so its release "
            "had no id2feature.json. Rebuild the dataset from a release that has it, or use --meme_features encoder."
        )
    features = memes["feature"]
    missing = [meme for meme, feature in zip(memes["meme_id"], features) if feature is None]
    if missing:
        raise ArgumentError(
            f"--meme_features release: memes {missing} of dataset {dataset!r} have no feature in id2feature.json."
        )
    return torch.tensor(features, dtype=torch.float32)


@torch.no_grad()
def raw_meme_features(
    args: TrainArguments, model: MODGPTForMemeDialogue, processor: MODProcessor, memes: datasets.Dataset, batch_size=64
) -> torch.Tensor:
    """Every meme's raw feature: the release's vector, or the frozen encoder's output, computed once."""
    if args.meme_features not in ("encoder", "release"):
        raise ArgumentError(f"--meme_features {args.meme_features!r}: use 'encoder' or 'release'.")
    if (model.meme_encoder is None) != (args.meme_features == "release"):
        fits = "release (it has no meme encoder)" if model.meme_encoder is None else "encoder (it has a meme encoder)"
        raise ArgumentError(f"--init_from {args.init_from!r} is trained with --meme_features {fits}.")
    if args.meme_features == "release":
        return release_meme_features(args.dataset, memes)
    batches = (memes[start : start + batch_size]["image"] for start in range(0, len(memes), batch_size))
    return torch.cat(
        [model.encode_meme_images(processor.image_processor(images)["pixel_values"]) for images in batches]
    )


def fill_meme_bank(
    args: TrainArguments, model: MODGPTForMemeDialogue, processor: MODProcessor, memes: datasets.Dataset
) -> None:
    """
    Put every meme into the model's meme bank, the feature cache of the run. A new model first fits its feature
    normalisation to them; one loaded from a checkpoint keeps the statistics its bank was made with.
    """
    features = raw_meme_features(args, model, processor, memes)
    if not model.meme_bank_ids:
        model.fit_meme_feature_normalization(features)
    model.add_memes(memes["meme_id"], meme_features=features)


# Loss -------------------------------------------------------------------------------------------------------------


def loss_item_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What each loss part averages over: text labels, [TAG] usage labels, attached memes, [IMG] emotion labels."""
    return torch.stack(
        [
            (batch["labels"][:, 1:] != IGNORE_INDEX).sum(),
            (batch["usage_labels"] != IGNORE_INDEX).sum(),
            (batch["usage_labels"] == 1).sum(),
            (batch["emotion_labels"] != IGNORE_INDEX).sum(),
        ]
    )


def global_batch_loss(outputs, batch: dict[str, torch.Tensor], accelerator: Accelerator, config) -> torch.Tensor:
    """
    The weighted loss with each part averaged over the whole global batch rather than this process's share of it.
    Each process holds a different number of labelled tokens, memes and emotions, so plain per-process means would
    weight them unevenly; rescaled this way, the gradients that DDP averages over N processes are those of one
    process holding the global batch.
    """
    local_counts = loss_item_counts(batch)
    global_counts = accelerator.reduce(local_counts, reduction="sum").clamp(min=1)
    share = local_counts * accelerator.num_processes / global_counts
    parts = torch.stack([outputs.lm_loss, outputs.usage_loss, outputs.meme_loss, outputs.emotion_loss])
    weights = [config.text_loss_weight, config.usage_loss_weight, config.meme_loss_weight, config.emotion_loss_weight]
    return (parts * share * parts.new_tensor(weights)).sum()


# Steps --------------------------------------------------------------------------------------------------------------


def seed_dropout(seed: int, epoch: int, batch_index: int, process_index: int) -> None:
    """
    Seed the global RNG, which dropout draws from, from the batch's place in training alone. A resumed run then
    draws the same masks as an uninterrupted one, whatever else consumed random numbers before (data loader
    iterators, validation, restoring RNG states at another point of the loop).
    """
    entropy = np.random.SeedSequence([seed, epoch, batch_index, process_index]).generate_state(2)
    torch.manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


def apply_gradients(
    accelerator: Accelerator, optimizer, scheduler, parameters: list, args: TrainArguments, losses: list, stop: bool
) -> tuple[bool, bool]:
    """
    Clip the accumulated gradients and apply them, unless the loss of any process or the gradient norm is not
    finite: then the update is dropped. Returns whether it was applied, and whether any process asked to stop; all
    processes agree on both. Under fp16 the gradient scaler skips overflowing updates itself (and must see them to
    lower its scale), so only the loss counts there.
    """
    grad_norm = accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
    flags = torch.tensor(
        [not bool(torch.isfinite(torch.stack(losses)).all()), stop], dtype=torch.float32, device=accelerator.device
    )
    nonfinite_loss, stop = (accelerator.reduce(flags, reduction="sum") > 0).tolist()
    finite_norm = grad_norm is None or accelerator.scaler is not None or bool(torch.isfinite(grad_norm))
    updated = not nonfinite_loss and finite_norm
    if updated:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return updated, stop


def check_finite_weights(model: nn.Module, destination: Path) -> None:
    """Refuse to save weights holding NaN or infinity."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not tensor.isfinite().all()
    ]
    if bad:
        raise TrainingError(
            f"refusing to save {destination}: {len(bad)} weights are not finite ({', '.join(bad[:3])}, ...)."
        )


class Preemption:
    """SIGTERM (a preempted job) asks the loop to stop after its current step; a second SIGTERM acts as usual."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self.request)

    def request(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGTERM, self.previous)

    def release(self) -> None:
        if not self.requested:
            signal.signal(signal.SIGTERM, self.previous)


# Checkpoints and uploads --------------------------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders that finished saving (they hold the completion marker), oldest first."""
    found = [
        p
        for p in output_dir.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / COMPLETE_MARKER).exists()
    ]
    return sorted(found, key=checkpoint_step)


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint_marker(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / COMPLETE_MARKER).read_text())


def checkpoint_damage(checkpoint: Path) -> str | None:
    """What is wrong with a complete checkpoint's files, compared with the sizes and digests recorded at saving."""
    try:
        recorded = read_checkpoint_marker(checkpoint).get("files", {})
    except (OSError, ValueError) as error:
        return f"{checkpoint / COMPLETE_MARKER} is unreadable ({error})"
    for name, expected in recorded.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{path} has {path.stat().st_size} bytes where {expected['size']} were saved (truncated?)"
        if sha256(path) != expected["sha256"]:
            return f"{path} changed after it was saved (its SHA-256 differs)"
    return None


def resolve_checkpoint(value: str, output_dir: Path, skip_damaged: bool = False) -> Path:
    """
    The checkpoint to resume from: a given folder, or with 'latest' the newest complete one in `output_dir`. A
    damaged checkpoint is an error naming its bad file and the newest intact one; with `skip_damaged`, 'latest'
    passes over it to that one.
    """
    if value != "latest":
        path = Path(value)
        if not (path / COMPLETE_MARKER).exists():
            raise ArgumentError(f"--resume_from_checkpoint {value!r}: not a complete checkpoint folder.")
        damage = checkpoint_damage(path)
        if damage:
            raise ArgumentError(f"--resume_from_checkpoint {value!r} is damaged: {damage}.")
        return path
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        raise ArgumentError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}.")
    damaged = []
    for checkpoint in reversed(checkpoints):
        damage = checkpoint_damage(checkpoint)
        if damage is None:
            break
        damaged.append(damage)
    else:
        raise ArgumentError(f"--resume_from_checkpoint latest: every checkpoint is damaged: {'; '.join(damaged)}.")
    if damaged and not skip_damaged:
        raise ArgumentError(
            f"--resume_from_checkpoint latest: the newest checkpoint is damaged: {damaged[0]}. The newest intact "
            f"one is {checkpoint}: resume from it with --resume_from_checkpoint {checkpoint}, or pass "
            "--skip_corrupt_checkpoints."
        )
    for damage in damaged:
        logger.warning("Skipping a damaged checkpoint: %s", damage)
    return checkpoint


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict[str, Any]:
    """Load a checkpoint into the prepared model, optimizer, scheduler and RNGs; return its loop state."""
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - whatever the checkpoint's files hold that does not fit this run
        raise ArgumentError(f"cannot resume from {checkpoint}: {type(error).__name__}: {error}") from error
    logger.info("Resumed from %s", checkpoint)
    return {key: value for key, value in read_checkpoint_marker(checkpoint).items() if key != "files"}


class HubUploader:
    """Uploads folders to the hub in a background thread, retrying failures; never deletes anything."""

    def __init__(self, repo_id: str, attempts: int = 3, retry_delay: float = 10.0):
        self.repo_id, self.attempts, self.retry_delay = repo_id, attempts, retry_delay
        self.api = HfApi()
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.uploads: dict[str, Future] = {}

    def submit(self, folder: Path, path_in_repo: str | None = None) -> None:
        """Upload every file of `folder`, into `path_in_repo` (the repo's root by default)."""
        self.uploads[str(folder)] = self.executor.submit(self._upload, folder, path_in_repo)

    def _upload(self, folder: Path, path_in_repo: str | None) -> bool:
        for attempt in range(1, self.attempts + 1):
            try:
                self.api.create_repo(self.repo_id, exist_ok=True)
                self.api.upload_folder(
                    repo_id=self.repo_id,
                    folder_path=folder,
                    path_in_repo=path_in_repo,
                    commit_message=f"Upload {path_in_repo or 'the model'}",
                )
                return True
            except Exception as error:  # noqa: BLE001 - any network or hub error is retried, then logged
                logger.warning("Upload of %s failed (attempt %d/%d): %s", folder, attempt, self.attempts, error)
                if attempt < self.attempts:
                    time.sleep(self.retry_delay)
        return False

    def uploaded(self, folder: Path) -> bool:
        future = self.uploads.get(str(folder))
        return future is not None and future.done() and future.result()

    def wait(self) -> None:
        self.executor.shutdown(wait=True)
        failed = [folder for folder, future in self.uploads.items() if not future.result()]
        if failed:
            logger.error("These uploads failed; the local copies are kept: %s", failed)


class CheckpointManager:
    """
    Atomic `save_state` checkpoints of finite weights: written to a temporary folder, marked complete with the size
    and digest of every file, then renamed into place.
    """

    def __init__(self, accelerator: Accelerator, output_dir: Path, limit: int | None, uploader: HubUploader | None):
        self.accelerator, self.output_dir, self.limit, self.uploader = accelerator, output_dir, limit, uploader

    def save(self, state: dict[str, Any], model: nn.Module) -> Path:
        final = self.output_dir / f"checkpoint-{state['global_step']}"
        partial = self.output_dir / f".partial-checkpoint-{state['global_step']}"
        check_finite_weights(model, final)
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(partial)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            marker = {**state, "files": file_digests(partial)}
            (partial / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            if self.uploader is not None:
                self.uploader.submit(final, path_in_repo=final.name)
            self.rotate()
        self.accelerator.wait_for_everyone()
        return final

    def rotate(self) -> None:
        if self.limit is None:
            return
        checkpoints = complete_checkpoints(self.output_dir)
        for old in checkpoints[: max(0, len(checkpoints) - self.limit)]:
            if self.uploader is None or self.uploader.uploaded(old):
                shutil.rmtree(old)


# Validation ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def validate(model, loader, accelerator: Accelerator, negatives: torch.Tensor) -> dict[str, float]:
    """
    Perplexity and loss of the response text, meme usage accuracy, and R10@1 (each attached meme ranked among
    itself and its 9 `negatives`). Each process evaluates its share of the examples; their per-example sums are
    gathered without the duplicates that even out the last batch.
    """
    model.eval()
    totals = torch.zeros(6, dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        totals += accelerator.gather_for_metrics(example_sums(model, accelerator, batch, negatives)).sum(0)
    model.train()
    nll_sum, tokens, correct, usage_count, hits, memes = totals.tolist()
    loss = nll_sum / max(tokens, 1)
    return {
        "eval_loss": loss,
        "eval_perplexity": math.exp(min(loss, 50)),
        "eval_usage_accuracy": correct / max(usage_count, 1),
        "eval_r10@1": hits / max(memes, 1),
    }


def example_sums(model, accelerator: Accelerator, batch: dict[str, torch.Tensor], negatives: torch.Tensor):
    """
    Per example (row) of a validation batch: text NLL, labelled text tokens, right usage decisions, usage labels,
    retrieval hits and attached memes, as a `(rows, 6)` float64 tensor.
    """
    unwrapped = accelerator.unwrap_model(model)
    batch = dict(batch)
    example_index, labels = batch.pop("example_index"), batch.pop("labels")
    outputs = model(**batch)
    targets = labels[:, 1:]
    nll = F.cross_entropy(
        outputs.logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    is_tag = batch["input_ids"] == unwrapped.config.tag_token_id
    tag_row = is_tag.nonzero()[:, 0]  # the row of every [TAG], in the order of the usage logits
    tag_usage = batch["usage_labels"][is_tag]
    labelled = tag_usage != IGNORE_INDEX
    correct = (outputs.usage_logits.argmax(-1) == tag_usage) & labelled
    uses_meme = tag_usage == 1
    meme_row = tag_row[uses_meme]
    meme_order = torch.arange(len(meme_row), device=meme_row.device) - torch.searchsorted(meme_row, meme_row)
    meme_negatives = negatives.to(meme_row.device)[example_index[meme_row], meme_order]
    hits = retrieval_hits(unwrapped, outputs, batch, uses_meme, meme_negatives)

    def per_row(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(labels), dtype=torch.float64, device=labels.device).index_add_(0, rows, values.double())

    return torch.stack(
        [
            nll.sum(-1).double(),
            (targets != IGNORE_INDEX).sum(-1).double(),
            per_row(correct, tag_row),
            per_row(labelled, tag_row),
            per_row(hits, meme_row),
            per_row(torch.ones_like(meme_row), meme_row),
        ],
        dim=1,
    )


def retrieval_hits(model, outputs, batch, uses_meme: torch.Tensor, negative_rows: torch.Tensor) -> torch.Tensor:
    """For each meme-using [TAG]: whether its gold meme ranks before its 9 negatives (rows of the meme bank)."""
    if not uses_meme.any():
        return uses_meme.new_zeros(0)
    features = batch["meme_features"] if "meme_features" in batch else model.get_meme_features(batch["pixel_values"])
    gold = model.attached_meme_features(batch["input_ids"], features, uses_meme)
    predictions = outputs.meme_predictions[uses_meme]
    negatives = model.meme_bank_features[negative_rows]
    is_gold = (negatives == gold.unsqueeze(1)).all(-1)
    gold_distance = model.meme_distances(predictions, gold.unsqueeze(1)).squeeze(1)
    negative_distance = model.meme_distances(predictions, negatives).masked_fill(is_gold, float("inf"))
    return gold_distance < negative_distance.min(-1).values


# Model card ---------------------------------------------------------------------------------------------------------


def write_model_card(folder: Path, args: TrainArguments, metrics: dict[str, float], model_name: str) -> None:
    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=args.dataset,
            dataset_name="MOD (DSTC10 Track 1)",
            dataset_split="validation",
            metric_type=name.removeprefix("eval_"),
            metric_value=round(value, 4),
        )
        for name, value in metrics.items()
    ]
    data = ModelCardData(
        model_name=model_name,
        datasets=[args.dataset],
        eval_results=results,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["meme-dialogue", "mod-gpt", "custom_code"],
        license="apache-2.0",
    )
    arguments = json.dumps({k: v for k, v in asdict(args).items() if v is not None}, indent=2, ensure_ascii=False)
    metric_lines = "\n".join(f"| {name.removeprefix('eval_')} | {value:.4f} |" for name, value in metrics.items())
    content = f"""---
{data.to_yaml()}
---

# {model_name}

MOD-GPT (meme-incorporated open-domain dialogue): a GPT-style decoder that replies in text, decides whether to
attach a meme, picks it by regressing its visual feature and ranking the meme bank, and predicts its emotion.
Trained with `train.py` on `{args.dataset}`.

## Usage

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{model_name}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{model_name}", trust_remote_code=True)
dialogue = [{{"speaker": "speaker1", "text": "你好", "meme": None, "emotion": None}}]
print(model.respond(dialogue, processor))
```

## Validation

| metric | value |
|---|---|
{metric_lines}

## Training arguments

```json
{arguments}
```
"""
    ModelCard(content).save(folder / "README.md")


def save_final(accelerator, model, processor, folder: Path, args: TrainArguments, metrics: dict[str, float]) -> None:
    """
    Save model, processor, generation config and a model card into `folder` so that `from_pretrained(folder)` loads
    them, atomically: written whole into a new hidden folder, then switched to in one rename (module docstring).
    """
    unwrapped = accelerator.unwrap_model(model)
    check_finite_weights(unwrapped, folder)
    if not accelerator.is_main_process:
        return

    def write(version: Path) -> None:
        # Saving through the pipeline also records it in config.json, for `pipeline(model=..., trust_remote_code=True)`.
        MemeDialoguePipeline(model=unwrapped, processor=processor).save_pretrained(version)
        processor.save_pretrained(version)
        write_model_card(version, args, metrics, args.hub_model_id or folder.name)

    publish_model(folder, write)


def publish_model(folder: Path, write: Callable[[Path], None]) -> None:
    """
    Have `write` fill a new hidden version folder inside `folder`, then point the `.model` link at it with one
    rename; `folder`'s own files are links through `.model`, so they switch with it. Older versions go last.
    """
    folder.mkdir(parents=True, exist_ok=True)
    version = Path(tempfile.mkdtemp(prefix=f"{MODEL_LINK}-", dir=folder))
    try:
        write(version)
        version.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared like any other
        replace_with_link(folder / MODEL_LINK, version.name)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    link_model_files(folder)
    for old in folder.glob(f"{MODEL_LINK}-*"):
        if old.name != version.name:
            remove_path(old)


def replace_with_link(path: Path, target: str) -> None:
    """Make `path` a symbolic link to `target` in one rename, whatever `path` was (a link, a file, nothing)."""
    temporary = path.with_name(f"{MODEL_LINK}-link-{os.getpid()}-{time.monotonic_ns()}")
    os.symlink(target, temporary)
    os.replace(temporary, path)


def link_model_files(folder: Path) -> None:
    """
    Give `folder` a link `name -> .model/name` for each file of the current version, `config.json` last so that the
    folder loads only once it is whole, and drop links to files the version no longer has.
    """
    names = sorted((p.name for p in (folder / MODEL_LINK).iterdir()), key=lambda name: name == "config.json")
    for name in names:
        target = f"{MODEL_LINK}/{name}"
        if not (folder / name).is_symlink() or os.readlink(folder / name) != target:
            replace_with_link(folder / name, target)
    for path in folder.iterdir():
        if path.is_symlink() and os.readlink(path).startswith(f"{MODEL_LINK}/") and not path.exists():
            path.unlink()


# Training loop ------------------------------------------------------------------------------------------------------


class LossWindow:
    """The losses of the steps since the last log line; carried in checkpoints, so a resumed run logs the same means."""

    def __init__(self, accelerator: Accelerator, carried: list[float]):
        self.accelerator = accelerator
        self.reset([torch.tensor(value, device=accelerator.device) for value in carried])

    def reset(self, losses: list[torch.Tensor]) -> None:
        self.losses, self.skipped, self.steps, self.started = losses, 0, 0, time.perf_counter()

    def add(self, losses: list[torch.Tensor], updated: bool) -> None:
        """One step's micro-batch losses; a skipped step (not finite) adds none."""
        self.steps += 1
        if updated:
            self.losses += losses
        else:
            self.skipped += 1

    def carried(self) -> list[float]:
        """The losses so far, averaged over processes, for a checkpoint."""
        return self.accelerator.reduce(torch.stack(self.losses), reduction="mean").tolist() if self.losses else []

    def summary(self, learning_rate: float) -> dict[str, float | None]:
        """The log line of the window (its loss is None when every step was skipped), and a new window."""
        losses = self.carried()
        values = {
            "loss": sum(losses) / len(losses) if losses else None,
            "lr": learning_rate,
            "steps_per_second": self.steps / (time.perf_counter() - self.started),
        }
        if self.skipped:
            values["nonfinite_steps"] = self.skipped
        self.reset([])
        return values


def finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity: write them as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def train(args: TrainArguments) -> dict[str, float]:
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.ERROR)
    datasets.disable_progress_bars()
    resume_from = None
    if args.resume_from_checkpoint:
        resume_from = resolve_checkpoint(args.resume_from_checkpoint, output_dir, args.skip_corrupt_checkpoints)
    set_seed(args.seed)

    dialogues, memes = load_splits(args.dataset)
    processor = build_processor(args, dialogues)
    train_encodings = encode_split(dialogues["train"], processor, args.max_length)
    eval_encodings = [
        {**encoding, "example_index": index}
        for index, encoding in enumerate(encode_split(dialogues["validation"], processor, args.max_length))
    ]
    global_batch_size = args.per_device_train_batch_size * accelerator.num_processes
    sampler = LengthGroupedBatches([len(e["input_ids"]) for e in train_encodings], global_batch_size, args.seed)
    check_training_batches(
        len(train_encodings), len(dialogues["train"]), len(sampler), args, accelerator.num_processes
    )
    model = build_model(args, processor, emotion_names(dialogues), memes)
    if args.max_length > model.max_positions:
        raise ArgumentError(
            f"--max_length {args.max_length} is more than the {model.max_positions} positions of the decoder."
        )
    fill_meme_bank(args, model, processor, memes)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    logger.info(
        "MOD-GPT with %.1fM parameters, %d memes in the bank", model.num_parameters() / 1e6, len(model.meme_bank_ids)
    )

    images = dict(zip(memes["meme_id"], memes["image"])) if args.train_meme_encoder else None
    collator = DialogueCollator(processor, model.meme_bank_ids, model.meme_bank_features.clone(), images)
    train_loader = DataLoader(train_encodings, batch_sampler=sampler, collate_fn=collator)
    eval_loader = validation_loader(eval_encodings, collator, args, accelerator.num_processes)
    negatives = retrieval_negatives(eval_encodings, len(model.meme_bank_ids), args.seed)

    steps_per_epoch = len(sampler) // args.gradient_accumulation_steps
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, args.warmup_steps, max_steps)
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )
    unwrapped = accelerator.unwrap_model(model)

    uploader = HubUploader(args.hub_model_id) if args.push_to_hub and accelerator.is_main_process else None
    checkpoints = CheckpointManager(accelerator, output_dir, args.save_total_limit, uploader)
    state = {"global_step": 0, "best_eval_loss": None, "best_step": None, "eval_step": None, "nonfinite_steps": 0}
    if resume_from is not None:
        state.update(load_checkpoint(accelerator, resume_from))
    window = LossWindow(accelerator, state.pop("loss_window", []))
    accelerator.wait_for_everyone()  # every process has checked the output folder before anything is written there
    if accelerator.is_main_process:
        start_run_folder(output_dir, args, state["global_step"] if resume_from is not None else None)
        accelerator.init_trackers("mod-gpt", config={k: v for k, v in asdict(args).items() if v is not None})
    metrics_file = output_dir / "metrics.jsonl"

    def log(values: dict[str, Any]) -> None:
        values = finite_or_none(values)
        accelerator.log({k: v for k, v in values.items() if v is not None}, step=state["global_step"])
        if accelerator.is_main_process:
            with metrics_file.open("a") as stream:
                stream.write(json.dumps({"step": state["global_step"], **values}, allow_nan=False) + "\n")

    def run_validation() -> dict[str, float]:
        metrics = validate(model, eval_loader, accelerator, negatives)
        log(metrics)
        logger.info("step %d: %s", state["global_step"], {k: round(v, 4) for k, v in metrics.items()})
        state["eval_step"], state["eval_metrics"] = state["global_step"], metrics
        best = math.inf if state["best_eval_loss"] is None else state["best_eval_loss"]
        if math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] < best:
            state.update(best_eval_loss=metrics["eval_loss"], best_step=state["global_step"])
            save_final(accelerator, model, processor, output_dir / "best_model", args, metrics)
        return metrics

    def save_checkpoint() -> Path:
        return checkpoints.save({**state, "loss_window": window.carried()}, unwrapped)

    progress = tqdm(total=max_steps, initial=state["global_step"], disable=not accelerator.is_local_main_process)
    preemption = Preemption()
    model.train()
    cycle_losses = []
    try:
        while state["global_step"] < max_steps:
            epoch, step_in_epoch = divmod(state["global_step"], steps_per_epoch)
            sampler.set_epoch(epoch)
            skip = step_in_epoch * args.gradient_accumulation_steps
            epoch_loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            for batch_index, batch in enumerate(epoch_loader, start=skip):
                seed_dropout(args.seed, epoch, batch_index, accelerator.process_index)
                with accelerator.accumulate(model):
                    outputs = model(**batch)
                    loss = global_batch_loss(outputs, batch, accelerator, unwrapped.config)
                    accelerator.backward(loss)
                    cycle_losses.append(loss.detach())
                    if accelerator.sync_gradients:
                        updated, stop = apply_gradients(
                            accelerator, optimizer, scheduler, trainable, args, cycle_losses, preemption.requested
                        )
                if not accelerator.sync_gradients:
                    continue
                state["global_step"] += 1
                step = state["global_step"]
                progress.update(1)
                window.add(cycle_losses, updated)
                cycle_losses = []
                count_nonfinite_steps(state, updated, args)
                if step % args.logging_steps == 0 or step == max_steps:
                    values = window.summary(scheduler.get_last_lr()[0])
                    progress.set_postfix({k: f"{v:.3g}" for k, v in values.items() if v is not None})
                    log(values)
                if args.eval_steps and step % args.eval_steps == 0:
                    run_validation()
                if stop or (args.save_steps and step % args.save_steps == 0):
                    checkpoint = save_checkpoint()
                if stop:
                    raise Preempted(
                        f"stopped by SIGTERM after step {step}; saved {checkpoint}. Continue with "
                        "--resume_from_checkpoint latest."
                    )
                if step >= max_steps or step % steps_per_epoch == 0:
                    break  # at an epoch's end, its last incomplete accumulation cycle, if any, is dropped
    finally:
        preemption.release()
        progress.close()

    final_metrics = state["eval_metrics"] if state["eval_step"] == state["global_step"] else run_validation()
    save_final(accelerator, model, processor, output_dir, args, final_metrics)
    accelerator.wait_for_everyone()
    if uploader is not None:
        uploader.submit((output_dir / MODEL_LINK).resolve())  # the model alone: no checkpoint, log or best model
        uploader.wait()
    accelerator.end_training()
    return final_metrics


def count_nonfinite_steps(state: dict[str, Any], updated: bool, args: TrainArguments) -> None:
    """Count skipped steps in a row; too many stop the run."""
    if updated:
        state["nonfinite_steps"] = 0
        return
    state["nonfinite_steps"] += 1
    step, count = state["global_step"], state["nonfinite_steps"]
    logger.warning("step %d: the loss or the gradient norm is not finite; its update was skipped.", step)
    if count >= args.max_nonfinite_steps:
        raise TrainingError(
            f"stopped at step {step}: the loss or the gradient norm was not finite at {count} steps in a row "
            f"(steps {step - count + 1} to {step}), whose updates were skipped, so the weights are those of step "
            f"{step - count}; the final model was not saved. Lower --learning_rate ({args.learning_rate}) or "
            "--max_grad_norm, or look for bad data at these steps."
        )


# IMFE: meme encoder pre-training --------------------------------------------------------------------------------


def imfe_examples(args: TrainArguments) -> tuple[list, list[int], list[str]]:
    """Images, labels and label names: an imagefolder dataset, or the memes labelled by their most frequent emotion."""
    if args.imfe_dataset is not None:
        folder = datasets.load_dataset("imagefolder", data_dir=args.imfe_dataset, split="train")
        return folder["image"], folder["label"], folder.features["label"].names
    dialogues, memes = load_splits(args.dataset)
    counts: dict[str, Counter] = {}
    for turns in dialogues["train"]["turns"]:
        for turn in turns:
            if turn["meme"] is not None and turn["emotion"] is not None:
                counts.setdefault(turn["meme"], Counter())[turn["emotion"]] += 1
    labelled = [i for i, meme in enumerate(memes["meme_id"]) if meme in counts]
    rows = memes.select(labelled)
    labels = [counts[meme].most_common(1)[0][0] for meme in rows["meme_id"]]
    return rows["image"], labels, emotion_names(dialogues)


def train_imfe(args: TrainArguments) -> dict[str, float]:
    """Fine-tune the meme encoder as an image classifier and save it for the later stages."""
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps
    )
    set_seed(args.seed)
    images, labels, names = imfe_examples(args)
    if not labels:
        raise ArgumentError(f"--task imfe: no labelled images in {args.imfe_dataset or args.dataset!r}.")
    encoder = timm.create_model(args.meme_encoder, pretrained=False, num_classes=len(names))
    if args.meme_encoder_checkpoint:
        load_meme_encoder_weights(encoder, args.meme_encoder_checkpoint)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=encoder), is_training=True)
    examples = list(zip(images, labels))
    loader = DataLoader(
        examples,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=lambda batch: (
            torch.stack([transform(i.convert("RGB")) for i, _ in batch]),
            torch.tensor([y for _, y in batch]),
        ),
    )
    steps_per_epoch = max(1, len(loader) // args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    encoder, optimizer, loader = accelerator.prepare(encoder, optimizer, loader)
    output_dir = Path(args.output_dir)
    accelerator.wait_for_everyone()  # every process has checked the output folder before anything is written there
    if accelerator.is_main_process:
        start_run_folder(output_dir, args, None)
    step, losses = 0, []
    progress = tqdm(total=max_steps, disable=not accelerator.is_local_main_process, desc="imfe")
    while step < max_steps:
        for pixel_values, targets in loader:
            with accelerator.accumulate(encoder):
                loss = torch.nn.functional.cross_entropy(encoder(pixel_values), targets)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
                progress.update(1)
                progress.set_postfix(loss=f"{losses[-1]:.3f}")
                if accelerator.is_main_process and (step % args.logging_steps == 0 or step == max_steps):
                    window = losses[-args.logging_steps :]
                    with (output_dir / "metrics.jsonl").open("a") as stream:
                        stream.write(json.dumps({"step": step, "imfe_loss": sum(window) / len(window)}) + "\n")
            if step >= max_steps:
                break
    progress.close()
    if accelerator.is_main_process:
        (output_dir / "imfe_labels.json").write_text(json.dumps(names, ensure_ascii=False))
        partial = output_dir / f".partial-{IMFE_ENCODER_FILE}"
        save_file(accelerator.unwrap_model(encoder).state_dict(), partial)
        os.replace(partial, output_dir / IMFE_ENCODER_FILE)
    accelerator.wait_for_everyone()
    return {"imfe_loss": losses[-1]}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_arguments(sys.argv[1:] if argv is None else argv)
        train_imfe(args) if args.task == "imfe" else train(args)
    except ArgumentError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    except Preempted as stop:
        print(f"train.py: {stop}", file=sys.stderr)
        return SIGTERM_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
