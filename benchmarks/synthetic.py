"""Synthetic dialogues with the paper's profile, random-init models with a large meme bank, and each size's work."""

import functools
import random
from dataclasses import dataclass

import torch

from configuration_mod_gpt import CDIAL_GPT_VOCAB_SIZE, SPECIAL_TOKENS, MODGPTConfig
from mod_dataset.build import to_turn
from mod_dataset.sample import CHARACTERS, PAPER_PROFILE, meme_id, profile_dialogues, task_instances
from modeling_mod_gpt import MODGPTForMemeDialogue
from processing_mod import MODProcessor

PUNCTUATION = "，。？！"
SPEAKERS = ("speaker1", "speaker2")
NUM_EMOTIONS = PAPER_PROFILE.emotions
MEME_PROBABILITY = 0.3
# The base LM head has CDial-GPT's size; the synthetic corpus uses only some of its rows.
CDIAL_GPT_VOCAB = CDIAL_GPT_VOCAB_SIZE + len(SPECIAL_TOKENS)
# A turn costs `[speakerK] [BOS] text [EOS] [TAG]`: its text plus 4 tokens (5 with a meme's `[IMG]`).
TURN_OVERHEAD = 4
MAX_LENGTH = 500  # the paper's, and the processor's default: the longest training window


@dataclass(frozen=True)
class Size:
    """A decoder, its vocabulary (None: the processor's), meme encoder and bank, and `train.py`'s batch in windows."""

    decoder: dict[str, int]
    vocab_size: int | None
    meme_encoder_name: str
    meme_feature_size: int
    bank_size: int
    batch_size: int


@dataclass(frozen=True)
class Workload:
    """How much work the rows do at a size: fractions of the paper profile and counts of timed items."""

    epoch_fraction: float  # the training epoch whose batches the training rows sample and whose padding they count
    training_batches: int  # epoch batches timed side by side in the training rows
    precision_batch_size: int  # windows in the batch of the precision rows (base: 96, about 17k tokens a step)
    eval_instances: int  # validation task-1 instances generated for in the evaluation row
    eval_batch_size: int
    release_fraction: float  # the release built by `python -m mod_dataset build`


TINY_DECODER = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 513}
BASE_DECODER = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 513}
SIZES = {
    "tiny": Size(TINY_DECODER, None, "test_efficientnet", 256, 1_000, 2),
    "base": Size(BASE_DECODER, CDIAL_GPT_VOCAB, "efficientnet_b0", 1280, 10_000, 4),
}
WORKLOADS = {"tiny": Workload(1 / 500, 1, 2, 4, 2, 1 / 500), "base": Workload(1 / 8, 1, 96, 48, 32, 1.0)}


def sentence(rng: random.Random, length: int) -> str:
    """`length` characters of Chinese text, each one token, ending with punctuation half the time."""
    text = "".join(rng.choices(CHARACTERS, k=length))
    return text[:-1] + rng.choice(PUNCTUATION) if rng.random() < 0.5 else text


def turn(rng: random.Random, index: int, text_length: int, with_meme: bool) -> dict:
    meme = meme_id(rng.randrange(PAPER_PROFILE.memes)) if with_meme else None
    text = sentence(rng, text_length)
    emotion = rng.randrange(NUM_EMOTIONS) if with_meme else None
    return {"speaker": SPEAKERS[index % 2], "text": text, "meme": meme, "emotion": emotion}


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


@functools.lru_cache(maxsize=4)
def paper_release(fraction: float, seed: int = 0) -> dict[str, list[list[dict]]]:
    """Each split's dialogues of `make_profile_release(..., fraction, seed)`, as the processor takes them."""
    splits = profile_dialogues(random.Random(seed), PAPER_PROFILE, fraction)
    return {split: [[to_turn(turn) for turn in turns] for turns in rows] for split, rows in splits.items()}


def corpus(size: int = 2000, seed: int = 0) -> list[str]:
    """Random sentences, after the whole alphabet once: every character of the synthetic texts is in the vocabulary."""
    rng = random.Random(seed)
    alphabet = ["".join(CHARACTERS[start : start + 20]) for start in range(0, len(CHARACTERS), 20)]
    return alphabet + [sentence(rng, rng.randint(4, 30)) for _ in range(size)]


def build_processor(size: Size) -> MODProcessor:
    return MODProcessor.from_corpus(corpus(), meme_encoder_name=size.meme_encoder_name)


def build_model(
    size: Size, processor: MODProcessor, seed: int = 0, decoder_type: str = "gpt2"
) -> MODGPTForMemeDialogue:
    """A random-init MOD-GPT (its decoder a GPT-2 or, as CDial-GPT's, an OpenAI-GPT) with a bank of `size.bank_size`
    memes of random features: "000", "001", ..., the paper profile's 307 memes first."""
    torch.manual_seed(seed)
    special = processor.special_token_ids
    decoder = {"model_type": decoder_type, "vocab_size": size.vocab_size or len(processor.tokenizer), **size.decoder}
    decoder.update(bos_token_id=special["bos_token_id"], eos_token_id=special["eos_token_id"])
    encoder = {"meme_encoder_name": size.meme_encoder_name, "meme_feature_size": size.meme_feature_size}
    model = MODGPTForMemeDialogue(MODGPTConfig(text_config=decoder, num_emotions=NUM_EMOTIONS, **encoder, **special))
    model.add_memes([meme_id(i) for i in range(size.bank_size)], torch.randn(size.bank_size, size.meme_feature_size))
    return model


def validation_instances(count: int, seed: int = 0) -> list[dict]:
    """
    The first `count` task-1 instances (`id`, `history`, `speaker`, `answer`) of a paper-profile validation split, one
    per dialogue, cut as the release's task files cut them (`history` in the processor's turn layout).
    """
    rng = random.Random(seed)
    dialogues = profile_dialogues(rng, PAPER_PROFILE, min(1.0, 2 * count / PAPER_PROFILE.validation_dialogues))["val"]
    instances = task_instances(dialogues, rng, list(range(PAPER_PROFILE.memes)))["task1"][:count]
    if len(instances) < count:
        raise ValueError(f"The paper-profile validation split gave {len(instances)} task-1 instances, not {count}.")
    return [
        {
            "id": f"instance {index}",  # evaluate_mod.py keys each reply's sampling by it
            "history": [to_turn(turn) for turn in instance["history"]],
            "speaker": instance["answer"]["speaker_id"].strip("[]"),
            "answer": instance["answer"]["txt"],
        }
        for index, instance in enumerate(instances)
    ]
