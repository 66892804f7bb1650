"""--meme_encoder as a timm hub id or local folder in its layout: its weights and data config, and bad folders."""

import json
import logging
from pathlib import Path

import datasets
import pytest
import timm
import torch
from accelerate import PartialState
from conftest import CORPUS
from safetensors.torch import load_file
from timm.models import save_for_hf

import train
from mod_training.arguments import parse_arguments
from mod_training.data import emotion_names
from mod_training.model_setup import build_model, build_processor, imfe_encoder, load_or_create_model
from modeling_mod_gpt import MODGPTForMemeDialogue
from processing_mod import MemeImageProcessor, MODProcessor

# A data config unlike the registry's for test_efficientnet (160 px, bicubic, crop 0.95, ImageNet mean and std).
FOLDER_DATA_CONFIG = {
    "input_size": [3, 96, 96],
    "interpolation": "bilinear",
    "crop_pct": 0.8,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}
RANDOM_ENCODER_WARNING = "has random weights and stays frozen"


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory) -> Path:
    """A timm model saved as timm saves one for the hub, every tensor (BatchNorm statistics too) drawn at random."""
    folder = tmp_path_factory.mktemp("timm") / "test_efficientnet.in1k"
    torch.manual_seed(1)
    model = timm.create_model("test_efficientnet", pretrained=False)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    save_for_hf(model, folder, safe_serialization=True, model_config={"pretrained_cfg": FOLDER_DATA_CONFIG})
    return folder


@pytest.fixture(scope="module")
def dialogues(sample_dataset) -> datasets.DatasetDict:
    return datasets.load_dataset(str(sample_dataset), "dialogues")


def arguments(sample_dataset, tmp_path, *extra: str):
    return parse_arguments(
        ["--dataset", str(sample_dataset), "--output_dir", str(tmp_path / "out"), "--model_config", "tiny", *extra]
    )


