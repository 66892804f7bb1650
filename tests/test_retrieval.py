"""Meme retrieval: feature normalisation, the meme losses, learning on the sample, and the release's features."""

import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import MEME_IDS, run_script, tiny_config
from huggingface_hub.errors import StrictDataclassError
from PIL import Image
from safetensors.torch import load_file

import train
from configuration_mod_gpt import MODGPTConfig
from mod_dataset import SAMPLE_DIR, build_dataset
from modeling_mod_gpt import MODGPTForMemeDialogue, contrastive_meme_loss
from pipeline_mod import add_memes_from_table
from processing_mod import MemeImageProcessor

RELEASE_FEATURE_SIZE = 512


def pixel_values_of(colours: list[tuple[int, int, int]]) -> torch.Tensor:
    images = [Image.new("RGB", (48, 48), color=colour) for colour in colours]
    return MemeImageProcessor.from_timm_model("test_efficientnet")(images)["pixel_values"]


def final_metrics(output_dir: Path) -> dict[str, float]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "eval_r10@1" in line][-1]


# Feature normalisation --------------------------------------------------------------------------------------------


def test_standardisation_is_the_default_and_fits_the_bank(processor):
    model = MODGPTForMemeDialogue(tiny_config(processor))
    raw = torch.randn(len(MEME_IDS), 256) * 1e-4 + 3e-4  # small, offset features, like an untrained encoder's
    model.fit_meme_feature_normalization(raw)
    model.add_memes(MEME_IDS, meme_features=raw)
    assert model.config.meme_feature_normalization == "standardize"
    bank = model.meme_bank.features
    torch.testing.assert_close(bank.mean(0), torch.zeros(256), atol=1e-5, rtol=0)
    torch.testing.assert_close(bank.std(0), torch.ones(256))
    # A meme added later is standardised with the bank's statistics, not its own.
    new = raw[:1] * 2
    model.add_memes(["new"], meme_features=new)
    torch.testing.assert_close(model.meme_bank.lookup(["new"]), (new - raw.mean(0)) / raw.std(0))
    with pytest.raises(ValueError, match="empty meme bank"):
        model.fit_meme_feature_normalization(raw)


def test_fit_needs_two_memes(processor):
    model = MODGPTForMemeDialogue(tiny_config(processor))
    with pytest.raises(ValueError, match="at least 2 memes"):
        model.fit_meme_feature_normalization(torch.randn(1, 256))


def test_memes_from_images_and_from_their_raw_features_land_equal(processor):
    model = MODGPTForMemeDialogue(tiny_config(processor))
    pixel_values = pixel_values_of([(250, 10, 10), (10, 250, 10), (10, 10, 250)])
    raw = model.model.encode_meme_images(pixel_values)
    model.fit_meme_feature_normalization(raw)
    model.add_memes(["a", "b", "c"], pixel_values=pixel_values)
    from_images = model.meme_bank.features.clone()
    model.add_memes(["a", "b", "c"], meme_features=raw)  # replaces them: normalised once, like the images
    torch.testing.assert_close(model.meme_bank.features, from_images)
    torch.testing.assert_close(model.model.get_meme_features(pixel_values), from_images)


def test_statistics_are_saved_and_loaded(processor, tmp_path):
    model = MODGPTForMemeDialogue(tiny_config(processor))
    raw = torch.randn(len(MEME_IDS), 256) + 5.0
    model.fit_meme_feature_normalization(raw)
    model.add_memes(MEME_IDS, meme_features=raw)
    model.save_pretrained(tmp_path)
    loaded = MODGPTForMemeDialogue.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.model.meme_feature_mean, model.model.meme_feature_mean)
    torch.testing.assert_close(loaded.model.meme_feature_std, model.model.meme_feature_std)
    unseen = torch.randn(1, 256) + 5.0
    loaded.add_memes(["unseen"], meme_features=unseen)
    model.add_memes(["unseen"], meme_features=unseen)
    torch.testing.assert_close(loaded.meme_bank.lookup(["unseen"]), model.meme_bank.lookup(["unseen"]))


