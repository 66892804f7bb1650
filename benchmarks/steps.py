"""What every training row shares: model inputs from the processor's output, and `train.py`'s optimizer step."""

from collections.abc import Callable

import torch
from transformers import BatchFeature, PreTrainedModel

from modeling_mod_gpt import MODGPTForMemeDialogue

LEARNING_RATE = 5e-5  # the paper's
MAX_GRAD_NORM = 1.0

Batch = dict[str, torch.Tensor]


def model_inputs(model: MODGPTForMemeDialogue, encoded: BatchFeature) -> Batch:
    """The processor's tensors, with the bank features of its memes in place of their ids."""
    inputs = dict(encoded)
    meme_ids = inputs.pop("meme_ids")
    if meme_ids:
        inputs["meme_features"] = model.meme_bank.lookup(meme_ids)
    return inputs


def training_step(model: PreTrainedModel) -> Callable[[Batch], None]:
    """
    One AdamW step of `train.py`'s kind on a batch: forward, backward, gradient clipping, update. Without a KV cache:
    training needs none, and GPT-2 keeps packed rows (position ids restarting, no attention mask) apart only then.
    """
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE)

    def step(batch: Batch) -> None:
        model(**batch, use_cache=False, logits_to_keep=None).loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad()

    return step


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer read afterwards counts it (a CPU runs nothing queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
