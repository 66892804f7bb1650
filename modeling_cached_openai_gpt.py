"""transformers' OpenAI-GPT decoder (CDial-GPT's) with a KV cache and SDPA attention, for MOD-GPT to generate fast."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import OpenAIGPTConfig
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.openai.modeling_openai import ACT_FNS, OpenAIGPTPreTrainedModel
from transformers.pytorch_utils import Conv1D

try:
    from .attention_mod_gpt import RowGroups, sdpa_by_row_groups
except ImportError:
    from attention_mod_gpt import RowGroups, sdpa_by_row_groups


class CachedOpenAIGPTAttention(nn.Module):
    """OpenAI-GPT's self-attention (scaled by sqrt(head_dim)) through SDPA, with a KV cache and row groups."""

    def __init__(self, config: OpenAIGPTConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.layer_idx = config.n_head, layer_idx
        self.c_attn = Conv1D(3 * config.n_embd, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.attn_dropout = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self, hidden_states: torch.Tensor, mask: torch.Tensor, cache: Cache | None, row_groups: RowGroups | None
    ) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        qkv = self.c_attn(hidden_states).view(batch, length, 3, self.n_head, width // self.n_head)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, length, head_dim)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        dropout = self.attn_dropout if self.training else 0.0
        attended, _ = sdpa_by_row_groups(self, query, key, value, mask, row_groups, dropout=dropout)
        return self.resid_dropout(self.c_proj(attended.reshape(batch, length, width)))


class CachedOpenAIGPTMLP(nn.Module):
    def __init__(self, config: OpenAIGPTConfig):
        super().__init__()
        self.c_fc = Conv1D(4 * config.n_embd, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, 4 * config.n_embd)
        self.act = ACT_FNS[config.afn]  # OpenAI-GPT's own table: its "gelu" is the tanh approximation
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class CachedOpenAIGPTBlock(nn.Module):
    """OpenAI-GPT's post-LN block: `ln_1(x + attn(x))`, then `ln_2(n + mlp(n))`."""

    def __init__(self, config: OpenAIGPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CachedOpenAIGPTAttention(config, layer_idx)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = CachedOpenAIGPTMLP(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(
        self, hidden_states: torch.Tensor, mask: torch.Tensor, cache: Cache | None, row_groups: RowGroups | None
    ) -> torch.Tensor:
        hidden_states = self.ln_1(hidden_states + self.attn(hidden_states, mask, cache, row_groups))
        return self.ln_2(hidden_states + self.mlp(hidden_states))


class CachedOpenAIGPTModel(OpenAIGPTPreTrainedModel):
    """
    transformers' `OpenAIGPTModel` (CDial-GPT's decoder) with a KV cache and SDPA attention: the same modules and
    parameter names, so its checkpoints load unchanged, and the same hidden states at every non-padding position.
    transformers' own runs without a cache, so each generated token would re-run the whole dialogue.
    """

    config_class = OpenAIGPTConfig  # its attention is always SDPA; configs keep transformers' "eager" for OpenAI-GPT

    def __init__(self, config: OpenAIGPTConfig):
        super().__init__(config)
        self.tokens_embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.positions_embed = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([CachedOpenAIGPTBlock(config, index) for index in range(config.n_layer)])
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.tokens_embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.tokens_embed = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        attention_row_groups: RowGroups | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.tokens_embed(input_ids)
        if use_cache if use_cache is not None else getattr(self.config, "use_cache", True):
            cache = cache if cache is not None else DynamicCache(config=self.config)
        else:
            cache = None
        length = inputs_embeds.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        # The keys attention reads: the cached and new tokens, or a static cache's whole preallocated length.
        width = cache.get_mask_sizes(length, 0)[0] if cache is not None else length
        keys = torch.arange(width, device=inputs_embeds.device)
        queries = torch.arange(past, past + length, device=inputs_embeds.device)[:, None]
        if position_ids is None:
            position_ids = queries.T
        # Each new token sees the cached and new tokens up to itself, less padding (`attention_mask` covers them all),
        # and always itself: an all-padding row would otherwise have nothing to attend to (NaN).
        mask = keys <= queries
        if attention_mask is not None and attention_mask.dim() == 4:
            # `generate`'s own mask for a static cache, causal and padding: boolean, or additive (0 where attended)
            mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        elif attention_mask is not None:
            mask = mask & F.pad(attention_mask, (0, width - attention_mask.shape[-1])).bool()[:, None, None, :]
        mask = mask | (keys == queries)
        hidden_states = self.drop(inputs_embeds + self.positions_embed(position_ids))
        all_hidden_states = []
        for block in self.h:
            all_hidden_states.append(hidden_states)
            hidden_states = block(hidden_states, mask, cache, attention_row_groups)
        all_hidden_states.append(hidden_states)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
        )


__all__ = ["CachedOpenAIGPTModel"]
