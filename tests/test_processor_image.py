"""MemeImageProcessor: timm's evaluation transform, built once per settings, safe to save, load and pickle."""

import json
import pickle

import pytest
import timm
import torch
from PIL import Image

from processing_mod import MemeImageProcessor, MODProcessor


def meme(mode: str = "RGB", size: tuple[int, int] = (90, 70)) -> Image.Image:
    """A small image with some structure, so resizing and cropping show in the pixels."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.paste((250, 20, 40), (5, 5, 40, 30))
    return image.convert(mode)


def timm_pixels(image: Image.Image, model_name: str = "test_efficientnet") -> torch.Tensor:
    """The pixels timm's own evaluation transform gives for `model_name`, built here from timm alone."""
    data_config = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(model_name).to_dict())
    return timm.data.create_transform(**data_config, is_training=False)(image.convert("RGB"))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_pixel_values_are_timms_evaluation_transform_of_the_rgb_image(mode):
    image = meme(mode)
    pixel_values = MemeImageProcessor.from_timm_model("test_efficientnet")([image, meme()])["pixel_values"]
    assert pixel_values.shape == (2, 3, 160, 160)
    torch.testing.assert_close(pixel_values[0], timm_pixels(image), rtol=0, atol=0)


def test_the_transform_is_built_once_for_repeated_calls(monkeypatch):
    builds = []
    create_transform = timm.data.create_transform

    def counted(*args, **kwargs):
        builds.append(kwargs)
        return create_transform(*args, **kwargs)

    monkeypatch.setattr(timm.data, "create_transform", counted)
    image_processor = MemeImageProcessor(input_size=(3, 48, 48), crop_pct=0.8125)  # settings no other test uses
    first = image_processor(meme())["pixel_values"]
    second = image_processor([meme(), meme()])["pixel_values"]
    assert len(builds) == 1 and builds[0]["input_size"] == (3, 48, 48) and builds[0]["crop_pct"] == 0.8125
    assert first.shape == (1, 3, 48, 48) and torch.equal(second[1], first[0])


def test_settings_changed_after_construction_take_effect():
    image_processor = MemeImageProcessor.from_timm_model("test_efficientnet")
    assert image_processor(meme())["pixel_values"].shape[-1] == 160
    image_processor.input_size = [3, 64, 64]
    assert image_processor(meme())["pixel_values"].shape == (1, 3, 64, 64)


def test_save_load_and_pickle_keep_the_settings_and_the_pixels(tmp_path):
    image_processor = MemeImageProcessor.from_timm_model("test_efficientnet")
    expected = image_processor(meme())["pixel_values"]
    settings = json.loads(image_processor.to_json_string())  # after a call: nothing unserialisable was stored
    assert settings["input_size"] == [3, 160, 160] and settings["image_processor_type"] == "MemeImageProcessor"
    image_processor.save_pretrained(tmp_path)
    for copy in (MemeImageProcessor.from_pretrained(tmp_path), pickle.loads(pickle.dumps(image_processor))):
        assert copy.to_dict() == image_processor.to_dict()
        torch.testing.assert_close(copy(meme())["pixel_values"], expected, rtol=0, atol=0)


def test_the_dialogue_processor_pickles(processor):
    copy = pickle.loads(pickle.dumps(processor))
    dialogue = [{"speaker": "speaker1", "text": "你好", "meme": "001", "emotion": "sad"}]
    assert copy.encode_dialogue(dialogue) == processor.encode_dialogue(dialogue)
    torch.testing.assert_close(copy.image_processor(meme())["pixel_values"], timm_pixels(meme())[None])
    assert isinstance(copy, MODProcessor) and copy.special_token_ids == processor.special_token_ids


@pytest.mark.parametrize(
    "images, message",
    [
        (None, r"^Expected a PIL image or a non-empty list of them, got NoneType None"),
        ([], r"^Expected a PIL image or a non-empty list of them, got list \[\]"),
        ("meme.png", r"^Expected a PIL image or a non-empty list of them, got str 'meme.png'"),
        ([meme(), "meme.png"], r"^image 1 must be a PIL image, got str 'meme.png'"),
    ],
)
def test_what_is_not_an_image_is_named(images, message):
    with pytest.raises(ValueError, match=message):
        MemeImageProcessor.from_timm_model("test_efficientnet")(images)
