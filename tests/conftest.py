"""Shared fixtures: a tiny processor and a tiny random MOD-GPT, all built offline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from configuration_mod_gpt import MODGPTConfig  # noqa: E402
from mod_dataset import SAMPLE_DIR, build_dataset  # noqa: E402
from modeling_mod_gpt import MODGPTForMemeDialogue  # noqa: E402
from processing_mod import MODProcessor  # noqa: E402

EMOTIONS = ["happy", "sad", "angry", "surprised"]
MEME_IDS = [f"{index:03d}" for index in range(8)]
CORPUS = [
    "你好啊，今天天气真不错",
    "我很开心，我们去公园吧",
    "哈哈哈太好笑了",
    "别难过，明天会更好",
    "你在做什么呢？",
    "我生气了，不理你了",
    "hello, how are you today?",
    "真的吗？太惊讶了！",
]
DIALOGUES = [
    [
        {"speaker": "speaker1", "text": "你好啊", "meme": None, "emotion": None},
        {"speaker": "speaker2", "text": "今天天气真不错", "meme": "001", "emotion": "happy"},
        {"speaker": "speaker1", "text": None, "meme": "003", "emotion": "sad"},
        {"speaker": "speaker2", "text": "别难过，明天会更好", "meme": None, "emotion": None},
        {"speaker": "speaker1", "text": "哈哈哈", "meme": "005", "emotion": 0},
    ],
    [
        {"speaker": "speaker2", "text": "你在做什么呢？", "meme": None, "emotion": None},
        {"speaker": "speaker1", "text": "我生气了", "meme": "002", "emotion": "angry"},
    ],
    [
        {"speaker": "speaker1", "text": "真的吗", "meme": "007", "emotion": "surprised"},
        {"speaker": "speaker2", "text": "太好笑了", "meme": None, "emotion": None},
        {"speaker": "speaker1", "text": "我们去公园吧", "meme": "004", "emotion": "happy"},
    ],
]


def run_script(
    script: str, *args: str, launcher: list[str] | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run one of the repository's scripts (`train.py`, `evaluate_mod.py`, ...) offline in a fresh process."""
    command = [*(launcher or [sys.executable]), str(REPO_ROOT / script), *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=600)


def tiny_config(processor: MODProcessor, **overrides) -> MODGPTConfig:
    text_config = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256}
    text_config["vocab_size"] = len(processor.tokenizer)
    kwargs = dict(
        text_config=text_config,
        meme_encoder_name="test_efficientnet",
        meme_feature_size=256,
        num_emotions=len(EMOTIONS),
        emotion_names=EMOTIONS,
        head_hidden_size=32,
        **processor.special_token_ids,
    )
    kwargs.update(overrides)
    return MODGPTConfig(**kwargs)


@pytest.fixture(scope="session")
def processor() -> MODProcessor:
    return MODProcessor.from_corpus(CORPUS, meme_encoder_name="test_efficientnet", emotion_names=EMOTIONS)


def tiny_model(processor: MODProcessor, **overrides) -> MODGPTForMemeDialogue:
    """A tiny random MOD-GPT (seed 0) in eval mode, with `MEME_IDS` in its bank."""
    torch.manual_seed(0)
    model = MODGPTForMemeDialogue(tiny_config(processor, **overrides))
    model.add_memes(MEME_IDS, torch.randn(len(MEME_IDS), 256))
    return model.eval()


@pytest.fixture
def model(processor: MODProcessor) -> MODGPTForMemeDialogue:
    return tiny_model(processor)


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """The embedded sample release, built once into a hub dataset folder."""
    folder = tmp_path_factory.mktemp("sample") / "data"
    build_dataset(SAMPLE_DIR, folder)
    return folder
