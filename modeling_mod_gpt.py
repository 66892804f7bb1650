"""PyTorch MOD-GPT: a GPT-style decoder that chats in text and Internet memes (Fei et al., 2021)."""

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, BatchFeature, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput, logging

try:
    from .configuration_mod_gpt import MODGPTConfig
except ImportError:
    from configuration_mod_gpt import MODGPTConfig


logger = logging.get_logger(__name__)
IGNORE_INDEX = -100
DIALOGUE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "meme_features")


@dataclass
class MODGPTOutput(ModelOutput):
    """
    Output of [`MODGPTForMemeDialogue`]. Head outputs are flat over the batch, in reading order (row by row, left to
    right) of the `[TAG]` (usage, meme) or `[IMG]` (emotion) tokens of `input_ids`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Weighted sum of the loss parts that had labels.
        lm_loss, usage_loss, meme_loss, emotion_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Text cross-entropy, usage cross-entropy, meme loss (`config.meme_loss`: feature regression by mean
            squared error, or contrastive ranking) and emotion cross-entropy. Each is `None` when its labels were
            not given.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`, *optional*):
            Next-token logits. Not computed when `labels` are given: the training loss then runs the LM head on the
            labelled positions only.
        usage_logits (`torch.FloatTensor` of shape `(num_tags, 2)`):
            Whether the turn closed by each `[TAG]` attaches a meme.
        meme_predictions (`torch.FloatTensor` of shape `(num_tags, meme_feature_size)`):
            Predicted visual feature of the meme each `[TAG]` would attach, ranked against candidates for retrieval.
        emotion_logits (`torch.FloatTensor` of shape `(num_images, num_emotions)`):
            Emotion of the meme at each `[IMG]`.
        cache (`Cache`, *optional*):
            Key/value cache of the decoder, for `generate`.
        hidden_states (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Last hidden states of the decoder.
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
    hidden_states: torch.FloatTensor | None = None

    @property
    def past_key_values(self) -> Cache | None:
        """The decoder's key/value cache under its older name."""
        return self.cache


@dataclass
class MemeRetrieval:
    """Candidate memes ranked for one `[TAG]`, nearest first, with their distances to the predicted feature."""

    meme_ids: list[str]
    distances: list[float]


def default_generation_config(config: MODGPTConfig, use_cache: bool = True) -> GenerationConfig:
    """The paper's decoding: nucleus sampling with top_p 0.9 and temperature 0.7, stopping at `[EOS]`.

    The other dialogue special tokens are suppressed: a reply is text, and its meme comes from the heads.
    """
    never_generated = [token_id for name, token_id in config.special_token_ids.items() if name != "eos_token_id"]
    return GenerationConfig(
        do_sample=True,
        top_p=0.9,
        temperature=0.7,
        max_new_tokens=32,
        use_cache=use_cache,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        suppress_tokens=never_generated,
    )


def last_per_row(mask: torch.BoolTensor) -> torch.LongTensor:
    """Index, among all `True` entries of `mask` in reading order, of the last one in each row."""
    return mask.sum(dim=1).cumsum(0) - 1


class MODGPTHead(nn.Module):
    """One-hidden-layer MLP on a decoder hidden state: Linear, ReLU, dropout, Linear."""

    def __init__(self, config: MODGPTConfig, output_size: int):
        super().__init__()
        self.dense = nn.Linear(config.text_config.hidden_size, config.head_hidden_size)
        self.dropout = nn.Dropout(config.head_dropout)
        self.out_proj = nn.Linear(config.head_hidden_size, output_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(F.relu(self.dense(hidden_states))))


class MODGPTPreTrainedModel(PreTrainedModel):
    config: MODGPTConfig
    config_class = MODGPTConfig
    base_model_prefix = "mod_gpt"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        # Only our own linear and embedding layers: the decoder initialises itself, and the timm meme encoder keeps
        # timm's initialisation (or its loaded weights).
        std = self.config.text_config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)