def folder_encoder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's weights that the meme encoder takes: all but ImageNet's classifier."""
    return {k: v for k, v in load_file(folder / "model.safetensors").items() if not k.startswith("classifier.")}


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def test_a_timm_folder_gives_its_weights_and_data_config_which_the_saved_model_keeps(
    timm_folder, sample_dataset, dialogues, tmp_path
):
    args = arguments(sample_dataset, tmp_path, "--meme_encoder", str(timm_folder))
    processor = build_processor(args, dialogues)
    model = build_model(args, processor, emotion_names(dialogues), memes=None)

    expected = folder_encoder_weights(timm_folder)
    assert_same_tensors(model.model.meme_encoder.timm_model.state_dict(), expected)
    assert model.config.meme_feature_size == 256 and model.config.meme_encoder_name == "test_efficientnet"
    saved_cfg = json.loads((timm_folder / "config.json").read_text())["pretrained_cfg"]
    data_config = timm.data.resolve_data_config(pretrained_cfg=saved_cfg)
    assert processor.image_processor.to_dict() == MemeImageProcessor(**data_config).to_dict()
    assert processor.image_processor.input_size == FOLDER_DATA_CONFIG["input_size"]

    model.save_pretrained(tmp_path / "mod")
    processor.save_pretrained(tmp_path / "mod")
    reloaded = MODGPTForMemeDialogue.from_pretrained(tmp_path / "mod")
    assert_same_tensors(reloaded.model.meme_encoder.timm_model.state_dict(), expected)
    assert reloaded.config.meme_encoder_config.pretrained_cfg["input_size"] == FOLDER_DATA_CONFIG["input_size"]
    reloaded_processor = MODProcessor.from_pretrained(tmp_path / "mod")
    assert reloaded_processor.image_processor.to_dict() == processor.image_processor.to_dict()


def test_imfe_starts_from_the_folder_with_a_new_head(timm_folder, sample_dataset, tmp_path):
    args = arguments(sample_dataset, tmp_path, "--task", "imfe", "--meme_encoder", str(timm_folder))
    encoder = imfe_encoder(args, num_classes=3)
    weights = encoder.state_dict()
    assert weights["classifier.weight"].shape[0] == 3
    assert_same_tensors(
        {k: v for k, v in weights.items() if not k.startswith("classifier.")}, folder_encoder_weights(timm_folder)
    )
    assert list(timm.data.resolve_data_config(model=encoder)["input_size"]) == FOLDER_DATA_CONFIG["input_size"]


def bad_folder(kind: str, timm_folder: Path, tmp_path: Path) -> Path:
    folder = tmp_path / f"bad-{kind}"
    folder.mkdir()
    config = json.loads((timm_folder / "config.json").read_text())
    weights = (timm_folder / "model.safetensors").read_bytes()
    if kind == "no-config":
        (folder / "model.safetensors").write_bytes(weights)
        return folder
    if kind == "bad-json":
        (folder / "config.json").write_text("{not json")
        return folder
    if kind == "not-timm":
        config = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2}
    elif kind == "unknown-architecture":
        config["architecture"] = "no_such_net"
    (folder / "config.json").write_text(json.dumps(config))
    if kind == "corrupt-weights":
        (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    elif kind != "no-weights":
        (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.mark.parametrize(
    "kind, message",
    [
        ("no-config", "the folder has no config.json"),
        ("bad-json", "cannot read its config.json"),
        ("not-timm", "names no timm architecture"),
        ("unknown-architecture", "names no timm architecture"),
        ("no-weights", "holds no weights"),
        ("corrupt-weights", "(model.safetensors): cannot load it into the encoder"),
    ],
)
def test_a_bad_timm_folder_is_reported_in_one_line(
    kind, message, timm_folder, sample_dataset, tmp_path, capsys, monkeypatch
):
    folder = bad_folder(kind, timm_folder, tmp_path)
    monkeypatch.setattr(train, "set_up_logging", lambda: None)  # leave this process's logging as pytest has it
    status = train.main(
        ["--dataset", str(sample_dataset), "--output_dir", str(tmp_path / "out"), "--model_config", "tiny"]
        + ["--max_steps", "1", "--meme_encoder", str(folder)]
    )
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    assert f"train.py: error: --meme_encoder '{folder}'" in stderr and message in stderr, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_folder_and_an_unknown_architecture_are_reported(sample_dataset, tmp_path):
    with pytest.raises(ValueError, match=f"--meme_encoder '{tmp_path}/gone': no such folder"):
        arguments(sample_dataset, tmp_path, "--meme_encoder", str(tmp_path / "gone"))
    with pytest.raises(ValueError, match="--meme_encoder 'no_such_net': not a timm architecture"):
        arguments(sample_dataset, tmp_path, "--meme_encoder", "no_such_net")


@pytest.mark.parametrize("start", ["architecture", "folder", "checkpoint", "trained"])
def test_only_a_random_frozen_encoder_is_warned_about(start, timm_folder, sample_dataset, tmp_path, caplog):
    PartialState()  # accelerate's logging, which gives the warning, needs it
    extra = {
        "architecture": ["--meme_encoder", "test_efficientnet"],
        "folder": ["--meme_encoder", str(timm_folder)],
        "checkpoint": ["--meme_encoder", "test_efficientnet"]
        + ["--meme_encoder_checkpoint", str(timm_folder / "model.safetensors")],
        "trained": ["--meme_encoder", "test_efficientnet", "--train_meme_encoder"],
    }[start]
    args = arguments(sample_dataset, tmp_path, *extra)
    processor = MODProcessor.from_corpus(CORPUS, meme_encoder_name=args.meme_encoder)
    with caplog.at_level(logging.WARNING):
        load_or_create_model(args, processor, ["happy", "sad"], memes=None)
    warnings = [record.getMessage() for record in caplog.records if RANDOM_ENCODER_WARNING in record.getMessage()]
    assert len(warnings) == (start == "architecture"), caplog.text
    if warnings:
        assert "'test_efficientnet'" in warnings[0] and "\n" not in warnings[0]
