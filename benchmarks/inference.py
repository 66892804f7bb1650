"""Inference rows: generation with and without the KV cache, and meme retrieval over a large bank."""

import random

import torch

from modeling_mod_gpt import MODGPTForMemeDialogue
from pipeline_mod import encode_dialogues
from processing_mod import MODProcessor

from .report import Row
from .synthetic import dialogue_of_length
from .timing import Stats, interleaved

HISTORY_LENGTH = 200
NEW_TOKENS = 32
RETRIEVAL_BATCH = 64


@torch.no_grad()
def generation(model: MODGPTForMemeDialogue, processor: MODProcessor, repeats: int, seed: int = 0) -> Row:
    """Row 3: greedy `generate` of 32 tokens after a 200-token history, with the KV cache vs without it."""
    dialogue = dialogue_of_length(random.Random(seed), HISTORY_LENGTH, generation_prompt=True)
    prompt = encode_dialogues(model, processor, [dialogue], add_generation_prompt=True)
    model.eval()
    outputs: dict[bool, torch.Tensor] = {}

    def generate(use_cache: bool) -> None:
        outputs[use_cache] = model.generate(
            **prompt,
            do_sample=False,
            top_p=None,
            temperature=None,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            use_cache=use_cache,
        )

    times = interleaved({"no cache": lambda: generate(False), "cache": lambda: generate(True)}, repeats)
    same = torch.equal(outputs[True], outputs[False])
    new_tokens = outputs[True].shape[1] - prompt["input_ids"].shape[1]
    return Row(
        key="generation-cache",
        title=f"Generation: {NEW_TOKENS} greedy tokens after a {HISTORY_LENGTH}-token history, KV cache vs none",
        unit="ms",
        a_name="use_cache=False",
        a=Stats.of(times["no cache"]).scaled(1000),
        b_name="use_cache=True",
        b=Stats.of(times["cache"]).scaled(1000),
        ratio_name="speed-up",
        ratio=Stats.of_ratios(times["no cache"], times["cache"]),
        targets={"ratio": (">=", 3.0)},
        checks_passed=same and new_tokens == NEW_TOKENS,
        notes=[f"{new_tokens} new tokens, {'identical' if same else 'DIFFERENT'} with and without the cache"],
    )


def loop_retrieval(predictions: torch.Tensor, bank: torch.Tensor, bank_ids: list[str]) -> list[list[str]]:
    """One candidate at a time (its L2 distance to every prediction), then a Python sort per prediction."""
    distances = torch.stack([torch.linalg.vector_norm(predictions - candidate, dim=-1) for candidate in bank], 1)
    return [
        [bank_ids[index] for index in sorted(range(len(bank_ids)), key=row.__getitem__)] for row in distances.tolist()
    ]


@torch.no_grad()
def retrieval(model: MODGPTForMemeDialogue, repeats: int, seed: int = 0) -> Row:
    """Row 4: ranking the whole meme bank for a batch of 64 predicted `[TAG]` features, loop vs vectorised."""
    bank, bank_ids = model.meme_bank.features, model.meme_bank.ids
    generator = torch.Generator().manual_seed(seed)
    predictions = torch.randn(RETRIEVAL_BATCH, bank.shape[1], generator=generator)
    ranked: dict[str, list[list[str]]] = {}

    def loop() -> None:
        ranked["loop"] = loop_retrieval(predictions, bank, bank_ids)

    def vectorised() -> None:
        ranked["model"] = [ranking.meme_ids for ranking in model.meme_bank.rank(predictions)]

    times = interleaved(
        {
            "loop": loop,
            "retrieve_memes": vectorised,
            "meme_distances": lambda: model.meme_bank.distances(predictions, bank),
            "cdist": lambda: torch.cdist(predictions, bank),
        },
        repeats,
    )
    same_top = sum(by_loop[0] == by_model[0] for by_loop, by_model in zip(ranked["loop"], ranked["model"]))
    milliseconds = {name: Stats.of(values).median * 1000 for name, values in times.items()}
    return Row(
        key="retrieval",
        title=f"Meme retrieval: {RETRIEVAL_BATCH} predictions x {len(bank_ids):,} memes, ranked",
        unit="ms",
        a_name="per-candidate loop",
        a=Stats.of(times["loop"]).scaled(1000),
        b_name="retrieve_memes",
        b=Stats.of(times["retrieve_memes"]).scaled(1000),
        ratio_name="speed-up",
        ratio=Stats.of_ratios(times["loop"], times["retrieve_memes"]),
        checks_passed=same_top == RETRIEVAL_BATCH,
        notes=[
            f"of retrieve_memes, meme_distances takes {milliseconds['meme_distances']:,.1f} ms; "
            f"torch.cdist on the same inputs {milliseconds['cdist']:,.1f} ms; "
            f"same nearest meme as the loop for {same_top}/{RETRIEVAL_BATCH}"
        ],
    )
