"""The processor and model of a run: loaded from --init_from or made anew, with the dataset's memes in the bank."""

import pickle
from typing import Any

import datasets
import timm
import torch
from accelerate.logging import get_logger
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from torch import nn
from transformers.utils import cached_file

from configuration_mod_gpt import MODGPTConfig, is_timm_hub_model
from modeling_mod_gpt import MODGPTForMemeDialogue, encoder_feature_size
from pipeline_mod import is_mod_gpt_folder, load_mod_gpt_model, load_mod_gpt_processor
from processing_mod import MODProcessor

from . import ArgumentError
from .arguments import (
    TASK_LOSS_WEIGHTS,
    TrainArguments,
    read_meme_encoder_config,
    read_model_config,
)
from .data import emotion_names

logger = get_logger(__name__)

TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the weights of a timm hub model, the safe kind first


def build_processor(args: TrainArguments, dialogues: datasets.DatasetDict) -> MODProcessor:
    names = emotion_names(dialogues)
    if is_mod_gpt_folder(args.init_from):
        processor = load_mod_gpt_processor(args.init_from, args.trust_remote_code)
    elif args.init_from is not None:
        try:
            processor = MODProcessor.from_text_backbone(args.init_from, meme_encoder_name=args.meme_encoder)
        except (OSError, ValueError) as error:
            raise ArgumentError(
                f"--init_from {args.init_from!r}: not a pretrained language model with a tokenizer ({error})"
            ) from error
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
    if is_mod_gpt_folder(args.init_from):
        return load_mod_gpt_model(args.init_from, args.trust_remote_code)
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
            raise ArgumentError(
                f"--init_from {args.init_from!r}: not a pretrained causal language model ({error})"
            ) from error
    else:
        model = model_from_config(args.model_config, len(processor.tokenizer), mod_kwargs)
    if model.model.meme_encoder is not None:
        pretrained = load_meme_encoder_start(args, model.model.meme_encoder.timm_model)
        if not pretrained and not args.train_meme_encoder:
            logger.warning(
                "The meme encoder %r has random weights and stays frozen, so its meme features are an untrained "
                "network's: give --meme_encoder a timm hub id or folder with weights (such as "
                "timm/efficientnet_b0.ra_in1k), or --meme_encoder_checkpoint, or --train_meme_encoder.",
                args.meme_encoder,
            )
    return model


def model_from_config(value: str, vocab_size: int, mod_kwargs: dict[str, Any]) -> MODGPTForMemeDialogue:
    """A new model from --model_config; a whole MOD-GPT config also sets the heads (the run's arguments win)."""
    text_config = read_model_config(value)
    if text_config.get("model_type") == MODGPTConfig.model_type:
        # The run's meme encoder wins over the file's, also over the former `meme_encoder_name` shorthand.
        mod_kwargs = {
            **{k: v for k, v in text_config.items() if k not in ("text_config", "meme_encoder_name")},
            **mod_kwargs,
        }
        text_config = text_config["text_config"]
    try:
        config = MODGPTConfig(text_config={**text_config, "vocab_size": vocab_size}, **mod_kwargs)
        return MODGPTForMemeDialogue(config)
    except (TypeError, ValueError, KeyError, StrictDataclassError) as error:
        raise ArgumentError(f"--model_config {value!r}: not a valid configuration ({error}).") from error


def load_meme_encoder_start(args: TrainArguments, encoder: nn.Module) -> bool:
    """
    Load the weights a new meme encoder starts from: --meme_encoder_checkpoint, else those of a --meme_encoder hub id
    or folder. Returns whether there were any (a timm architecture alone has none: the encoder keeps random weights).
    """
    if args.meme_encoder_checkpoint:
        load_meme_encoder_weights(encoder, args.meme_encoder_checkpoint)
    elif is_timm_hub_model(args.meme_encoder):
        filename, path = timm_hub_weights_file(args.meme_encoder)
        load_meme_encoder_weights(encoder, path, source=f"--meme_encoder {args.meme_encoder!r} ({filename})")
    else:
        return False
    return True


