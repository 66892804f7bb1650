"""Train MOD-GPT on a built MOD dataset, from one CPU to many GPUs.

    accelerate launch train.py --dataset demo_output/data --output_dir demo_output/model --model_config tiny
    python train.py args.yaml          # the same arguments from a YAML or JSON file

Every dialogue is one packed sequence (history turns and their responses at once), or, when longer than
--max_length, a few windows of whole turns that each learn new responses; batches are length-grouped and padded per
batch. Everything distributed goes through `Accelerator`.
"""

import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import timm
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_linear_schedule_with_warmup

from configuration_mod_gpt import MODGPTConfig
from modeling_mod_gpt import MODGPTForMemeDialogue
from pipeline_mod import MemeDialoguePipeline
from processing_mod import IGNORE_INDEX, MODProcessor

logger = logging.getLogger("train")

COMPLETE_MARKER = "checkpoint_complete.json"
IMFE_ENCODER_FILE = "meme_encoder.safetensors"
TASK_LOSS_WEIGHTS = {
    "mod": {"text": 1.0, "usage": 1.0, "meme": 1.0, "emotion": 1.0},
    "cem": {"text": 0.0, "usage": 0.0, "meme": 0.0, "emotion": 1.0},
}
PRESETS = {
    "tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 512},
    "base": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 513},
}


class ArgumentError(ValueError):
    """A bad command-line argument, reported as one line, without a traceback."""


@dataclass
class TrainArguments:
    dataset: str = field(
        metadata={"help": "Built MOD dataset: a local folder (python -m mod_dataset build) or hub id."}
    )
    output_dir: str = field(metadata={"help": "Where checkpoints, logs and the final model go."})
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
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint folder or 'latest'."})
    push_to_hub: bool = False
    hub_model_id: str | None = None
    report_to: str = field(default="none", metadata={"help": "Trackers: 'tensorboard', 'wandb', 'all' or 'none'."})


# Data ---------------------------------------------------------------------------------------------------------------


def load_splits(dataset: str) -> tuple[datasets.DatasetDict, datasets.Dataset]:
    """The `dialogues` splits and the `memes` table of a built MOD dataset."""
    is_hub_id = dataset.count("/") == 1 and not dataset.startswith((".", "/", "~")) and not Path(dataset).exists()
    if not (Path(dataset).is_dir() or is_hub_id):
        raise ArgumentError(f"--dataset {dataset!r}: no such folder (build one with `python -m mod_dataset build`).")
    try:
        dialogues = datasets.load_dataset(dataset, "dialogues")
        memes = datasets.load_dataset(dataset, "memes")
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        raise ArgumentError(f"--dataset {dataset!r} is not a built MOD dataset: {error}") from error
    return dialogues, next(iter(memes.values()))


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
    """Pads encoded dialogues and looks up the features of their memes (computed once, by meme id)."""

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
        return {key: value for key, value in batch.items() if value is not None}


# Model --------------------------------------------------------------------------------------------------------------


def is_mod_checkpoint(path: str | None) -> bool:
    return path is not None and (Path(path) / "config.json").exists() and _model_type(path) == "mod_gpt"


def _model_type(path: str) -> str | None:
    return json.loads((Path(path) / "config.json").read_text()).get("model_type")


def build_processor(args: TrainArguments, dialogues: datasets.DatasetDict) -> MODProcessor:
    names = emotion_names(dialogues)
    if is_mod_checkpoint(args.init_from):
        processor = MODProcessor.from_pretrained(args.init_from, trust_remote_code=True)
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
        if not Path(args.init_from).exists():
            raise ArgumentError(f"--init_from {args.init_from!r}: no such folder.")
        return MODGPTForMemeDialogue.from_text_backbone(
            args.init_from, vocab_size=len(processor.tokenizer), **mod_kwargs
        )
    if args.model_config in PRESETS:
        text_config = {"model_type": "gpt2", **PRESETS[args.model_config]}
    elif Path(args.model_config).is_file():
        text_config = json.loads(Path(args.model_config).read_text())
        if text_config.get("model_type") == MODGPTConfig.model_type:  # a whole MOD-GPT config: its heads too
            mod_kwargs = {**{k: v for k, v in text_config.items() if k != "text_config"}, **mod_kwargs}
            text_config = text_config["text_config"]
    else:
        raise ArgumentError(f"--model_config {args.model_config!r}: not a preset {sorted(PRESETS)} nor a JSON file.")
    text_config["vocab_size"] = len(processor.tokenizer)
    return MODGPTForMemeDialogue(MODGPTConfig(text_config=text_config, **mod_kwargs))