class MODGPTForMemeDialogue(MODGPTPreTrainedModel, GenerationMixin):
    """
    MOD-GPT: a decoder (built from `config.text_config`) with a tied LM head, a meme encoder and projector that
    splice memes into the input at `[IMG]` tokens, segment embeddings (speaker1, speaker2, meme), and three heads
    on the hidden states: meme usage and meme feature regression at `[TAG]`, emotion at `[IMG]`.
    """

    def __init__(self, config: MODGPTConfig):
        super().__init__(config)
        hidden_size = config.text_config.hidden_size
        self.transformer = AutoModel.from_config(config.text_config)
        self.segment_embeddings = nn.Embedding(3, hidden_size)
        self.meme_encoder = self.build_meme_encoder(config)
        if config.meme_feature_normalization == "standardize":
            # Per-dimension statistics of the meme bank's raw features (`fit_meme_feature_normalization`).
            self.register_buffer("meme_feature_mean", torch.zeros(config.meme_feature_size))
            self.register_buffer("meme_feature_std", torch.ones(config.meme_feature_size))
        self.meme_projector = nn.Linear(config.meme_feature_size, hidden_size)
        self.usage_head = MODGPTHead(config, 2)
        self.meme_head = MODGPTHead(config, config.meme_feature_size)
        self.emotion_head = MODGPTHead(config, config.num_emotions)
        self.register_buffer("meme_bank_features", torch.zeros(len(config.meme_bank_ids), config.meme_feature_size))
        self.decoder_has_cache = "cache" in inspect.signature(self.transformer.forward).parameters
        self.post_init()
        self.generation_config = default_generation_config(config, use_cache=self.decoder_has_cache)
        # `save_pretrained` records the class under one Auto class (AutoModelForCausalLM, below); add AutoModel.
        self.config.auto_map = {
            "AutoModel": f"{__name__.split('.')[-1]}.{type(self).__name__}",
            **(getattr(config, "auto_map", None) or {}),
        }
        if config.meme_encoder_checkpoint and os.path.isfile(config.meme_encoder_checkpoint):
            timm.models.load_checkpoint(self.meme_encoder, config.meme_encoder_checkpoint, strict=False)
        elif config.meme_encoder_checkpoint:
            # A saved model holds its encoder's weights, so the file it was first built from need not outlive it.
            logger.warning(
                f"meme_encoder_checkpoint {config.meme_encoder_checkpoint!r} does not exist: the meme encoder keeps "
                "its initial weights, or those of the saved model being loaded."
            )

    @staticmethod
    def build_meme_encoder(config: MODGPTConfig) -> nn.Module | None:
        """The timm image encoder named by the config, or `None` for a model that takes precomputed features."""
        if config.meme_encoder_name is None:
            return None
        encoder = timm.create_model(config.meme_encoder_name, pretrained=False, num_classes=0)
        if encoder.num_features != config.meme_feature_size:
            raise ValueError(
                f"MODGPTConfig.meme_feature_size={config.meme_feature_size} does not match the "
                f"{encoder.num_features}-d output of meme encoder {config.meme_encoder_name!r}."
            )
        return encoder.requires_grad_(not config.freeze_meme_encoder)

    @classmethod
    def from_text_backbone(
        cls, pretrained_model_name_or_path: str, vocab_size: int | None = None, **config_kwargs: Any
    ) -> "MODGPTForMemeDialogue":
        """
        Build MOD-GPT around pretrained decoder weights: a GPT-2 or CDial-GPT (OpenAI-GPT) checkpoint from a local
        folder or the hub. Embeddings are resized to `vocab_size` (the processor's, which adds the dialogue
        special tokens); the new rows are initialised to the mean of the old ones.
        """
        text_config = AutoConfig.from_pretrained(pretrained_model_name_or_path)
        if vocab_size is not None:
            text_config.vocab_size = vocab_size
        config = MODGPTConfig(text_config=text_config, **config_kwargs)
        model = cls(config)
        decoder = AutoModel.from_pretrained(pretrained_model_name_or_path)
        decoder.resize_token_embeddings(text_config.vocab_size, mean_resizing=True)
        model.transformer.load_state_dict(decoder.state_dict())
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.transformer.set_input_embeddings(value)

    def get_output_embeddings(self) -> None:
        # The LM head is the transpose of the input embeddings (see `lm_logits`); there is no separate module to tie.
        return None

    def lm_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden_states, self.get_input_embeddings().weight)

    def get_meme_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Encode meme images `(num_memes, 3, height, width)` into normalised `(num_memes, meme_feature_size)` features,
        the form the model takes as `meme_features` and keeps in its meme bank.
        """
        return self.normalize_meme_features(self.encode_meme_images(pixel_values))

    def encode_meme_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw meme features of images: the meme encoder's pooled output (without grad when it is frozen)."""
        if self.meme_encoder is None:
            raise ValueError(
                "This model has no meme encoder (config.meme_encoder_name is None): it takes precomputed meme "
                "features. Pass `meme_features` instead of `pixel_values`, and add memes to the bank with "
                "`add_memes(meme_ids, meme_features=...)`."
            )
        if self.config.freeze_meme_encoder:
            self.meme_encoder.eval()
            with torch.no_grad():
                return self.meme_encoder(pixel_values.to(self.dtype))
        return self.meme_encoder(pixel_values.to(self.dtype))

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
        """
        Fit the "standardize" normalisation to the raw features `(num_memes, meme_feature_size)` of a meme bank: their
        per-dimension mean and standard deviation (1 where a dimension does not vary). Call it on an empty bank,
        before `add_memes`; memes added afterwards, at any time, are standardised with these statistics. The other
        normalisations have nothing to fit.
        """
        if self.config.meme_feature_normalization != "standardize":
            return
        if self.meme_bank_ids:
            raise ValueError(
                f"fit_meme_feature_normalization needs an empty meme bank: its {len(self.meme_bank_ids)} memes were "
                "standardised with the current statistics."
            )
        if meme_features.dim() != 2 or meme_features.shape[0] < 2:
            raise ValueError(
                "fit_meme_feature_normalization needs the features of at least 2 memes, shape (num_memes, "
                f"{self.config.meme_feature_size}), got shape {tuple(meme_features.shape)}."
            )
        features = meme_features.to(self.meme_feature_mean.device, torch.float64)
        std = features.std(dim=0)
        self.meme_feature_mean.copy_(features.mean(dim=0))
        self.meme_feature_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

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

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        token_type_ids: torch.LongTensor | None = None,
        meme_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the projected memes spliced in at `[IMG]`, plus segment embeddings."""
        inputs_embeds = self.get_input_embeddings()(input_ids)
        if meme_features is None:
            # An empty meme batch keeps the projector in the graph, so every parameter gets a gradient each step
            # (distributed training needs no `find_unused_parameters`).
            meme_features = inputs_embeds.new_zeros((0, self.config.meme_feature_size))
        image_mask = self.get_placeholder_mask(input_ids, meme_features)
        meme_embeds = self.meme_projector(meme_features.to(inputs_embeds.dtype))
        inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), meme_embeds)
        if token_type_ids is not None:
            inputs_embeds = inputs_embeds + self.segment_embeddings(token_type_ids)
        return inputs_embeds

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
        **kwargs: Any,
    ) -> MODGPTOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Dialogue tokens laid out per turn as `[speakerK] [BOS] text [EOS] [TAG] ([IMG])`.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real tokens, 0 for padding (left or right). Position ids are derived from it.
            token_type_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Segment of each token: 0 speaker1, 1 speaker2, 2 meme.
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
        """
        meme_features = self.resolve_memes(meme_features, pixel_values, meme_ids)
        inputs_embeds = self.embed_inputs(input_ids, token_type_ids, meme_features)
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        decoder_kwargs = {"cache": cache, "use_cache": use_cache} if self.decoder_has_cache else {}
        decoder_outputs = self.transformer(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **decoder_kwargs,
            **kwargs,
        )
        hidden_states = decoder_outputs.last_hidden_state

        tag_mask = input_ids == self.config.tag_token_id
        image_mask = input_ids == self.config.image_token_id
        tag_states = hidden_states[tag_mask]
        usage_logits = self.usage_head(tag_states)
        meme_predictions = self.meme_head(tag_states)
        emotion_logits = self.emotion_head(hidden_states[image_mask])

        logits = lm_loss = usage_loss = meme_loss = emotion_loss = None
        if labels is None:
            logits = self.lm_logits(hidden_states)
        else:
            lm_loss = self.text_loss(hidden_states, labels)
        if usage_labels is not None:
            tag_usage = usage_labels[tag_mask]
            usage_loss = self.classification_loss(usage_logits, tag_usage)
            meme_loss = self.meme_retrieval_loss(meme_predictions, tag_usage, input_ids, meme_features)
        if emotion_labels is not None:
            emotion_loss = self.classification_loss(emotion_logits, emotion_labels[image_mask])

        weighted_parts = [
            (self.config.text_loss_weight, lm_loss),
            (self.config.usage_loss_weight, usage_loss),
            (self.config.meme_loss_weight, meme_loss),
            (self.config.emotion_loss_weight, emotion_loss),
        ]
        present = [weight * part for weight, part in weighted_parts if part is not None]
        loss = torch.stack(present).sum() if present else None

        return MODGPTOutput(
            loss=loss,
            lm_loss=lm_loss,
            usage_loss=usage_loss,
            meme_loss=meme_loss,
            emotion_loss=emotion_loss,
            logits=logits,
            usage_logits=usage_logits,
            meme_predictions=meme_predictions,
            emotion_logits=emotion_logits,
            cache=decoder_outputs.get("cache"),
            hidden_states=hidden_states,
        )

    def resolve_memes(
        self, meme_features: torch.Tensor | None, pixel_values: torch.Tensor | None, meme_ids: list[str] | None
    ) -> torch.Tensor | None:
        """The features of the memes at the `[IMG]` tokens, from whichever one of the three ways they came."""
        sources = {"meme_features": meme_features, "pixel_values": pixel_values, "meme_ids": meme_ids}
        given = [name for name, value in sources.items() if value is not None]
        if len(given) > 1:
            raise ValueError(
                f"Got memes as {' and '.join(given)}: pass them one way only, as meme_features, pixel_values (images) "
                "or meme_ids (meme bank ids)."
            )
        if pixel_values is not None:
            return self.get_meme_features(pixel_values)
        if meme_ids is not None:
            return self.lookup_memes(meme_ids)
        return meme_features

    def text_loss(self, hidden_states: torch.Tensor, labels: torch.LongTensor) -> torch.Tensor:
        """
        Next-token cross-entropy, running the LM head only on the positions that have a label; a zero that keeps the
        graph when none has (as `classification_loss`).
        """
        shifted_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        predicting = shifted_labels != IGNORE_INDEX
        logits = self.lm_logits(hidden_states[predicting])
        if not predicting.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), shifted_labels[predicting])

    @staticmethod
    def classification_loss(logits: torch.Tensor, targets: torch.LongTensor) -> torch.Tensor:
        """Mean cross-entropy over the targets that are not ignored; a zero that keeps the graph when all are."""
        if not (targets != IGNORE_INDEX).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)

    def meme_retrieval_loss(
        self,
        meme_predictions: torch.Tensor,
        tag_usage: torch.LongTensor,
        input_ids: torch.LongTensor,
        meme_features: torch.Tensor | None,
    ) -> torch.Tensor:
        """
        `config.meme_loss` over the `[TAG]`s that attach a meme: the mean squared error between the predicted and the
        attached meme's features ("l2"), or the contrastive loss of ranking the attached meme first ("contrastive").
        """
        uses_meme = tag_usage == 1
        if not uses_meme.any():
            return meme_predictions.sum() * 0.0
        targets = self.attached_meme_features(input_ids, meme_features, uses_meme).detach()
        predictions = meme_predictions[uses_meme].float()
        if self.config.meme_loss == "contrastive":
            return self.contrastive_meme_loss(predictions, targets.float())
        return F.mse_loss(predictions, targets.float())

    def contrastive_meme_loss(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """
        Cross-entropy of picking each target meme among the distinct memes of the bank and of `targets`, with logits
        `-distance / temperature`: the retrieval distance, per dimension for L2 (see `meme_loss_temperature`).
        """
        bank = self.meme_bank_features.to(targets)
        candidates, inverse = torch.unique(torch.cat([bank, targets]), dim=0, return_inverse=True)
        distances = self.meme_distances(predictions, candidates)
        if self.config.retrieval_distance == "l2":
            distances = distances / self.config.meme_feature_size**0.5
        return F.cross_entropy(-distances / self.config.meme_loss_temperature, inverse[len(bank) :])

    def attached_meme_features(
        self, input_ids: torch.LongTensor, meme_features: torch.Tensor, uses_meme: torch.BoolTensor
    ) -> torch.Tensor:
        """Features of the meme that each `[TAG]` flagged in `uses_meme` attaches: the one at the `[IMG]` after it."""
        tag_mask = input_ids == self.config.tag_token_id
        image_mask = input_ids == self.config.image_token_id
        image_order = image_mask.flatten().cumsum(0).view_as(input_ids) - 1  # row of meme_features at each [IMG]
        next_is_image = F.pad(image_mask[:, 1:], (0, 1), value=False)[tag_mask][uses_meme]
        if not bool(next_is_image.all()):
            raise ValueError("usage_labels mark a [TAG] as using a meme, but no [IMG] follows it in input_ids.")
        next_image_order = F.pad(image_order[:, 1:], (0, 1), value=0)[tag_mask][uses_meme]
        return meme_features[next_image_order]

    @staticmethod
    def encoder_feature_size(meme_encoder_name: str) -> int:
        """Size of the pooled features of a timm encoder, the `meme_feature_size` it needs."""
        return timm.create_model(meme_encoder_name, pretrained=False, num_classes=0).num_features

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

    @property
    def meme_bank_ids(self) -> list[str]:
        return list(self.config.meme_bank_ids)

    def add_memes(
        self, meme_ids: list[str], meme_features: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None
    ) -> None:
        """
        Add memes to the bank (or replace the features of ids already there), from their raw features (the encoder's
        output or precomputed vectors, normalised here) or from images (through the meme encoder).
        """
        if (meme_features is None) == (pixel_values is None):
            raise ValueError("add_memes needs exactly one of meme_features or pixel_values.")
        if meme_features is None:
            meme_features = self.get_meme_features(pixel_values.to(self.device))
        else:
            if meme_features.dim() != 2 or meme_features.shape[-1] != self.config.meme_feature_size:
                raise ValueError(
                    f"add_memes got meme_features of shape {tuple(meme_features.shape)}; the model takes "
                    f"(num_memes, {self.config.meme_feature_size}) (config.meme_feature_size)."
                )
            meme_features = self.normalize_meme_features(meme_features.to(self.meme_bank_features))
        if len(meme_ids) != meme_features.shape[0] or len(set(meme_ids)) != len(meme_ids):
            raise ValueError(
                f"add_memes got {len(meme_ids)} ids (distinct ones required) for {len(meme_features)} memes."
            )
        meme_features = meme_features.detach().to(self.meme_bank_features)
        bank_ids = self.meme_bank_ids
        position = {meme_id: index for index, meme_id in enumerate(bank_ids)}
        known = [meme_id in position for meme_id in meme_ids]
        bank = self.meme_bank_features.clone()
        if any(known):
            rows = torch.tensor([position[meme_id] for meme_id in meme_ids if meme_id in position])
            bank[rows] = meme_features[torch.tensor(known)]
        new = [not flag for flag in known]
        self.meme_bank_features = torch.cat([bank, meme_features[torch.tensor(new, dtype=torch.bool)]])
        self.config.meme_bank_ids = bank_ids + [meme_id for meme_id, is_new in zip(meme_ids, new) if is_new]

    def add_new_memes(self, memes: Any, image_processor: Any) -> list[str]:
        """
        Add the memes of a `memes` table (the built dataset's `memes` config) that the bank lacks, such as the hard
        test's unseen memes: from their images through the meme encoder, or, for a model without one (trained on the
        release's features), from the table's `feature` column. Returns the ids added.
        """
        known = set(self.meme_bank_ids)
        new = [index for index, meme_id in enumerate(memes["meme_id"]) if meme_id not in known]
        if not new:
            return []
        rows = memes.select(new)
        if self.meme_encoder is not None:
            self.add_memes(rows["meme_id"], pixel_values=image_processor(rows["image"])["pixel_values"])
        elif "feature" not in rows.column_names or any(feature is None for feature in rows["feature"]):
            raise ValueError(
                f"Memes {rows['meme_id'][:10]} are not in the meme bank, and this model (no meme encoder: it was "
                "trained on the release's features) needs their `feature` vectors, which the memes table lacks (the "
                "release had no id2feature.json, or no vector for them)."
            )
        else:
            self.add_memes(rows["meme_id"], meme_features=torch.tensor(rows["feature"]))
        return rows["meme_id"]

    def lookup_memes(self, meme_ids: list[str]) -> torch.Tensor:
        """Features of the given bank memes, `(len(meme_ids), meme_feature_size)`."""
        if isinstance(meme_ids, str) or not isinstance(meme_ids, Sequence):
            raise ValueError(f"meme_ids must be a list of meme ids, got {type(meme_ids).__name__} {meme_ids!r}.")
        position = {meme_id: index for index, meme_id in enumerate(self.config.meme_bank_ids)}
        unknown = [meme_id for meme_id in meme_ids if not isinstance(meme_id, str) or meme_id not in position]
        if unknown:
            raise ValueError(f"Unknown meme id(s) {unknown}: not in the model's meme bank of {len(position)} memes.")
        return self.meme_bank_features[torch.tensor([position[m] for m in meme_ids], dtype=torch.long)]

    def meme_distances(self, meme_predictions: torch.Tensor, candidate_features: torch.Tensor) -> torch.Tensor:
        """
        Distances `(num_predictions, num_candidates)` from each predicted feature `(num_predictions, features)` to
        candidate memes: one set for all, `(num_candidates, features)`, or one set each, `(num_predictions,
        num_candidates, features)`. Matrix products throughout: no predictions x candidates x features tensor.
        """
        predictions, candidates = meme_predictions.float(), candidate_features.float()
        one_set_each = candidates.dim() == 3
        if one_set_each:
            predictions = predictions.unsqueeze(1)
        if self.config.retrieval_distance == "cosine":
            similarity = F.normalize(predictions, dim=-1) @ F.normalize(candidates, dim=-1).transpose(-1, -2)
            distances = 1.0 - similarity
        else:
            distances = torch.cdist(predictions, candidates)
        return distances.squeeze(1) if one_set_each else distances

    def retrieve_memes(
        self, meme_predictions: torch.Tensor, candidates: list[list[str]] | None = None, top_k: int | None = None
    ) -> list[MemeRetrieval]:
        """
        Rank memes for each predicted feature `(num_tags, meme_feature_size)` by the configured distance: the given
        candidate ids for each prediction (e.g. the official sets of 10 or 11 memes; sizes may differ within a
        batch), or the whole meme bank.
        """
        if candidates is None:
            distances = self.meme_distances(meme_predictions, self.meme_bank_features)
            candidates = [self.meme_bank_ids] * len(meme_predictions)
        else:
            if len(candidates) != len(meme_predictions):
                raise ValueError(f"Got {len(candidates)} candidate lists for {len(meme_predictions)} predictions.")
            distances = self.candidate_distances(meme_predictions, candidates)
        if top_k is None:
            ranked_distances, order = distances.sort(dim=-1)
        else:
            ranked_distances, order = distances.topk(min(top_k, distances.shape[-1]), dim=-1, largest=False)
        # Padding sorts last (infinite distance): each list keeps as many entries as it has candidates.
        return [
            MemeRetrieval([ids[i] for i in row.tolist()[: len(ids)]], dist.tolist()[: len(ids)])
            for ids, row, dist in zip(candidates, order, ranked_distances)
        ]

    def check_candidates(self, candidates: list[list[str]], num_dialogues: int) -> None:
        """Raise a `ValueError` naming the candidate list that is not a non-empty list of distinct meme bank ids."""
        if isinstance(candidates, str) or not isinstance(candidates, Sequence) or len(candidates) != num_dialogues:
            raise ValueError(
                f"candidates must hold one list of meme ids per dialogue ({num_dialogues}), got {candidates!r}."
            )
        known = set(self.config.meme_bank_ids)
        for index, ids in enumerate(candidates):
            if isinstance(ids, (str, Mapping)) or not isinstance(ids, Sequence) or not ids:
                raise ValueError(
                    f"candidates of dialogue {index}: expected a non-empty list of meme ids, got {ids!r}."
                )
            unknown = [meme_id for meme_id in ids if not isinstance(meme_id, str) or meme_id not in known]
            if unknown:
                raise ValueError(
                    f"candidates of dialogue {index}: {unknown} are not in the model's meme bank ({len(known)} memes)."
                )
            repeated = sorted({meme_id for meme_id in ids if ids.count(meme_id) > 1})
            if repeated:
                raise ValueError(f"candidates of dialogue {index}: {repeated} appear more than once.")

    def candidate_distances(self, meme_predictions: torch.Tensor, candidates: list[list[str]]) -> torch.Tensor:
        """
        Distances `(num_predictions, longest_list)` from each prediction to its own candidates, the lists padded to
        the longest one and the padding at infinite distance.
        """
        sizes = torch.tensor([len(ids) for ids in candidates], device=self.meme_bank_features.device)
        is_candidate = torch.arange(int(sizes.max()), device=sizes.device) < sizes.unsqueeze(1)
        features = self.meme_bank_features.new_zeros((*is_candidate.shape, self.config.meme_feature_size))
        features[is_candidate] = self.lookup_memes([meme_id for ids in candidates for meme_id in ids])
        distances = self.meme_distances(meme_predictions, features)
        return distances.masked_fill(~is_candidate, float("inf"))

    # Replies -----------------------------------------------------------------------------------------------------

    @property
    def max_positions(self) -> int:
        """Positions the decoder embeds: `n_positions` (GPT-2, OpenAI-GPT) or else `max_position_embeddings`."""
        text_config = self.config.text_config
        return getattr(text_config, "n_positions", None) or text_config.max_position_embeddings

    def max_prompt_length(self, processor: Any, max_new_tokens: int = 0, max_length: int | None = None) -> int:
        """
        Longest encoding the model takes with room for `max_new_tokens` generated tokens after it: the decoder's
        positions less that room, and never more than `max_length` (default: the processor's).
        """
        limit = self.max_positions - max_new_tokens
        if limit < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the decoder's {self.max_positions} "
                "positions."
            )
        return min(max_length or processor.max_length, limit)

    def dialogue_inputs(
        self, processor: Any, dialogues: list[list[dict]], max_new_tokens: int | None = None, **processor_kwargs: Any
    ) -> BatchFeature:
        """
        The processor's left-padded encoding of `dialogues` on the model's device, with `meme_features` (the bank
        features of their memes, in reading order) in place of `meme_ids`. Each dialogue keeps its latest turns that
        fit `max_prompt_length`: with `add_generation_prompt=True`, room is left for `max_new_tokens` generated
        tokens (default: the generation config's).
        """
        if max_new_tokens is None:
            max_new_tokens = (
                self.generation_config.max_new_tokens if processor_kwargs.get("add_generation_prompt") else 0
            )
        max_length = self.max_prompt_length(processor, max_new_tokens or 0, processor_kwargs.pop("max_length", None))
        inputs = processor(
            dialogues, padding_side="left", return_tensors="pt", max_length=max_length, **processor_kwargs
        )
        meme_ids = inputs.pop("meme_ids")
        inputs = inputs.to(self.device)
        inputs["meme_features"] = self.lookup_memes(meme_ids) if meme_ids else None
        return inputs

    def run_dialogues(
        self, processor: Any, dialogues: list[list[dict]], **processor_kwargs: Any
    ) -> tuple[BatchFeature, MODGPTOutput]:
        """Encode `dialogues` with `dialogue_inputs` and run the model on them (no labels: logits come back)."""
        inputs = self.dialogue_inputs(processor, dialogues, **processor_kwargs)
        return inputs, self(**{key: inputs[key] for key in DIALOGUE_INPUTS})

    @torch.no_grad()
    def respond(
        self,
        dialogues: list[dict] | list[list[dict]],
        processor: Any,
        candidates: list[str] | list[list[str]] | None = None,
        top_k: int | None = 5,
        **generate_kwargs: Any,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """
        Answer one dialogue (a list of turns) or a batch of them: generate the reply text with `generate`, decide
        with the usage head whether to attach a meme, pick it by retrieval over the meme bank (or the given
        candidate ids: a list for one dialogue, one list per dialogue for a batch) and predict its emotion. The
        prompt keeps the latest turns that fit the decoder with room for `max_new_tokens` (see
        `max_prompt_length`); a latest turn that cannot fit is a `ValueError`. Returns, per dialogue, `{"speaker",
        "text", "meme", "emotion", "meme_scores"}` where `meme_scores` lists the `top_k` nearest memes (all of them
        for `None`) with their distances.
        """
        batch, single = processor.dialogue_batch(dialogues)
        for index, dialogue in enumerate(batch):
            processor.check_dialogue(dialogue, index, known_memes=self.config.meme_bank_ids)
        batch = [list(dialogue) for dialogue in batch]
        if candidates is not None:
            candidates = [candidates] if single else candidates
            self.check_candidates(candidates, len(batch))
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}.")

        generation_config = generate_kwargs.get("generation_config") or self.generation_config
        max_new_tokens = generate_kwargs.get("max_new_tokens", generation_config.max_new_tokens)
        prompt = self.dialogue_inputs(processor, batch, max_new_tokens=max_new_tokens, add_generation_prompt=True)
        generated = self.generate(**{key: prompt[key] for key in DIALOGUE_INPUTS}, **generate_kwargs)
        reply_ids = generated[:, prompt["input_ids"].shape[1] :]
        texts = processor.decode_replies(reply_ids)
        speakers = [processor.next_speaker(dialogue) for dialogue in batch]

        # Close each reply with [EOS] [TAG] and read the usage and meme heads there.
        replies = [dict(turn, text=text) for turn, text in zip(({"speaker": s} for s in speakers), texts)]
        closed, outputs = self.run_dialogues(processor, [d + [r] for d, r in zip(batch, replies)])
        last_tag = last_per_row(closed["input_ids"] == self.config.tag_token_id)
        uses_meme = outputs.usage_logits[last_tag].argmax(-1).bool().tolist()
        predictions = outputs.meme_predictions[last_tag]
        rankings = self.retrieve_memes(predictions, candidates, top_k=None if candidates else top_k)

        chosen = [ranking.meme_ids[0] if use else None for ranking, use in zip(rankings, uses_meme)]
        emotions = self.predict_emotions(batch, replies, chosen, processor)
        results = [
            {
                "speaker": speaker,
                "text": text,
                "meme": meme,
                "emotion": emotion,
                "meme_scores": list(zip(ranking.meme_ids[:top_k], ranking.distances[:top_k])),
            }
            for speaker, text, meme, emotion, ranking in zip(speakers, texts, chosen, emotions, rankings)
        ]
        return results[0] if single else results

    def predict_emotions(
        self, batch: list[list[dict]], replies: list[dict], chosen: list[str | None], processor: Any
    ) -> list[int | str | None]:
        """Emotion of each chosen meme, read at its `[IMG]` after the reply; `None` where no meme was chosen."""
        with_meme = [index for index, meme in enumerate(chosen) if meme is not None]
        emotions: list[int | str | None] = [None] * len(batch)
        if not with_meme:
            return emotions
        dialogues = [batch[i] + [dict(replies[i], meme=chosen[i])] for i in with_meme]
        inputs, outputs = self.run_dialogues(processor, dialogues)
        last_image = last_per_row(inputs["input_ids"] == self.config.image_token_id)
        for index, emotion_id in zip(with_meme, outputs.emotion_logits[last_image].argmax(-1).tolist()):
            names = self.config.emotion_names
            emotions[index] = names[emotion_id] if names else emotion_id
        return emotions


MODGPTForMemeDialogue.register_for_auto_class("AutoModel")
MODGPTForMemeDialogue.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["MODGPTForMemeDialogue", "MODGPTPreTrainedModel", "MODGPTOutput", "MemeRetrieval"]