def timm_hub_weights_file(name: str) -> tuple[str, str]:
    """The name and local path of the weights file of a timm hub id (downloaded into the hub cache) or folder."""
    for filename in TIMM_WEIGHT_FILES:
        try:
            path = cached_file(name, filename, _raise_exceptions_for_missing_entries=False)
        except OSError as error:
            raise ArgumentError(f"--meme_encoder {name!r}: cannot read its {filename} ({error})") from error
        if path is not None:
            return filename, path
    raise ArgumentError(f"--meme_encoder {name!r}: holds no weights (no {' or '.join(TIMM_WEIGHT_FILES)}).")


def load_meme_encoder_weights(encoder: nn.Module, path: str, source: str | None = None) -> None:
    """
    Load timm weights into a meme encoder. The checkpoint's classifier (an IMFE stage's, or ImageNet's) is left out;
    any other key the encoder lacks or misses is an error, so that weights of another architecture are never
    silently ignored. Only the weights enter the model: its config does not keep the path. `source` names the
    weights in errors (default: the --meme_encoder_checkpoint).
    """
    source = source or f"--meme_encoder_checkpoint {path!r}"
    classifier = encoder.pretrained_cfg.get("classifier", "classifier")
    try:
        weights = timm.models.load_state_dict(path)
        weights = {k: v for k, v in weights.items() if not k.startswith(f"{classifier}.")}
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as error:
        raise ArgumentError(f"{source}: cannot load it into the encoder ({error})") from error
    missing = [key for key in missing if not key.startswith(f"{classifier}.")]
    if missing or unexpected:
        raise ArgumentError(
            f"{source} does not fit the meme encoder: it lacks {missing[:3]} and has "
            f"unknown {unexpected[:3]} ({len(missing)} and {len(unexpected)} keys)."
        )


def imfe_encoder(args: TrainArguments, num_classes: int) -> nn.Module:
    """
    The image classifier that --task imfe trains: the --meme_encoder with a new head of `num_classes`, from the
    weights `load_meme_encoder_start` gives it, and the data config of a timm hub model's weights.
    """
    config = read_meme_encoder_config(args.meme_encoder)
    encoder = timm.create_model(config["architecture"], num_classes=num_classes, **config.get("model_args", {}))
    encoder.pretrained_cfg = {**encoder.pretrained_cfg, **config.get("pretrained_cfg", {})}
    load_meme_encoder_start(args, encoder)
    return encoder


def meme_encoder_kwargs(args: TrainArguments, memes: datasets.Dataset) -> dict[str, Any]:
    """The config's meme encoder: the timm model of --meme_encoder, or none for the release's precomputed features."""
    if args.meme_features == "release":
        return dict(meme_encoder_config=None, meme_feature_size=len(release_meme_features(args.dataset, memes)[0]))
    config = read_meme_encoder_config(args.meme_encoder)
    return dict(meme_encoder_config=config, meme_feature_size=encoder_feature_size(config))


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
    if (model.model.meme_encoder is None) != (args.meme_features == "release"):
        fits = (
            "release (it has no meme encoder)"
            if model.model.meme_encoder is None
            else "encoder (it has a meme encoder)"
        )
        raise ArgumentError(f"--init_from {args.init_from!r} is trained with --meme_features {fits}.")
    if args.meme_features == "release":
        return release_meme_features(args.dataset, memes)
    batches = (memes[start : start + batch_size]["image"] for start in range(0, len(memes), batch_size))
    return torch.cat(
        [model.model.encode_meme_images(processor.image_processor(images)["pixel_values"]) for images in batches]
    )


def fill_meme_bank(
    args: TrainArguments, model: MODGPTForMemeDialogue, processor: MODProcessor, memes: datasets.Dataset
) -> None:
    """
    Put every meme into the model's meme bank, the feature cache of the run. A new model first fits its feature
    normalisation to them; one loaded from a checkpoint keeps the statistics its bank was made with.
    """
    features = raw_meme_features(args, model, processor, memes)
    if not model.meme_bank.ids:
        model.fit_meme_feature_normalization(features)
    model.add_memes(memes["meme_id"], meme_features=features)
