"""
SDPA over a batch whose rows fall in groups that attend to different spans of keys: the attention of batched
generation when prompts of very different lengths, each group run at its own width, decode together from one cache
(`pipeline_mod.generate_texts`). Each group skips the columns that are padding for all of its rows.
"""

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

# `(first row, end row, first key)`: rows `first:end` of the batch attend to no key before column `first key`.
RowGroups = tuple[tuple[int, int, int], ...]

ROW_GROUPS_SDPA = "mod_row_groups_sdpa"


def sdpa_by_row_groups(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    attention_row_groups: RowGroups | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """
    transformers' SDPA attention, run per group of `attention_row_groups` on the group's rows and its keys from the
    group's first key on. Without groups, plain SDPA. The keys a group skips are never read: they may hold anything.
    """
    if attention_row_groups is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = []
    for first, end, first_key in attention_row_groups:
        mask = None if attention_mask is None else attention_mask[first:end, ..., first_key:]
        rows_key, rows_value = key[first:end, :, first_key:], value[first:end, :, first_key:]
        outputs.append(sdpa_attention_forward(module, query[first:end], rows_key, rows_value, mask, **kwargs)[0])
    return torch.cat(outputs), None


# A decoder configured with `attn_implementation=ROW_GROUPS_SDPA` makes SDPA's masks and calls `sdpa_by_row_groups`.
AttentionInterface.register(ROW_GROUPS_SDPA, sdpa_by_row_groups)
AttentionMaskInterface.register(ROW_GROUPS_SDPA, sdpa_mask)