@pytest.mark.parametrize("legacy, normalization", [(True, "rms"), (False, "none")])
def test_configs_saved_before_the_option_keep_their_normalisation(processor, tmp_path, legacy, normalization):
    config = tiny_config(processor, meme_feature_normalization=normalization)
    model = MODGPTForMemeDialogue(config).eval()
    raw = torch.randn(len(MEME_IDS), 256) * 3.0
    model.add_memes(MEME_IDS, meme_features=raw)
    model.save_pretrained(tmp_path)
    # Rewrite config.json as earlier versions wrote it: the boolean, none of the newer keys.
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("meme_feature_normalization", "meme_loss", "meme_loss_temperature"):
        del saved[key]
    saved["normalize_meme_features"] = legacy
    (tmp_path / "config.json").write_text(json.dumps(saved))

    loaded = MODGPTForMemeDialogue.from_pretrained(tmp_path)
    assert loaded.config.meme_feature_normalization == normalization and loaded.config.meme_loss == "l2"
    assert not hasattr(loaded.model, "meme_feature_mean")
    torch.testing.assert_close(loaded.meme_bank.features, model.meme_bank.features)
    expected = F.normalize(raw, dim=-1) * 16.0 if legacy else raw
    torch.testing.assert_close(loaded.meme_bank.features, expected)
    resaved = tmp_path / "resaved"
    loaded.save_pretrained(resaved)
    assert MODGPTConfig.from_pretrained(resaved).meme_feature_normalization == normalization


def test_contradicting_normalisation_forms_are_rejected():
    with pytest.raises(ValueError, match="normalize_meme_features"):
        MODGPTConfig(normalize_meme_features=True, meme_feature_normalization="standardize")


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"meme_feature_normalization": "whiten"}, "meme_feature_normalization"),
        ({"meme_loss": "hinge"}, "meme_loss"),
        ({"meme_loss_temperature": 0.0}, "meme_loss_temperature"),
    ],
)
def test_bad_meme_options_name_the_field(processor, overrides, field):
    with pytest.raises(StrictDataclassError, match=field):
        tiny_config(processor, **overrides)


# Meme losses --------------------------------------------------------------------------------------------------------


def attach_memes_inputs(processor, model, dialogues):
    inputs = processor(dialogues, label_turns="all")
    meme_ids = inputs.pop("meme_ids")
    return {**inputs, "meme_features": model.meme_bank.lookup(meme_ids)}


DIALOGUES_WITH_MEMES = [
    [
        {"speaker": "speaker1", "text": "你好啊", "meme": None, "emotion": None},
        {"speaker": "speaker2", "text": "今天天气真不错", "meme": "001", "emotion": "happy"},
        {"speaker": "speaker1", "text": "哈哈哈", "meme": "005", "emotion": "sad"},
    ],
    [
        {"speaker": "speaker2", "text": "你在做什么呢？", "meme": None, "emotion": None},
        {"speaker": "speaker1", "text": "我生气了", "meme": "001", "emotion": "angry"},
    ],
]


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_contrastive_loss_is_cross_entropy_over_the_bank(processor, distance):
    torch.manual_seed(0)
    model = MODGPTForMemeDialogue(tiny_config(processor, meme_loss="contrastive", retrieval_distance=distance))
    model.add_memes(MEME_IDS, meme_features=torch.randn(len(MEME_IDS), 256))
    model.eval()
    inputs = attach_memes_inputs(processor, model, DIALOGUES_WITH_MEMES)
    outputs = model(**inputs)
    uses_meme = inputs["usage_labels"][inputs["input_ids"] == model.config.tag_token_id] == 1
    predictions = outputs.meme_predictions[uses_meme]
    bank = model.meme_bank.features
    if distance == "l2":
        logits = -torch.cdist(predictions, bank) / 256**0.5 / 0.1
    else:
        logits = F.normalize(predictions, dim=-1) @ F.normalize(bank, dim=-1).T / 0.1
    gold = torch.tensor([MEME_IDS.index(meme) for meme in ("001", "005", "001")])
    torch.testing.assert_close(outputs.meme_loss, F.cross_entropy(logits, gold))


