"""Saved MOD-GPT folders: the first release's layout loads and reproduces its outputs, saving keeps that layout, old
config keys convert, and building, saving and loading log no false decoder warnings."""

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import transformers
from conftest import DIALOGUES, MEME_IDS, tiny_config
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open
from safetensors.torch import load_file
from transformers.utils.logging import warning_once

from configuration_mod_gpt import MODGPTConfig
from modeling_mod_gpt import MODGPTForMemeDialogue
from pipeline_mod import is_mod_gpt_folder, load_mod_gpt, load_mod_gpt_config

FIXTURE = Path(__file__).parent / "fixtures" / "mod_gpt_v0"
REFERENCE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
REFERENCE_OUTPUTS = ("logits", "usage_logits", "meme_predictions", "emotion_logits")


@contextmanager
def propagating_transformers_logs(caplog) -> Iterator[None]:
    """Let transformers' log records reach pytest's `caplog`, with `warning_once` forgetting what it already said."""
    logger = logging.getLogger("transformers")
    warning_once.cache_clear()
    propagate, logger.propagate = logger.propagate, True
    caplog.set_level(logging.WARNING, logger="transformers")
    try:
        yield
    finally:
        logger.propagate = propagate


def saved_keys(folder: Path) -> set[str]:
    with safe_open(folder / "model.safetensors", "pt") as weights:
        return set(weights.keys())