def meme_encoder_kwargs(args: TrainArguments, memes: datasets.Dataset) -> dict[str, Any]:
    """The config's meme encoder: the timm model of --meme_encoder, or none for the release's precomputed features."""
    if args.meme_features == "release":
        if args.train_meme_encoder or args.meme_encoder_checkpoint:
            raise ArgumentError(
                "--meme_features release trains on precomputed features: the model has no meme encoder to load "
                "(--meme_encoder_checkpoint) or fine-tune (--train_meme_encoder)."
            )
        return dict(meme_encoder_name=None, meme_feature_size=len(release_meme_features(args.dataset, memes)[0]))
    return dict(
        meme_encoder_name=args.meme_encoder,
        meme_encoder_checkpoint=args.meme_encoder_checkpoint,
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


def resolve_checkpoint(value: str, output_dir: Path) -> Path:
    if value == "latest":
        checkpoints = complete_checkpoints(output_dir)
        if not checkpoints:
            raise ArgumentError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}.")
        return checkpoints[-1]
    path = Path(value)
    if not (path / COMPLETE_MARKER).exists():
        raise ArgumentError(f"--resume_from_checkpoint {value!r}: not a complete checkpoint folder.")
    return path


class HubUploader:
    """Uploads folders to the hub in a background thread, retrying failures; never deletes anything."""

    def __init__(self, repo_id: str, attempts: int = 3, retry_delay: float = 10.0):
        self.repo_id, self.attempts, self.retry_delay = repo_id, attempts, retry_delay
        self.api = HfApi()
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.uploads: dict[str, Future] = {}

    def submit(self, folder: Path, path_in_repo: str | None = None, ignore_patterns: list[str] | None = None) -> None:
        self.uploads[str(folder)] = self.executor.submit(self._upload, folder, path_in_repo, ignore_patterns)

    def _upload(self, folder: Path, path_in_repo: str | None, ignore_patterns: list[str] | None) -> bool:
        for attempt in range(1, self.attempts + 1):
            try:
                self.api.create_repo(self.repo_id, exist_ok=True)
                self.api.upload_folder(
                    repo_id=self.repo_id,
                    folder_path=folder,
                    path_in_repo=path_in_repo,
                    commit_message=f"Upload {folder.name}",
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
    """Atomic `save_state` checkpoints: written to a temporary folder, marked complete, then renamed into place."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, limit: int | None, uploader: HubUploader | None):
        self.accelerator, self.output_dir, self.limit, self.uploader = accelerator, output_dir, limit, uploader

    def save(self, state: dict[str, Any]) -> Path:
        final = self.output_dir / f"checkpoint-{state['global_step']}"
        partial = self.output_dir / f".partial-checkpoint-{state['global_step']}"
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(partial)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (partial / COMPLETE_MARKER).write_text(json.dumps(state, indent=2))
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
def validate(model, loader, accelerator: Accelerator, bank: torch.Tensor, seed: int) -> dict[str, float]:
    """Perplexity and loss of the response text, meme usage accuracy, and R10@1 (gold meme among 9 random others)."""
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    generator = torch.Generator().manual_seed(seed)
    totals = torch.zeros(6, dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        labels = batch.pop("labels")
        outputs = model(**batch)
        logits = outputs.logits[:, :-1].float()
        targets = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        tag_usage = batch["usage_labels"][batch["input_ids"] == unwrapped.config.tag_token_id]
        labelled = tag_usage != IGNORE_INDEX
        usage_correct = (outputs.usage_logits.argmax(-1) == tag_usage)[labelled]
        hits, with_meme = retrieval_hits(unwrapped, outputs, batch, tag_usage, bank, generator)
        per_batch = torch.tensor(
            [
                nll.sum().item(),
                (targets != IGNORE_INDEX).sum().item(),
                usage_correct.sum().item(),
                labelled.sum().item(),
                hits,
                with_meme,
            ],
            dtype=torch.float64,
            device=accelerator.device,
        )
        totals += accelerator.reduce(per_batch, reduction="sum")
    model.train()
    nll_sum, tokens, correct, usage_count, hits, memes = totals.tolist()
    loss = nll_sum / max(tokens, 1)
    return {
        "eval_loss": loss,
        "eval_perplexity": math.exp(min(loss, 50)),
        "eval_usage_accuracy": correct / max(usage_count, 1),
        "eval_r10@1": hits / max(memes, 1),
    }


def retrieval_hits(
    model, outputs, batch, tag_usage, bank: torch.Tensor, generator: torch.Generator
) -> tuple[int, int]:
    """How often the gold meme of a meme-using turn ranks first among itself and 9 random other bank memes."""
    uses_meme = tag_usage == 1
    if not uses_meme.any():
        return 0, 0
    features = batch["meme_features"] if "meme_features" in batch else model.get_meme_features(batch["pixel_values"])
    gold = model.attached_meme_features(batch["input_ids"], features, uses_meme)
    predictions = outputs.meme_predictions[uses_meme]
    negatives = bank[torch.randint(len(bank), (len(gold), 9), generator=generator)].to(gold.device)
    is_gold = (negatives == gold.unsqueeze(1)).all(-1)
    gold_distance = model.meme_distances(predictions, gold.unsqueeze(1)).squeeze(1)
    negative_distance = model.meme_distances(predictions, negatives).masked_fill(is_gold, float("inf"))
    return int((gold_distance < negative_distance.min(-1).values).sum()), len(gold)


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
    """`save_pretrained` of model, processor and generation config, plus a model card; written atomically."""
    if not accelerator.is_main_process:
        return
    partial = folder.with_name(f".partial-{folder.name}")
    shutil.rmtree(partial, ignore_errors=True)
    # Saving through the pipeline also records it in config.json, for `pipeline(model=folder, trust_remote_code=True)`.
    MemeDialoguePipeline(model=accelerator.unwrap_model(model), processor=processor).save_pretrained(partial)
    processor.save_pretrained(partial)
    write_model_card(partial, args, metrics, args.hub_model_id or folder.name)
    for name in os.listdir(partial):
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(partial / name, target)
    partial.rmdir()


# Training loop ------------------------------------------------------------------------------------------------------


def parse_arguments(argv: list[str]) -> TrainArguments:
    parser = HfArgumentParser(TrainArguments)
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        (args,) = parser.parse_yaml_file(argv[0])
    elif len(argv) == 1 and argv[0].endswith(".json"):
        (args,) = parser.parse_json_file(argv[0])
    else:
        try:
            (args,) = parser.parse_args_into_dataclasses(argv)
        except ValueError as error:  # unknown arguments
            raise ArgumentError(str(error)) from error
    if args.push_to_hub and not args.hub_model_id:
        raise ArgumentError("--push_to_hub needs --hub_model_id.")
    if args.task not in (*TASK_LOSS_WEIGHTS, "imfe"):
        raise ArgumentError(f"--task {args.task!r}: use 'mod', 'cem' or 'imfe'.")
    if args.mixed_precision not in ("no", "fp16", "bf16"):
        raise ArgumentError(f"--mixed_precision {args.mixed_precision!r}: use 'no', 'fp16' or 'bf16'.")
    return args


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
    resume_from = resolve_checkpoint(args.resume_from_checkpoint, output_dir) if args.resume_from_checkpoint else None
    set_seed(args.seed)

    dialogues, memes = load_splits(args.dataset)
    processor = build_processor(args, dialogues)
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
    train_encodings = encode_split(dialogues["train"], processor, args.max_length)
    eval_encodings = encode_split(dialogues["validation"], processor, args.max_length)
    global_batch_size = args.per_device_train_batch_size * accelerator.num_processes
    sampler = LengthGroupedBatches([len(e["input_ids"]) for e in train_encodings], global_batch_size, args.seed)
    train_loader = DataLoader(train_encodings, batch_sampler=sampler, collate_fn=collator)
    eval_sampler = LengthGroupedBatches(
        [len(e["input_ids"]) for e in eval_encodings],
        args.per_device_eval_batch_size * accelerator.num_processes,
        0,
        shuffle=False,
    )
    eval_loader = DataLoader(eval_encodings, batch_sampler=eval_sampler, collate_fn=collator)

    steps_per_epoch = max(1, len(train_loader) // args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, args.warmup_steps, max_steps)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)

    uploader = HubUploader(args.hub_model_id) if args.push_to_hub and accelerator.is_main_process else None
    checkpoints = CheckpointManager(accelerator, output_dir, args.save_total_limit, uploader)
    state = {"global_step": 0, "best_eval_loss": None, "best_step": None, "eval_step": None}
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / COMPLETE_MARKER).read_text())
        logger.info("Resumed from %s at step %d", resume_from, state["global_step"])
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        accelerator.init_trackers("mod-gpt", config={k: v for k, v in asdict(args).items() if v is not None})
    metrics_file = output_dir / "metrics.jsonl"
    bank = accelerator.unwrap_model(model).meme_bank_features

    def log(values: dict[str, float]) -> None:
        accelerator.log(values, step=state["global_step"])
        if accelerator.is_main_process:
            with metrics_file.open("a") as stream:
                stream.write(json.dumps({"step": state["global_step"], **values}) + "\n")

    def run_validation() -> dict[str, float]:
        metrics = validate(model, eval_loader, accelerator, bank, args.seed)
        log(metrics)
        logger.info("step %d: %s", state["global_step"], {k: round(v, 4) for k, v in metrics.items()})
        state["eval_step"], state["eval_metrics"] = state["global_step"], metrics
        if state["best_eval_loss"] is None or metrics["eval_loss"] < state["best_eval_loss"]:
            state.update(best_eval_loss=metrics["eval_loss"], best_step=state["global_step"])
            save_final(accelerator, model, processor, output_dir / "best_model", args, metrics)
        return metrics

    progress = tqdm(total=max_steps, initial=state["global_step"], disable=not accelerator.is_local_main_process)
    model.train()
    running_loss, started = [], time.perf_counter()
    batches_per_step = args.gradient_accumulation_steps
    while state["global_step"] < max_steps:
        epoch, step_in_epoch = divmod(state["global_step"], steps_per_epoch)
        sampler.set_epoch(epoch)
        skip = step_in_epoch * batches_per_step
        epoch_loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss = global_batch_loss(outputs, batch, accelerator, accelerator.unwrap_model(model).config)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running_loss.append(loss.detach())
            if not accelerator.sync_gradients:
                continue
            state["global_step"] += 1
            progress.update(1)
            if state["global_step"] % args.logging_steps == 0 or state["global_step"] == max_steps:
                loss = accelerator.reduce(torch.stack(running_loss).mean(), reduction="mean").item()
                elapsed = time.perf_counter() - started
                values = {
                    "loss": loss,
                    "lr": scheduler.get_last_lr()[0],
                    "steps_per_second": len(running_loss) / batches_per_step / elapsed,
                }
                progress.set_postfix(
                    loss=f"{loss:.3f}", lr=f"{values['lr']:.2e}", it_s=f"{values['steps_per_second']:.2f}"
                )
                log(values)
                running_loss, started = [], time.perf_counter()
            if args.eval_steps and state["global_step"] % args.eval_steps == 0:
                run_validation()
            if args.save_steps and state["global_step"] % args.save_steps == 0:
                checkpoints.save(state)
            if state["global_step"] >= max_steps:
                break
            if (state["global_step"] % steps_per_epoch) == 0:
                break  # the epoch's last incomplete accumulation cycle, if any, is dropped
    progress.close()

    final_metrics = state["eval_metrics"] if state["eval_step"] == state["global_step"] else run_validation()
    save_final(accelerator, model, processor, output_dir, args, final_metrics)
    accelerator.wait_for_everyone()
    if uploader is not None:
        uploader.submit(output_dir, ignore_patterns=["checkpoint-*/**", ".partial-*/**", "best_model/**", "*.jsonl"])
        uploader.wait()
    accelerator.end_training()
    return final_metrics


# IMFE: meme encoder pre-training --------------------------------------------------------------------------------


def imfe_examples(args: TrainArguments) -> tuple[list, list[int], list[str]]:
    """Images, labels and label names: an imagefolder dataset, or the memes labelled by their most frequent emotion."""
    if args.imfe_dataset is not None:
        if not Path(args.imfe_dataset).is_dir():
            raise ArgumentError(f"--imfe_dataset {args.imfe_dataset!r}: no such folder.")
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
    encoder = timm.create_model(args.meme_encoder, pretrained=False, num_classes=len(names))
    if args.meme_encoder_checkpoint:
        timm.models.load_checkpoint(encoder, args.meme_encoder_checkpoint, strict=False)
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
    output_dir.mkdir(parents=True, exist_ok=True)
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
        save_file(accelerator.unwrap_model(encoder).state_dict(), output_dir / IMFE_ENCODER_FILE)
        (output_dir / "imfe_labels.json").write_text(json.dumps(names, ensure_ascii=False))
    accelerator.wait_for_everyone()
    return {"imfe_loss": losses[-1]}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_arguments(sys.argv[1:] if argv is None else argv)
        train_imfe(args) if args.task == "imfe" else train(args)
    except ArgumentError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