def test_contrastive_loss_is_lowest_at_the_gold_meme(processor):
    model = MODGPTForMemeDialogue(tiny_config(processor, meme_loss="contrastive"))
    bank = torch.randn(len(MEME_IDS), 256)
    model.add_memes(MEME_IDS, meme_features=bank)
    targets = model.meme_bank.features[[1, 5]]
    at_gold = contrastive_meme_loss(model.config, model.meme_bank, targets.clone(), targets)
    elsewhere = contrastive_meme_loss(model.config, model.meme_bank, model.meme_bank.features[[2, 6]], targets)
    assert at_gold < 0.1 < elsewhere


def test_contrastive_loss_without_a_bank_ranks_among_the_batch_memes(processor):
    model = MODGPTForMemeDialogue(tiny_config(processor, meme_loss="contrastive"))
    targets = torch.randn(3, 256)[[0, 1, 0, 2]]  # one meme twice: it is one candidate, not its own negative
    predictions = torch.randn(4, 256)
    distances = torch.cdist(predictions, targets[[0, 1, 3]]) / 256**0.5
    expected = F.cross_entropy(-distances / 0.1, torch.tensor([0, 1, 0, 2]))
    torch.testing.assert_close(contrastive_meme_loss(model.config, model.meme_bank, predictions, targets), expected)


# Learning on the sample ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_flags_learn_to_rank_the_gold_meme(sample_dataset, tmp_path):
    """
    The sample plants the signal: a topic asked about is answered with its meme. A short run with the demo's
    optimiser flags and no meme flag must rank the gold meme first among 10 clearly more often than chance (0.1).
    """
    args = ["--dataset", str(sample_dataset), "--output_dir", str(tmp_path), "--model_config", "tiny"]
    args += ["--learning_rate", "1e-3", "--warmup_steps", "30", "--per_device_train_batch_size", "16"]
    args += ["--num_train_epochs", "12", "--logging_steps", "40", "--seed", "0"]
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert final_metrics(tmp_path)["eval_r10@1"] > 0.25


# The organisers' features -------------------------------------------------------------------------------------------


def release_with_features(tmp_path: Path, without: tuple[str, ...] = ()) -> Path:
    """A copy of the sample release with an id2feature.json of random 512-d vectors (less the memes `without`)."""
    release = tmp_path / "release"
    shutil.copytree(SAMPLE_DIR, release)
    meme_ids = sorted(json.loads((release / "img2id.json").read_text()).values())
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(len(meme_ids), RELEASE_FEATURE_SIZE, generator=generator) * 0.05 + 0.01
    features = {meme: vector.tolist() for meme, vector in zip(meme_ids, vectors) if meme not in without}
    (release / "id2feature.json").write_text(json.dumps(features))
    return release


@pytest.fixture(scope="module")
def release_dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("release_features")
    build_dataset(release_with_features(folder), folder / "release_features_data")
    return folder / "release_features_data"


