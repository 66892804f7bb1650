"""Deterministic synthetic data and random-init models: Chinese dialogues with memes, a 10,000-meme bank."""

import random
from dataclasses import dataclass

import torch

from configuration_mod_gpt import CDIAL_GPT_VOCAB_SIZE, SPECIAL_TOKENS, MODGPTConfig
from modeling_mod_gpt import MODGPTForMemeDialogue
from processing_mod import MODProcessor

CHARACTERS = [chr(0x4E00 + offset) for offset in range(3000)]
PUNCTUATION = "，。？！"
SPEAKERS = ("speaker1", "speaker2")
NUM_EMOTIONS = 52
BANK_SIZE = 10_000
MEME_PROBABILITY = 0.3
MEME_IDS = [f"meme{index:05d}" for index in range(BANK_SIZE)]
# The LM head has CDial-GPT's size; the synthetic corpus uses only some of its rows.
VOCAB_SIZE = CDIAL_GPT_VOCAB_SIZE + len(SPECIAL_TOKENS)
# A turn costs `[speakerK] [BOS] text [EOS] [TAG]`: its text plus 4 tokens (5 with a meme's `[IMG]`).
TURN_OVERHEAD = 4


@dataclass(frozen=True)
class Size:
    """A decoder size, its meme encoder, and how many dialogues its training batches hold."""

    decoder: dict[str, int]
    meme_encoder_name: str
    meme_feature_size: int
    batch_size: int


SIZES = {
    "tiny": Size({"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 512}, "test_efficientnet", 256, 8),
    "base": Size({"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 513}, "efficientnet_b0", 1280, 4),
}


def sentence(rng: random.Random, length: int) -> str:
    """`length` characters of Chinese text, each one token, ending with punctuation half the time."""
    text = "".join(rng.choices(CHARACTERS, k=length))
    return text[:-1] + rng.choice(PUNCTUATION) if rng.random() < 0.5 else text


def turn(rng: random.Random, index: int, text_length: int, with_meme: bool) -> dict:
    meme = rng.choice(MEME_IDS) if with_meme else None
    return {
        "speaker": SPEAKERS[index % 2],
        "text": sentence(rng, text_length),
        "meme": meme,
        "emotion": rng.randrange(NUM_EMOTIONS) if with_meme else None,
    }


def make_dialogue(rng: random.Random) -> list[dict]:
    """8 to 12 turns of 4 to 20 characters; about a third attach a meme, a fifth of those without text."""
    turns = []
    for index in range(rng.randint(8, 12)):
        current = turn(rng, index, rng.randint(4, 20), rng.random() < MEME_PROBABILITY)
        if current["meme"] is not None and rng.random() < 0.2:
            current["text"] = None
        turns.append(current)
    return turns


def make_dialogues(count: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    return [make_dialogue(rng) for _ in range(count)]


def dialogue_of_length(rng: random.Random, length: int, generation_prompt: bool = False) -> list[dict]:
    """A dialogue that encodes to exactly `length` tokens (with the 2-token generation prompt, if asked)."""
    remaining = length - (2 if generation_prompt else 0)
    turns = []
    while remaining > 0:
        if remaining <= 45:  # the last turn takes what is left, as text only
            current = turn(rng, len(turns), remaining - TURN_OVERHEAD, with_meme=False)
        else:
            current = turn(rng, len(turns), rng.randint(4, 20), rng.random() < MEME_PROBABILITY)
        remaining -= len(current["text"]) + TURN_OVERHEAD + (current["meme"] is not None)
        turns.append(current)
    return turns


def corpus(size: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng, rng.randint(4, 30)) for _ in range(size)]


def build_processor(size: Size) -> MODProcessor:
    return MODProcessor.from_corpus(corpus(), meme_encoder_name=size.meme_encoder_name)


def build_model(size: Size, processor: MODProcessor, seed: int = 0) -> MODGPTForMemeDialogue:
    """A random-init MOD-GPT with a bank of `BANK_SIZE` memes of random features."""
    torch.manual_seed(seed)
    special = processor.special_token_ids
    decoder = {
        "model_type": "gpt2",
        "vocab_size": VOCAB_SIZE,
        "bos_token_id": special["bos_token_id"],
        "eos_token_id": special["eos_token_id"],
        **size.decoder,
    }
    config = MODGPTConfig(
        text_config=decoder,
        meme_encoder_name=size.meme_encoder_name,
        meme_feature_size=size.meme_feature_size,
        num_emotions=NUM_EMOTIONS,
        **special,
    )
    model = MODGPTForMemeDialogue(config)
    model.add_memes(MEME_IDS, torch.randn(BANK_SIZE, size.meme_feature_size))
    return model
