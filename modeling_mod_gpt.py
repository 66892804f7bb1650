"""PyTorch MOD-GPT: a GPT-style decoder that chats in text and Internet memes (Fei et al., 2021)."""

import inspect
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationConfig,
    GenerationMixin,
    OpenAIGPTConfig,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.timm_wrapper import TimmWrapperModel
from transformers.utils import ModelOutput, can_return_tuple, logging

try:
    from .attention_mod_gpt import RowGroups
    from .configuration_mod_gpt import IGNORE_INDEX, LOSS_WEIGHTS, MODGPTConfig
    from .modeling_cached_openai_gpt import CachedOpenAIGPTModel
    from .retrieval_mod_gpt import MemeBank, MemeRetrieval
except ImportError:
    from attention_mod_gpt import RowGroups
    from configuration_mod_gpt import IGNORE_INDEX, LOSS_WEIGHTS, MODGPTConfig
    from modeling_cached_openai_gpt import CachedOpenAIGPTModel
    from retrieval_mod_gpt import MemeBank, MemeRetrieval


logger = logging.get_logger(__name__)
DEFAULT_NUM_MEMES = 5

# Checkpoints keep the layout of the first release (one flat model); the classes nest the decoder, encoder and
# projector in `MODGPTModel` and the bank in `MemeBank`. transformers renames on load and back on save.
register_checkpoint_conversion_mapping(
    "mod_gpt",
    [
        WeightRenaming(r"^transformer\.", "model.language_model."),
        WeightRenaming(r"^meme_encoder\.", "model.meme_encoder.timm_model."),
        WeightRenaming(r"^meme_projector\.", "model.meme_projector."),
        WeightRenaming(r"^segment_embeddings\.", "model.segment_embeddings."),
        WeightRenaming(r"^meme_feature_mean", "model.meme_feature_mean"),
        WeightRenaming(r"^meme_feature_std", "model.meme_feature_std"),
        WeightRenaming(r"^meme_bank_features", "meme_bank.features"),
    ],
    overwrite=True,  # the module also loads as a saved model's own copy
)