def reference_outputs(model: MODGPTForMemeDialogue) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each reference output: what `model` gives on the reference inputs, and what the first release gave."""
    reference = load_file(FIXTURE / "reference_outputs.safetensors")
    meme_ids = [turn["meme"] for dialogue in DIALOGUES for turn in dialogue if turn["meme"] is not None]
    with torch.no_grad():
        outputs = model(**{key: reference[key] for key in REFERENCE_INPUTS}, meme_ids=meme_ids)
    return {name: (getattr(outputs, name), reference[name]) for name in REFERENCE_OUTPUTS}


# The first release's folder -----------------------------------------------------------------------------------------


def test_the_first_release_folder_loads_with_every_weight_in_place():
    model, info = MODGPTForMemeDialogue.from_pretrained(FIXTURE, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    assert not model.training and model.meme_bank.ids == MEME_IDS
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    checkpoint = load_file(FIXTURE / "model.safetensors")
    torch.testing.assert_close(model.meme_bank.features, checkpoint["meme_bank_features"], rtol=0, atol=0)
    torch.testing.assert_close(model.model.meme_feature_std, checkpoint["meme_feature_std"], rtol=0, atol=0)
    encoder = model.model.meme_encoder.timm_model.state_dict()
    for name, value in checkpoint.items():
        if name.startswith("meme_encoder."):
            torch.testing.assert_close(encoder[name.removeprefix("meme_encoder.")], value, rtol=0, atol=0)


@pytest.mark.parametrize("loader", ["from_pretrained", "load_mod_gpt"])
def test_the_first_release_folder_reproduces_its_outputs(loader):
    if loader == "from_pretrained":
        model = MODGPTForMemeDialogue.from_pretrained(FIXTURE)
    else:
        model, _ = load_mod_gpt(str(FIXTURE))
    for name, (actual, expected) in reference_outputs(model).items():
        assert actual.shape == expected.shape, name
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=name)


def test_saving_keeps_the_first_release_layout(tmp_path):
    """A folder saved now holds the keys the first release wrote, so both loaders read it."""
    model = MODGPTForMemeDialogue.from_pretrained(FIXTURE)
    model.save_pretrained(tmp_path)
    assert saved_keys(tmp_path) == saved_keys(FIXTURE)
    reloaded = MODGPTForMemeDialogue.from_pretrained(tmp_path)
    for name, (actual, expected) in reference_outputs(reloaded).items():
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=name)


def test_old_meme_encoder_keys_become_a_timm_wrapper_sub_config(tmp_path):
    saved = json.loads((FIXTURE / "config.json").read_text())
    assert saved["meme_encoder_name"] == "test_efficientnet" and "meme_encoder_checkpoint" in saved
    config = MODGPTConfig.from_pretrained(FIXTURE)
    assert type(config.meme_encoder_config).__name__ == "TimmWrapperConfig"
    assert config.meme_encoder_config.architecture == config.meme_encoder_name == "test_efficientnet"
    config.save_pretrained(tmp_path)
    resaved = json.loads((tmp_path / "config.json").read_text())
    assert resaved["meme_encoder_config"]["architecture"] == "test_efficientnet"
    for former in ("meme_encoder_name", "meme_encoder_checkpoint", "normalize_meme_features"):
        assert former not in resaved, former
    assert MODGPTConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_a_former_encoder_checkpoint_path_is_dropped_with_a_warning(tmp_path, caplog):
    folder = Path(shutil.copytree(FIXTURE, tmp_path / "old"))
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**saved, "meme_encoder_checkpoint": "/gone/encoder.pth"}))
    with propagating_transformers_logs(caplog):
        model = MODGPTForMemeDialogue.from_pretrained(folder)
    assert "meme_encoder_checkpoint='/gone/encoder.pth' is no longer read" in caplog.text
    assert not hasattr(model.config, "meme_encoder_checkpoint")


# Building a config --------------------------------------------------------------------------------------------------


def test_meme_encoder_name_is_a_shorthand_for_the_sub_config():
    by_name = MODGPTConfig(meme_encoder_name="test_efficientnet")
    spelled_out = MODGPTConfig(meme_encoder_config={"model_type": "timm_wrapper", "architecture": "test_efficientnet"})
    assert by_name.to_dict() == spelled_out.to_dict()
    assert MODGPTConfig().meme_encoder_name == "efficientnet_b0"
    replaced = MODGPTConfig(meme_encoder_name="resnet18", meme_encoder_config={"architecture": "resnet50"})
    assert replaced.meme_encoder_config.architecture == "resnet18"  # as train.py's --meme_encoder over a config file
    assert MODGPTConfig(meme_encoder_name=None).meme_encoder_config is None


def test_a_model_without_meme_encoder_saves_and_loads_as_one(processor, tmp_path):
    config = tiny_config(processor, meme_encoder_name=None, meme_feature_size=12)
    assert config.meme_encoder_config is None and config.meme_encoder_name is None
    model = MODGPTForMemeDialogue(config).eval()
    model.add_memes(MEME_IDS, meme_features=torch.randn(len(MEME_IDS), 12))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["meme_encoder_config"] is None
    assert not [key for key in saved_keys(tmp_path) if key.startswith("meme_encoder.")]
    loaded = MODGPTForMemeDialogue.from_pretrained(tmp_path)
    assert loaded.model.meme_encoder is None
    torch.testing.assert_close(loaded(**processor(DIALOGUES)).loss, model(**processor(DIALOGUES)).loss)
    with pytest.raises(ValueError, match="no meme encoder"):
        loaded.model.get_meme_features(torch.zeros(1, 3, 32, 32))


def test_a_new_encoder_keeps_timm_initialisation_so_memes_differ(model):
    colours = torch.linspace(-1.5, 1.5, 4)
    pixel_values = colours[:, None, None, None].expand(4, 3, 64, 64).contiguous()
    features = model.model.encode_meme_images(pixel_values)
    assert (features.std(dim=0) > 1e-6).float().mean() > 0.5


def test_validation_runs_again_when_saving(model, tmp_path):
    model.config.head_dropout = 1.5  # set after construction: only the type is checked here
    with pytest.raises(StrictDataclassError, match="head_dropout must be in"):
        model.save_pretrained(tmp_path)
    with pytest.raises(StrictDataclassError, match="retrieval_distance"):
        model.config.retrieval_distance = "dot"


# No false warnings --------------------------------------------------------------------------------------------------


def test_configs_and_loading_log_no_decoder_token_warnings(processor, tmp_path, caplog):
    with propagating_transformers_logs(caplog):
        tiny_config(processor)
        MODGPTConfig()
        model = MODGPTForMemeDialogue.from_pretrained(FIXTURE)
        model.save_pretrained(tmp_path)
        MODGPTForMemeDialogue.from_pretrained(tmp_path)
        transformers.AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    messages = [record.getMessage() for record in caplog.records]
    assert not [message for message in messages if "within the vocabulary" in message], messages
    assert model.config.text_config.bos_token_id == model.config.bos_token_id


def test_the_warning_check_sees_a_decoder_token_warning(caplog):
    """The check above can fail: a GPT-2 config built with its default ids over a small vocabulary is reported."""
    with propagating_transformers_logs(caplog):
        transformers.GPT2Config(vocab_size=89)
    assert "bos_token_id must be `None` or an integer within the vocabulary" in caplog.text


def test_a_config_with_a_value_of_the_wrong_type_is_a_value_error_naming_folder_and_field(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(FIXTURE, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "head_dropout": "lots"}))
    with pytest.raises(ValueError, match=r"model'?: config.json is not a valid MOD-GPT config.*head_dropout"):
        load_mod_gpt_config(str(folder))


def test_a_mod_gpt_folder_is_told_by_its_config_and_a_broken_config_is_named(tmp_path):
    assert is_mod_gpt_folder(str(FIXTURE))
    assert not is_mod_gpt_folder(None) and not is_mod_gpt_folder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert not is_mod_gpt_folder(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "mod_gpt", ')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'} is not valid JSON"):
        is_mod_gpt_folder(str(tmp_path))


def test_a_loaded_model_keeps_its_meme_encoder_frozen_as_configured(tmp_path):
    model = MODGPTForMemeDialogue.from_pretrained(FIXTURE)
    assert model.config.freeze_meme_encoder and model.model.meme_encoder is not None
    assert not any(parameter.requires_grad for parameter in model.model.meme_encoder.parameters())
    assert all(parameter.requires_grad for parameter in model.model.language_model.parameters())
    model.config.freeze_meme_encoder = False
    model.save_pretrained(tmp_path)
    trainable = MODGPTForMemeDialogue.from_pretrained(tmp_path, output_loading_info=True)[0]
    assert all(parameter.requires_grad for parameter in trainable.model.meme_encoder.parameters())
