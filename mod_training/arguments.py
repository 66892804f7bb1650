"""train.py's arguments: the dataclass that `HfArgumentParser` reads, and every check that needs no loaded data."""

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import yaml
from transformers import HfArgumentParser

from configuration_mod_gpt import MODGPTConfig, is_timm_hub_model, timm_encoder_config, timm_hub_encoder_config
from output_folders import why_not_writable
from pipeline_mod import is_mod_gpt_folder

from . import ArgumentError
from .run_folder import RUN_MARKER, is_training_run

ARGUMENT_FILE_SUFFIXES = (".yaml", ".yml", ".json")
TASK_LOSS_WEIGHTS = {
    "mod": {"text": 1.0, "usage": 1.0, "meme": 1.0, "emotion": 1.0},
    "cem": {"text": 0.0, "usage": 0.0, "meme": 0.0, "emotion": 1.0},
}
PRESETS = {
    "tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 512},
    "base": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 513},
}
# The schedules of transformers' `get_scheduler` that step without a metric and need no settings of their own.
LR_SCHEDULERS = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]


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
        default="efficientnet_b0",
        metadata={
            "help": "timm model that encodes memes (--meme_features encoder): a timm hub id or local folder in its "
            "layout (config.json, model.safetensors), whose weights and data config it starts from, such as "
            "timm/efficientnet_b0.ra_in1k; or a timm architecture, such as efficientnet_b0, which starts from "
            "random weights."
        },
    )
    meme_encoder_checkpoint: str | None = field(
        default=None, metadata={"help": "A local timm weights file for it, loaded instead of the --meme_encoder's."}
    )
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
    lr_scheduler_type: LR_SCHEDULERS = field(
        default="linear",
        metadata={"help": "Learning rate schedule after the warmup (transformers' `get_scheduler`)."},
    )
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
    if args.meme_features == "encoder":
        read_meme_encoder_config(args.meme_encoder)
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
    try:
        init_from_mod_gpt = is_mod_gpt_folder(args.init_from)
    except ValueError as error:
        raise ArgumentError(f"--init_from {args.init_from!r}: {error}") from error
    if args.meme_encoder_checkpoint is not None:
        if not Path(args.meme_encoder_checkpoint).is_file():
            raise ArgumentError(f"--meme_encoder_checkpoint {args.meme_encoder_checkpoint!r}: no such file.")
        if init_from_mod_gpt:
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
    problem = why_not_writable(output_dir, RUN_MARKER, "train.py", is_training_run)
    if problem and not output_dir.is_dir():
        raise ArgumentError(f"--output_dir {args.output_dir!r} {problem}: nothing was written.")
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
    if problem:
        raise ArgumentError(
            f"--output_dir {args.output_dir!r} {problem}: nothing was written, and --overwrite_output_dir never "
            "deletes such a folder. Give a new or empty folder."
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


def read_meme_encoder_config(value: str) -> dict[str, Any]:
    """The `meme_encoder_config` that --meme_encoder names: a timm architecture, or a timm hub id or local folder."""
    if not is_timm_hub_model(value):
        if not timm.is_model(value):
            raise ArgumentError(
                f"--meme_encoder {value!r}: not a timm architecture (timm.list_models()), hub id or local folder."
            )
        return timm_encoder_config(value)
    if looks_local(value) and not Path(value).is_dir():
        raise ArgumentError(f"--meme_encoder {value!r}: no such folder.")
    try:
        return timm_hub_encoder_config(value)
    except ValueError as error:
        reason = " ".join(str(error).split())  # one line, also for the hub client's multi-line messages
        raise ArgumentError(f"--meme_encoder {value!r}: cannot use it as a timm model: {reason}.") from error


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