@dataclass
class MODGPTModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    meme_features (`torch.FloatTensor` of shape `(num_images, meme_feature_size)`):
        Normalised features of the memes spliced in at the `[IMG]` tokens, in reading order (encoded here when the
        memes came as `pixel_values`).
    """

    meme_features: torch.FloatTensor | None = None


@dataclass
class MODGPTOutput(ModelOutput):
    r"""
    Output of [`MODGPTForMemeDialogue`]. Head outputs are flat over the batch, in reading order (row by row, left to
    right) of the `[TAG]` (usage, meme) or `[IMG]` (emotion) tokens of `input_ids`.

    loss (`torch.FloatTensor` of shape `()`, *optional*):
        Weighted sum of the loss parts that had labels.
    lm_loss, usage_loss, meme_loss, emotion_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Text cross-entropy, usage cross-entropy, meme loss (`config.meme_loss`: feature regression by mean squared
        error, or contrastive ranking) and emotion cross-entropy. Each is `None` when its labels were not given.
    logits (`torch.FloatTensor` of shape `(batch_size, kept_positions, vocab_size)`, *optional*):
        Next-token logits at the positions `logits_to_keep` selects: all of them by default, labels or not; `None`
        when `logits_to_keep=None` asked for none (see `MODGPTForMemeDialogue.forward`).
    usage_logits (`torch.FloatTensor` of shape `(num_tags, 2)`):
        Whether the turn closed by each `[TAG]` attaches a meme.
    meme_predictions (`torch.FloatTensor` of shape `(num_tags, meme_feature_size)`):
        Predicted visual feature of the meme each `[TAG]` would attach, ranked against candidates for retrieval.
    emotion_logits (`torch.FloatTensor` of shape `(num_images, num_emotions)`):
        Emotion of the meme at each `[IMG]`.
    cache (`Cache`, *optional*):
        Key/value cache of the decoder, for `generate`.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        The decoder's hidden states: the embeddings' output and each layer's, `(batch_size, sequence_length,
        hidden_size)` each.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        The decoder's attention weights, one tensor per layer.
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    usage_loss: torch.FloatTensor | None = None
    meme_loss: torch.FloatTensor | None = None
    emotion_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    usage_logits: torch.FloatTensor | None = None
    meme_predictions: torch.FloatTensor | None = None
    emotion_logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# The paper's decoding (Fei et al., 2021): nucleus sampling, top-p 0.9, temperature 0.7, no top-k.
PAPER_SAMPLING = {"top_p": 0.9, "temperature": 0.7, "top_k": 0}


def default_generation_config(config: MODGPTConfig, use_cache: bool = True) -> GenerationConfig:
    """The paper's decoding (`PAPER_SAMPLING`), stopping at `[EOS]`.

    The other dialogue special tokens are suppressed: a reply is text, and its meme comes from the heads.
    """
    never_generated = [token_id for name, token_id in config.special_token_ids.items() if name != "eos_token_id"]
    return GenerationConfig(
        do_sample=True,
        **PAPER_SAMPLING,
        max_new_tokens=32,
        use_cache=use_cache,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        suppress_tokens=never_generated,
    )


def load_text_config(pretrained_model_name_or_path: str) -> PreTrainedConfig:
    """
    The config of a pretrained decoder. CDial-GPT's `config.json` names no `model_type`; its OpenAI-GPT keys (`afn`,
    `n_special`) say what it is.
    """
    config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path)
    if "model_type" not in config_dict and "afn" in config_dict:
        return OpenAIGPTConfig.from_dict(config_dict)
    return AutoConfig.from_pretrained(pretrained_model_name_or_path)


def last_per_row(mask: torch.BoolTensor) -> torch.LongTensor:
    """Index, among all `True` entries of `mask` in reading order, of the last one in each row."""
    return mask.sum(dim=1).cumsum(0) - 1


def loss_item_counts(
    labels: torch.LongTensor | None, usage_labels: torch.LongTensor | None, emotion_labels: torch.LongTensor | None
) -> torch.LongTensor:
    """
    What each part of the loss averages over, in `LOSS_WEIGHTS` order: the text labels (after the shift), the `[TAG]`
    usage labels, the attached memes (usage 1) and the `[IMG]` emotion labels; 0 for a part without labels. Summed
    over processes, it is the `num_items_in_batch` of `MODGPTForMemeDialogue.forward`.
    """
    given = [labels, usage_labels, emotion_labels]
    none = torch.zeros((), dtype=torch.long, device=next((t.device for t in given if t is not None), None))
    return torch.stack(
        [
            none if labels is None else (labels[:, 1:] != IGNORE_INDEX).sum(),
            none if usage_labels is None else (usage_labels != IGNORE_INDEX).sum(),
            none if usage_labels is None else (usage_labels == 1).sum(),
            none if emotion_labels is None else (emotion_labels != IGNORE_INDEX).sum(),
        ]
    )


def mean_over(summed: torch.Tensor, num_items: torch.Tensor) -> torch.Tensor:
    """A loss summed over items, divided by `num_items`; a sum over no items is the zero it is, keeping the graph."""
    return summed / num_items.to(summed.device).clamp(min=1)


# Losses --------------------------------------------------------------------------------------------------------------


def weighted_loss(config: MODGPTConfig, *parts: torch.Tensor | None) -> torch.Tensor | None:
    """The config's weighted sum of the text, usage, meme and emotion losses that were computed."""
    weights = [getattr(config, name) for name in LOSS_WEIGHTS]
    present = [weight * part for weight, part in zip(weights, parts) if part is not None]
    return torch.stack(present).sum() if present else None


def text_loss(
    lm_head: nn.Module, hidden_states: torch.Tensor, labels: torch.LongTensor, num_items: torch.Tensor
) -> torch.Tensor:
    """Next-token cross-entropy over `num_items` labels, running the LM head only on the positions that have one."""
    shifted_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    predicting = shifted_labels != IGNORE_INDEX
    logits = lm_head(hidden_states[predicting])
    return mean_over(F.cross_entropy(logits.float(), shifted_labels[predicting], reduction="sum"), num_items)


def classification_loss(logits: torch.Tensor, targets: torch.LongTensor, num_items: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the targets that are not ignored, averaged over `num_items`."""
    return mean_over(F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum"), num_items)


def meme_retrieval_loss(
    config: MODGPTConfig,
    bank: MemeBank,
    meme_predictions: torch.Tensor,
    tag_usage: torch.LongTensor,
    input_ids: torch.LongTensor,
    meme_features: torch.Tensor,
    num_items: torch.Tensor,
) -> torch.Tensor:
    """
    `config.meme_loss` over the `[TAG]`s that attach a meme, averaged over `num_items` memes: the squared error between
    the predicted and the attached meme's features per dimension ("l2"), or the contrastive loss of ranking the
    attached meme first among the bank's ("contrastive").
    """
    uses_meme = tag_usage == 1
    if not uses_meme.any():
        return meme_predictions.sum() * 0.0
    targets = attached_meme_features(config, input_ids, meme_features, uses_meme).detach().float()
    predictions = meme_predictions[uses_meme].float()
    if config.meme_loss == "contrastive":
        return mean_over(contrastive_meme_loss(config, bank, predictions, targets, reduction="sum"), num_items)
    return mean_over(F.mse_loss(predictions, targets, reduction="sum") / targets.shape[-1], num_items)


def contrastive_meme_loss(
    config: MODGPTConfig, bank: "MemeBank", predictions: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """
    Cross-entropy of picking each target meme among the distinct memes of the bank and of `targets`, with logits
    `-distance / temperature`: the retrieval distance, per dimension for L2 (see `meme_loss_temperature`).
    """
    known = bank.features.to(targets)
    candidates, inverse = torch.unique(torch.cat([known, targets]), dim=0, return_inverse=True)
    distances = bank.distances(predictions, candidates)
    if config.retrieval_distance == "l2":
        distances = distances / config.meme_feature_size**0.5
    return F.cross_entropy(-distances / config.meme_loss_temperature, inverse[len(known) :], reduction=reduction)


def attached_meme_features(
    config: MODGPTConfig, input_ids: torch.LongTensor, meme_features: torch.Tensor, uses_meme: torch.BoolTensor
) -> torch.Tensor:
    """Features of the meme that each `[TAG]` flagged in `uses_meme` attaches: the one at the `[IMG]` after it."""
    tag_mask = input_ids == config.tag_token_id
    image_mask = input_ids == config.image_token_id
    image_order = image_mask.flatten().cumsum(0).view_as(input_ids) - 1  # row of meme_features at each [IMG]
    next_is_image = F.pad(image_mask[:, 1:], (0, 1), value=False)[tag_mask][uses_meme]
    if not bool(next_is_image.all()):
        raise ValueError("usage_labels mark a [TAG] as using a meme, but no [IMG] follows it in input_ids.")
    next_image_order = F.pad(image_order[:, 1:], (0, 1), value=0)[tag_mask][uses_meme]
    return meme_features[next_image_order]


def encoder_feature_size(meme_encoder: str | dict[str, Any]) -> int:
    """
    Size of the pooled features of a timm encoder, the `meme_feature_size` it needs: of an architecture name, or of a
    `meme_encoder_config` dict (its architecture built with its `model_args`).
    """
    config = {"architecture": meme_encoder} if isinstance(meme_encoder, str) else meme_encoder
    model_args = config.get("model_args") or {}
    return timm.create_model(config["architecture"], pretrained=False, num_classes=0, **model_args).num_features


def check_one_meme_source(**sources: Any) -> None:
    """Memes come one way only: refuse a call that gives them in more than one of `sources`."""
    given = [name for name, value in sources.items() if value is not None]
    if len(given) > 1:
        raise ValueError(
            f"Got memes as {' and '.join(given)}: pass them one way only, as meme_features, pixel_values (images) "
            "or meme_ids (meme bank ids)."
        )


class MODGPTHead(nn.Module):
    """One-hidden-layer MLP on a decoder hidden state: Linear, ReLU, dropout, Linear."""

    def __init__(self, config: MODGPTConfig, output_size: int):
        super().__init__()
        self.dense = nn.Linear(config.text_config.hidden_size, config.head_hidden_size)
        self.dropout = nn.Dropout(config.head_dropout)
        self.out_proj = nn.Linear(config.head_hidden_size, output_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(F.relu(self.dense(hidden_states))))


class MODGPTMemeEncoder(TimmWrapperModel):
    """
    The timm meme encoder. A new one keeps timm's own initialisation of its architecture, as transformers'
    `TimmBackbone` does: the wrapper's generic one (normal, std 0.02, on every layer) leaves a deep CNN's pooled output
    near 0 (about 1e-14) for any image, so an untrained encoder would tell no meme from another.
    """

    def _init_weights(self, module: nn.Module) -> None:
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()


class MODGPTPreTrainedModel(PreTrainedModel):
    config: MODGPTConfig
    config_class = MODGPTConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        """As `PreTrainedModel.from_pretrained`, with the meme encoder frozen as the config says: loading gives every
        weight `requires_grad=True`, and a trainable frozen encoder would get no gradient (DDP refuses that)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # with `output_loading_info=True`
        for module in model.modules():
            if isinstance(module, MODGPTMemeEncoder):
                module.requires_grad_(not model.config.freeze_meme_encoder)
        return loaded

    def _init_weights(self, module: nn.Module) -> None:
        # Our own layers only: the decoder and the meme encoder initialise themselves.
        std = self.config.text_config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)


class MODGPTModel(MODGPTPreTrainedModel):
    """
    The MOD-GPT base model: a decoder (built from `config.text_config`), a timm meme encoder (from
    `config.meme_encoder_config`, or none), the meme feature normalisation, a projector that splices memes into the
    input at `[IMG]` tokens, and segment embeddings (speaker1, speaker2, meme). No heads.
    """

    def __init__(self, config: MODGPTConfig):
        super().__init__(config)
        if config.text_config.model_type == "openai-gpt":  # CDial-GPT: the same weights, with a KV cache
            self.language_model = CachedOpenAIGPTModel(config.text_config)
        else:
            self.language_model = AutoModel.from_config(config.text_config)
        self.meme_encoder = self.build_meme_encoder(config)
        if config.meme_feature_normalization == "standardize":
            # Per-dimension statistics of the meme bank's raw features (`fit_meme_feature_normalization`).
            self.register_buffer("meme_feature_mean", torch.zeros(config.meme_feature_size))
            self.register_buffer("meme_feature_std", torch.ones(config.meme_feature_size))
        self.meme_projector = nn.Linear(config.meme_feature_size, config.text_config.hidden_size)
        self.segment_embeddings = nn.Embedding(3, config.text_config.hidden_size)
        self.decoder_has_cache = "cache" in inspect.signature(self.language_model.forward).parameters
        self.post_init()

    @staticmethod
    def build_meme_encoder(config: MODGPTConfig) -> MODGPTMemeEncoder | None:
        if config.meme_encoder_config is None:
            return None
        encoder = MODGPTMemeEncoder(config.meme_encoder_config)
        if encoder.timm_model.num_features != config.meme_feature_size:
            raise ValueError(
                f"MODGPTConfig.meme_feature_size={config.meme_feature_size} does not match the "
                f"{encoder.timm_model.num_features}-d output of meme encoder {config.meme_encoder_name!r}."
            )
        return encoder.requires_grad_(not config.freeze_meme_encoder)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    @property
    def input_embeddings_name(self) -> str:
        """The name of the decoder's input embedding weight within the decoder (`wte.weight`, `embed_tokens.weight`)."""
        embeddings = self.get_input_embeddings()
        return next(f"{name}.weight" for name, module in self.language_model.named_modules() if module is embeddings)

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def encode_meme_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw meme features of images: the meme encoder's pooled output (without grad when it is frozen)."""
        if self.meme_encoder is None:
            raise ValueError(
                "This model has no meme encoder (config.meme_encoder_config is None): it takes precomputed meme "
                "features. Pass `meme_features` instead of `pixel_values`, and add memes to the bank with "
                "`add_memes(meme_ids, meme_features=...)`."
            )
        pixel_values = pixel_values.to(self.meme_encoder.device, self.meme_encoder.dtype)
        if not self.config.freeze_meme_encoder:
            return self.meme_encoder(pixel_values).pooler_output
        self.meme_encoder.eval()
        with torch.no_grad():
            return self.meme_encoder(pixel_values).pooler_output

    def normalize_meme_features(self, meme_features: torch.Tensor) -> torch.Tensor:
        """Map raw meme features as `config.meme_feature_normalization` says ("standardize", "rms" or "none")."""
        normalization = self.config.meme_feature_normalization
        if normalization == "standardize":
            return (meme_features - self.meme_feature_mean) / self.meme_feature_std
        if normalization == "rms":
            return F.normalize(meme_features, dim=-1) * meme_features.shape[-1] ** 0.5
        return meme_features

    @torch.no_grad()
    def fit_meme_feature_normalization(self, meme_features: torch.Tensor) -> None:
        """Fit "standardize" to raw features `(num_memes, meme_feature_size)`: their mean and std per dimension."""
        if self.config.meme_feature_normalization != "standardize":
            return
        if meme_features.dim() != 2 or meme_features.shape[0] < 2:
            raise ValueError(
                "fit_meme_feature_normalization needs the features of at least 2 memes, shape (num_memes, "
                f"{self.config.meme_feature_size}), got shape {tuple(meme_features.shape)}."
            )
        features = meme_features.to(self.meme_feature_mean.device, torch.float64)
        std = features.std(dim=0)
        self.meme_feature_mean.copy_(features.mean(dim=0))
        self.meme_feature_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def get_meme_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Encode meme images `(num_memes, 3, height, width)` into normalised `(num_memes, meme_feature_size)` features,
        the form the model takes as `meme_features` and keeps in its meme bank.
        """
        return self.normalize_meme_features(self.encode_meme_images(pixel_values))

    def get_placeholder_mask(self, input_ids: torch.LongTensor, meme_features: torch.Tensor) -> torch.BoolTensor:
        """Mask of the `[IMG]` positions, after checking that there is exactly one meme feature for each."""
        image_mask = input_ids == self.config.image_token_id
        num_images = int(image_mask.sum())
        if num_images != meme_features.shape[0]:
            raise ValueError(
                f"input_ids hold {num_images} [IMG] tokens but {meme_features.shape[0]} memes were given "
                "(meme_features or pixel_values): there must be one meme per [IMG], in reading order."
            )
        return image_mask

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        meme_features: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> tuple | MODGPTModelOutputWithPast:
        r"""
        Args: as [`MODGPTForMemeDialogue.forward`], less the meme ids and the labels.
        """
        check_one_meme_source(meme_features=meme_features, pixel_values=pixel_values)
        if pixel_values is not None:
            meme_features = self.get_meme_features(pixel_values)
        inputs_embeds = self.get_input_embeddings()(input_ids)
        if meme_features is None:
            # An empty meme batch keeps the projector in the graph, so every parameter gets a gradient each step
            # (distributed training needs no `find_unused_parameters`).
            meme_features = inputs_embeds.new_zeros((0, self.config.meme_feature_size))
        image_mask = self.get_placeholder_mask(input_ids, meme_features)
        meme_embeds = self.meme_projector(meme_features.to(inputs_embeds.dtype))
        # Under autocast the projector's output is in the autocast dtype while the embeddings stay in theirs.
        inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), meme_embeds.to(inputs_embeds.dtype))
        if token_type_ids is not None:
            inputs_embeds = inputs_embeds + self.segment_embeddings(token_type_ids)

        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        decoder_kwargs = {"cache": cache, "use_cache": use_cache} if self.decoder_has_cache else {}
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **decoder_kwargs,
            **kwargs,
        )
        return MODGPTModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.get("cache"),
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
            meme_features=meme_features,
        )


class MODGPTForMemeDialogue(MODGPTPreTrainedModel, GenerationMixin):
    """
    MOD-GPT: [`MODGPTModel`] with a language modeling head tied to the input embeddings and three heads on the
    hidden states (meme usage and meme feature regression at `[TAG]`, emotion at `[IMG]`), and the meme bank that
    retrieval ranks.
    """

    def __init__(self, config: MODGPTConfig):
        super().__init__(config)
        self.model = MODGPTModel(config)
        # Whatever the decoder calls its input embeddings; tied or not as `config.tie_word_embeddings` says.
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{self.model.input_embeddings_name}"}
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.usage_head = MODGPTHead(config, 2)
        self.meme_head = MODGPTHead(config, config.meme_feature_size)
        self.emotion_head = MODGPTHead(config, config.num_emotions)
        self.meme_bank = MemeBank(config.meme_bank_ids, config.meme_feature_size, config.retrieval_distance)
        self.post_init()
        self.generation_config = default_generation_config(config, use_cache=self.model.decoder_has_cache)
        # `save_pretrained` records the class under one Auto class (AutoModelForCausalLM, below); add AutoModel.
        self.config.auto_map = {
            "AutoModel": f"{__name__.split('.')[-1]}.{type(self).__name__}",
            **(getattr(config, "auto_map", None) or {}),
        }

    @classmethod
    def from_text_backbone(
        cls, pretrained_model_name_or_path: str, vocab_size: int | None = None, **config_kwargs: Any
    ) -> "MODGPTForMemeDialogue":
        """
        Build MOD-GPT around a pretrained causal language model from a local folder or the hub: CDial-GPT
        (OpenAI-GPT), CDial-GPT2 or any GPT-2, Qwen2, Llama, ... Its decoder and language modelling head are kept
        (tied or not, as the checkpoint has them); the embeddings are resized to `vocab_size` (the processor's, which
        appends the dialogue special tokens; new rows start at the mean of the old ones). The segment embeddings start
        from the decoder's own `[speaker1]`, `[speaker2]` and `[IMG]` rows: CDial-GPT and the organisers' MOD-GPT
        embed a speaker's segment as that speaker's token, so at step 0 the model computes what the pretrained one
        does for the same dialogue.
        """
        language_model = AutoModelForCausalLM.from_pretrained(
            pretrained_model_name_or_path, config=load_text_config(pretrained_model_name_or_path)
        )
        if vocab_size is not None:
            language_model.resize_token_embeddings(vocab_size, mean_resizing=True)
        model = cls(MODGPTConfig(text_config=language_model.config, **config_kwargs))
        model.model.language_model.load_state_dict(language_model.base_model.state_dict())
        model.lm_head.load_state_dict(language_model.get_output_embeddings().state_dict())
        segment_tokens = [model.config.speaker1_token_id, model.config.speaker2_token_id, model.config.image_token_id]
        with torch.no_grad():
            model.model.segment_embeddings.weight.copy_(model.get_input_embeddings().weight[segment_tokens])
        return model

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def fit_meme_feature_normalization(self, meme_features: torch.Tensor) -> None:
        """
        Fit the "standardize" normalisation to the raw features `(num_memes, meme_feature_size)` of a meme bank: their
        per-dimension mean and standard deviation (1 where a dimension does not vary). Call it on an empty bank,
        before `add_memes`; memes added afterwards, at any time, are standardised with these statistics. The other
        normalisations have nothing to fit.
        """
        if self.config.meme_feature_normalization == "standardize" and len(self.meme_bank):
            raise ValueError(
                f"fit_meme_feature_normalization needs an empty meme bank: its {len(self.meme_bank)} memes were "
                "standardised with the current statistics."
            )
        self.model.fit_meme_feature_normalization(meme_features)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        meme_features: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        meme_ids: list[str] | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        usage_labels: torch.LongTensor | None = None,
        emotion_labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor | None = 0,
        num_items_in_batch: torch.Tensor | None = None,
        attention_row_groups: RowGroups | None = None,
        **kwargs: Any,
    ) -> tuple | MODGPTOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Dialogue tokens laid out per turn as `[speakerK] [BOS] text [EOS] [TAG] ([IMG])`.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real tokens, 0 for padding (left or right). Position ids are derived from it.
            token_type_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Segment of each token: 0 speaker1, 1 speaker2, 2 meme.
            position_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Positions of the tokens; by default derived from `attention_mask`, or counted from the cache's length.
            meme_features (`torch.Tensor` of shape `(num_images, meme_feature_size)`, *optional*):
                Normalised features (as `get_meme_features` and the meme bank hold them) of the memes at the `[IMG]`
                tokens, in reading order.
            pixel_values (`torch.Tensor` of shape `(num_images, 3, height, width)`, *optional*):
                Meme images, encoded by the meme encoder, instead of `meme_features`.
            meme_ids (`list[str]`, *optional*):
                Ids of meme bank memes (as the processor returns them), in reading order, instead of `meme_features`.
                The memes come one way only: `meme_features`, `pixel_values` or `meme_ids`.
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Text labels aligned with `input_ids` (the model shifts them); `-100` is ignored. A part of the loss
                whose labels are given but all ignored (a one-turn dialogue has no text to learn) is a zero that keeps
                the graph; a part whose labels are not given is `None`.
            usage_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                At `[TAG]` positions, 1 if the turn attaches a meme and 0 if not; `-100` elsewhere. A `[TAG]` labelled
                1 also trains the meme head towards the meme at the following `[IMG]` (`config.meme_loss`).
            emotion_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                At `[IMG]` positions, the meme's emotion id; `-100` elsewhere.
            logits_to_keep (`int`, `torch.Tensor` or `None`, *optional*, defaults to `0`):
                Positions whose next-token logits are returned, as in transformers' causal LMs: `0` all, an `int`
                `n` the last `n`, a tensor the positions it holds. `None` returns no logits, which is what a
                training step wants: the text loss runs the LM head on the labelled positions only, and the
                vocabulary-wide logits of a whole batch are the largest tensor of a step. The text loss never depends
                on `logits_to_keep`.
            num_items_in_batch (`torch.LongTensor` of shape `(4,)`, *optional*):
                The items each loss part averages over in the whole global batch (`loss_item_counts` of every
                process's batch, summed), in `LOSS_WEIGHTS` order. Given, each part is this batch's sum divided by
                them, so that a process holding fewer labelled tokens, memes or emotions weighs less and the summed
                gradients of all processes are those of one process holding the global batch (as transformers' causal
                LMs use `num_items_in_batch`). Left `None`, each part is a mean over this batch.
            attention_row_groups (`tuple[tuple[int, int, int], ...]`, *optional*):
                For a batch whose cache joins prompts run at different widths (`pipeline_mod.generate_texts`): groups
                of rows as `(first row, end row, first key)`, the rows `first:end` attending to no cached key before
                column `first key`. The decoder's attention then runs per group and skips those columns (the cached
                OpenAI-GPT decoder always can; a transformers decoder when configured with
                `attn_implementation="mod_row_groups_sdpa"`; others read every column, so the columns must hold
                keys).
        """
        if attention_row_groups is not None:
            kwargs["attention_row_groups"] = attention_row_groups
        check_one_meme_source(meme_features=meme_features, pixel_values=pixel_values, meme_ids=meme_ids)
        if meme_ids is not None:
            meme_features = self.meme_bank.lookup(meme_ids)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            meme_features=meme_features,
            pixel_values=pixel_values,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        tag_mask = input_ids == self.config.tag_token_id
        image_mask = input_ids == self.config.image_token_id
        usage_logits = self.usage_head(hidden_states[tag_mask])
        meme_predictions = self.meme_head(hidden_states[tag_mask])
        emotion_logits = self.emotion_head(hidden_states[image_mask])

        logits = None if logits_to_keep is None else self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
        if num_items_in_batch is None:
            num_items_in_batch = loss_item_counts(labels, usage_labels, emotion_labels)
        text_items, usage_items, meme_items, emotion_items = num_items_in_batch.unbind()
        lm_loss = None if labels is None else text_loss(self.lm_head, hidden_states, labels, text_items)
        usage_loss = meme_loss = emotion_loss = None
        if usage_labels is not None:
            tag_usage = usage_labels[tag_mask]
            usage_loss = classification_loss(usage_logits, tag_usage, usage_items)
            meme_loss = meme_retrieval_loss(
                self.config, self.meme_bank, meme_predictions, tag_usage, input_ids, outputs.meme_features, meme_items
            )
        if emotion_labels is not None:
            emotion_loss = classification_loss(emotion_logits, emotion_labels[image_mask], emotion_items)

        return MODGPTOutput(
            loss=weighted_loss(self.config, lm_loss, usage_loss, meme_loss, emotion_loss),
            lm_loss=lm_loss,
            usage_loss=usage_loss,
            meme_loss=meme_loss,
            emotion_loss=emotion_loss,
            logits=logits,
            usage_logits=usage_logits,
            meme_predictions=meme_predictions,
            emotion_logits=emotion_logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def prepare_inputs_for_generation(
        self,
        *args: Any,
        meme_features: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        meme_ids: list[str] | None = None,
        is_first_iteration: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # History memes enter with the prompt; once they are in the cache, later steps feed only new text tokens.
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs.update(meme_features=meme_features, pixel_values=pixel_values, meme_ids=meme_ids)
        return model_inputs

    # Meme bank ---------------------------------------------------------------------------------------------------

    def add_memes(
        self,
        meme_ids: list[str],
        meme_features: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        meme_bank: MemeBank | None = None,
    ) -> None:
        """
        Add memes to the meme bank (`meme_bank`, default the model's), or replace the features of ids already there:
        from their raw features (the encoder's output or precomputed vectors, normalised here) or from images
        (through the meme encoder).
        """
        if (meme_features is None) == (pixel_values is None):
            raise ValueError("add_memes needs exactly one of meme_features or pixel_values.")
        if meme_features is None:
            features = self.model.get_meme_features(pixel_values.to(self.device))
        elif meme_features.dim() != 2 or meme_features.shape[-1] != self.config.meme_feature_size:
            raise ValueError(
                f"add_memes got meme_features of shape {tuple(meme_features.shape)}; the model takes "
                f"(num_memes, {self.config.meme_feature_size}) (config.meme_feature_size)."
            )
        else:
            features = self.model.normalize_meme_features(meme_features.to(self.meme_bank.features))
        (self.meme_bank if meme_bank is None else meme_bank).add(list(meme_ids), features)

    def respond(
        self,
        dialogues: list[dict] | list[list[dict]],
        processor: Any,
        candidates: list[str] | list[list[str]] | None = None,
        num_memes: int | None = DEFAULT_NUM_MEMES,
        use_meme: bool | None = None,
        meme_bank: MemeBank | None = None,
        **generate_kwargs: Any,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """
        Answer one dialogue (a list of turns) or a batch of them: `pipeline_mod.reply_to_dialogues`, which every
        front end runs. `candidates` is a list of meme ids for one dialogue, one list per dialogue for a batch.
        """
        try:
            from .pipeline_mod import reply_to_dialogues
        except ImportError:
            from pipeline_mod import reply_to_dialogues

        batch, single = processor.dialogue_batch(dialogues)
        if single and candidates is not None:
            candidates = [candidates]
        replies = reply_to_dialogues(
            self, processor, batch, candidates, num_memes, use_meme, meme_bank=meme_bank, **generate_kwargs
        )
        return replies[0] if single else replies


MODGPTForMemeDialogue.register_for_auto_class("AutoModel")
MODGPTForMemeDialogue.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "MODGPTForMemeDialogue",
    "MODGPTModel",
    "MODGPTPreTrainedModel",
    "MODGPTOutput",
    "MemeBank",
    "MemeRetrieval",
]