@pytest.fixture(scope="module")
def release_model(release_dataset, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("release_model")
    args = ["--dataset", str(release_dataset), "--output_dir", str(output_dir), "--model_config", "tiny"]
    result = run_script("train.py", *args, "--meme_features", "release", "--max_steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def release_features(dataset: Path) -> tuple[list[str], torch.Tensor]:
    _, memes = train.load_splits(str(dataset))
    return memes["meme_id"], torch.tensor(memes["feature"])


@pytest.mark.slow
def test_release_features_train_a_model_without_an_image_encoder(release_model, release_dataset):
    config = json.loads((release_model / "config.json").read_text())
    assert config["meme_encoder_config"] is None and config["meme_feature_size"] == RELEASE_FEATURE_SIZE
    weights = load_file(release_model / "model.safetensors")
    assert not [name for name in weights if name.startswith("meme_encoder.")]
    meme_ids, features = release_features(release_dataset)
    assert config["meme_bank_ids"] == meme_ids
    standardised = (features - features.mean(0)) / features.std(0)
    torch.testing.assert_close(weights["meme_bank_features"], standardised)


@pytest.mark.slow
def test_model_on_release_features_reloads_and_ranks_memes(release_model, release_dataset):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(release_model), trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules.") and model.model.meme_encoder is None
    meme_ids, features = release_features(release_dataset)
    ranked = model.meme_bank.rank(model.meme_bank.features[[3, 17]])
    assert [ranking.meme_ids[0] for ranking in ranked] == [meme_ids[3], meme_ids[17]]
    # An unseen meme enters as its raw release vector and is then ranked first for its own feature.
    unseen = features[:1] * 1.5 + 0.02
    model.add_memes(["unseen"], meme_features=unseen)
    assert model.meme_bank.rank(model.meme_bank.lookup(["unseen"]))[0].meme_ids[0] == "unseen"
    with pytest.raises(ValueError, match="no meme encoder.*add_memes"):
        model.model.get_meme_features(torch.zeros(1, 3, 32, 32))


@pytest.mark.slow
def test_model_on_release_features_cannot_go_on_with_image_features(release_model, release_dataset, tmp_path, capsys):
    args = ["--dataset", str(release_dataset), "--output_dir", str(tmp_path), "--init_from", str(release_model)]
    assert train.main(args) == 2
    assert "--meme_features release (it has no meme encoder)" in capsys.readouterr().err


@pytest.mark.slow
def test_unseen_memes_enter_evaluation_and_the_pipeline_by_their_release_features(release_model, release_dataset):
    from evaluate_mod import load_model
    from pipeline_mod import MemeDialoguePipeline

    meme_ids, features = release_features(release_dataset)
    unseen = {"104": features[3] * 2.0, "105": features[7] - 0.01}  # new memes the model was never trained with
    memes = datasets.Dataset.from_dict(
        {"meme_id": [*meme_ids, *unseen], "feature": [*features.tolist(), *[v.tolist() for v in unseen.values()]]}
    )
    model, processor = load_model(str(release_model), None, memes)
    assert model.meme_bank.ids[-2:] == ["104", "105"]
    torch.testing.assert_close(
        model.meme_bank.lookup(["104"]), model.model.normalize_meme_features(unseen["104"][None])
    )
    pipe = MemeDialoguePipeline(model=model, processor=processor, memes=memes.select(range(len(meme_ids) - 5)))
    assert pipe.meme_bank.ids == model.meme_bank.ids  # nothing new: no feature needed, no image either
    memes_without_features = memes.remove_columns("feature").add_item({"meme_id": "106"})
    with pytest.raises(ValueError, match=r"\['106'\].*no meme encoder.*`feature`"):
        add_memes_from_table(model, memes_without_features, processor.image_processor)


def test_release_features_on_a_dataset_without_them_is_a_clear_error(tmp_path, capsys):
    release = tmp_path / "release"
    shutil.copytree(SAMPLE_DIR, release)
    (release / "id2feature.json").unlink()
    build_dataset(release, tmp_path / "data")
    args = ["--dataset", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run"), "--meme_features", "release"]
    assert train.main(args) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "data") in error and "id2feature.json" in error and "`feature` column" in error


def test_memes_without_a_release_feature_are_listed(tmp_path, capsys):
    dataset = tmp_path / "partial_features_data"
    build_dataset(release_with_features(tmp_path, without=("004", "031")), dataset)
    args = ["--dataset", str(dataset), "--output_dir", str(tmp_path / "run"), "--meme_features", "release"]
    assert train.main(args) == 2
    assert "memes ['004', '031']" in capsys.readouterr().err
