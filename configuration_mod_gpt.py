"""MOD-GPT model configuration."""

import os
from dataclasses import field
from typing import Any, Literal

import timm
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, TimmWrapperConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

logger = logging.get_logger(__name__)

# CDial-GPT's Chinese vocabulary has 13088 entries; the processor adds the 7 dialogue special tokens after them.
CDIAL_GPT_VOCAB_SIZE = 13088
SPECIAL_TOKENS = ("[BOS]", "[EOS]", "[PAD]", "[speaker1]", "[speaker2]", "[IMG]", "[TAG]")
SEGMENTS = ("speaker1", "speaker2", "meme")
IGNORE_INDEX = -100  # label of positions that no loss reads (torch's cross-entropy default)
DEFAULT_MEME_ENCODER = "efficientnet_b0"
# The special tokens the decoder's own config also names.
DECODER_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# `normalize_meme_features` of configs saved before `meme_feature_normalization`.
LEGACY_NORMALIZATION = {None: "standardize", True: "rms", False: "none"}
LOSS_WEIGHTS = ("text_loss_weight", "usage_loss_weight", "meme_loss_weight", "emotion_loss_weight")


def timm_encoder_config(architecture: str) -> dict[str, Any]:
    """The `meme_encoder_config` of a timm architecture, such as `"efficientnet_b0"`."""
    return {"model_type": "timm_wrapper", "architecture": architecture}


def is_timm_hub_model(name: str) -> bool:
    """Whether a meme encoder name is a timm hub id (`"timm/efficientnet_b0.ra_in1k"`) or a local folder in its layout."""
    return "/" in name or os.path.isdir(name)


def timm_hub_encoder_config(name: str) -> dict[str, Any]:
    """
    The `meme_encoder_config` of a timm hub id or local folder in its layout (what timm's `save_for_hf` writes:
    `config.json` with `architecture` and `pretrained_cfg`, and `model.safetensors`): the architecture, its creation
    arguments, and the data config of the weights. Raises `ValueError` when `name` holds no timm model.
    """
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise ValueError("the folder has no config.json")  # transformers would read it as an empty config
    try:
        saved, _ = TimmWrapperConfig.get_config_dict(name)
    except OSError as error:
        raise ValueError(f"cannot read its config.json ({error})") from error
    architecture = saved.get("architecture") if isinstance(saved, dict) else None
    if not isinstance(architecture, str) or not timm.is_model(architecture):
        raise ValueError(
            f"its config.json names no timm architecture (`architecture`: {architecture!r}); a timm model's "
            "config.json has `architecture` and `pretrained_cfg`, as timm's `save_for_hf` writes it"
        )
    # The encoder is built without a classifier (`num_classes=0`); timm records the checkpoint's in its arguments.
    model_args = {key: value for key, value in (saved.get("model_args") or {}).items() if key != "num_classes"}
    config = {**timm_encoder_config(architecture), "pretrained_cfg": saved.get("pretrained_cfg") or {}}
    return {**config, "model_args": model_args} if model_args else config


@strict
class MODGPTConfig(PreTrainedConfig):
    r"""
    Configuration of [`MODGPTForMemeDialogue`]: a GPT-style decoder that answers a dialogue with text, decides
    whether to attach a meme, regresses the meme's visual feature for retrieval and predicts the meme's emotion.
    Like every transformers config it is a strict dataclass: fields are type-checked when set, and the `validate_*`
    methods run after `__init__` and again when the config is saved (a failure raises huggingface_hub's
    `StrictDataclassClassValidationError`, whose message names the field).

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the decoder, built through `AutoConfig` (GPT-2 by default, sized like CDial-GPT base:
            12 layers, 12 heads, hidden size 768, 513 positions). Any decoder loadable by `AutoModel` that accepts
            `inputs_embeds` and `position_ids` fits, such as GPT-2 or OpenAI-GPT (CDial-GPT) checkpoints. Its
            `bos_token_id`, `eos_token_id` and `pad_token_id` are set from this config's.
        meme_encoder_config (`dict` or `TimmWrapperConfig`, *optional*, defaults to `efficientnet_b0`):
            Configuration of the meme image encoder, a `TimmWrapperConfig` (`{"model_type": "timm_wrapper",
            "architecture": ...}`) built through `AutoConfig`; that of a timm hub model (`timm_hub_encoder_config`)
            also holds its `model_args` and `pretrained_cfg`, the data config of its weights. The encoder starts from
            random weights; trained ones come with the saved model (or are loaded into
            `model.meme_encoder.timm_model`, as train.py does from a timm hub model's). `None` builds no
            encoder: the model then works on precomputed meme features only (such as the organisers' CLIP vectors),
            and memes enter through `meme_features` and `add_memes(ids, meme_features=...)`.
        meme_encoder_name (`str`, *optional*):
            Shorthand taken by the constructor (and read back as a property): the timm architecture of
            `meme_encoder_config`, or `None` for no encoder; given, it replaces `meme_encoder_config`. Configs saved
            before `meme_encoder_config` hold it, and a `meme_encoder_checkpoint` path, which is dropped with a
            warning: the saved weights hold the encoder.
        meme_feature_size (`int`, *optional*, defaults to 1280):
            Size of a meme feature vector: the encoder's pooled output (1280 for EfficientNet-b0), or the size of
            precomputed features such as the organisers' 512-d CLIP vectors.
        meme_feature_normalization (`str`, *optional*, defaults to `"standardize"`):
            How raw meme features (the encoder's output or precomputed vectors) are mapped before the model uses
            them, as decoder input and as the target and candidates of retrieval:
            - `"standardize"`: subtract the per-dimension mean and divide by the per-dimension standard deviation
              of the meme bank (`fit_meme_feature_normalization`, kept as buffers, so memes added later are mapped
              the same way). An encoder's features share a large common component and vary along few directions
              (a randomly initialised encoder's also at a tiny scale), so a loss on raw or merely rescaled features
              is spent on what all memes share; standardised, the target is what tells memes apart, at unit scale.
            - `"rms"`: rescale every feature to an L2 norm of `sqrt(meme_feature_size)`.
            - `"none"`: raw features, as in the paper.
            Configs saved before this option existed hold `normalize_meme_features` instead (`True` means
            `"rms"`, `False` `"none"`), which the constructor still takes.
        freeze_meme_encoder (`bool`, *optional*, defaults to `True`):
            Keep the meme encoder frozen (as in the paper); features are then computed once per meme.
        num_emotions (`int`, *optional*, defaults to 52):
            Number of emotion classes predicted for a used meme.
        emotion_names (`list[str]`, *optional*):
            Names of the emotion classes, indexed by emotion id. Length must equal `num_emotions`.
        head_hidden_size (`int`, *optional*):
            Hidden size of the usage, meme and emotion MLP heads. Defaults to the decoder's hidden size.
        head_dropout (`float`, *optional*, defaults to 0.1):
            Dropout inside the heads.
        text_loss_weight, usage_loss_weight, meme_loss_weight, emotion_loss_weight (`float`, *optional*, defaults to 1.0):
            Weights of the loss parts: L = w_text·L_text + λ1·L_usage + λ2·L_meme + λ3·L_emotion.
        meme_loss (`str`, *optional*, defaults to `"l2"`):
            Loss that teaches the meme head at each `[TAG]` that attaches a meme: `"l2"`, the mean squared error
            between the predicted and the meme's (normalised) feature (the paper), or `"contrastive"`, a
            cross-entropy over the meme bank (and the batch's memes) with logits `-distance / meme_loss_temperature`
            under `retrieval_distance`, which trains the ranking itself.
        meme_loss_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the `"contrastive"` meme loss. L2 distances enter it divided by `sqrt(meme_feature_size)`
            (a root-mean-square difference per dimension), so the same temperature fits any feature size.
        retrieval_distance (`str`, *optional*, defaults to `"l2"`):
            Distance used to rank candidate memes against the predicted feature: `"l2"` (the paper) or `"cosine"`.
        meme_bank_ids (`list[str]`, *optional*):
            Ids of the memes in the model's meme bank; their features are a buffer of the model, saved with it.
        tie_word_embeddings (`bool`, *optional*):
            Whether the language modelling head shares the decoder's input embeddings. Defaults to the decoder's own
            setting (`text_config.tie_word_embeddings`: GPT-2 and OpenAI-GPT tie, Qwen2 and Llama do not).
        bos_token_id, eos_token_id, pad_token_id, speaker1_token_id, speaker2_token_id, image_token_id, tag_token_id (`int`):
            Ids of the special tokens `[BOS] [EOS] [PAD] [speaker1] [speaker2] [IMG] [TAG]`, as given by the processor.

    Example:

    ```python
    >>> from configuration_mod_gpt import MODGPTConfig
    >>> config = MODGPTConfig(text_config={"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2})
    >>> config.text_config.n_layer, config.meme_encoder_config.architecture
    (2, 'efficientnet_b0')
    ```
    """

    model_type = "mod_gpt"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="gpt2",
            init_kwargs={
                "vocab_size": CDIAL_GPT_VOCAB_SIZE + len(SPECIAL_TOKENS),
                "n_positions": 513,
                "n_embd": 768,
                "n_layer": 12,
                "n_head": 12,
            },
        ),
        "meme_encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="timm_wrapper", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    meme_encoder_config: dict | PreTrainedConfig | None = field(
        default_factory=lambda: timm_encoder_config(DEFAULT_MEME_ENCODER)
    )
    meme_feature_size: int = 1280
    meme_feature_normalization: Literal["standardize", "rms", "none"] | None = None
    freeze_meme_encoder: bool = True
    num_emotions: int = 52
    emotion_names: list[str] | None = None
    head_hidden_size: int | None = None
    head_dropout: float | int = 0.1
    text_loss_weight: float | int = 1.0
    usage_loss_weight: float | int = 1.0
    meme_loss_weight: float | int = 1.0
    emotion_loss_weight: float | int = 1.0
    meme_loss: Literal["l2", "contrastive"] = "l2"
    meme_loss_temperature: float | int = 0.1
    retrieval_distance: Literal["l2", "cosine"] = "l2"
    meme_bank_ids: list[str] | None = None
    bos_token_id: int | None = CDIAL_GPT_VOCAB_SIZE
    eos_token_id: int | None = CDIAL_GPT_VOCAB_SIZE + 1
    pad_token_id: int | None = CDIAL_GPT_VOCAB_SIZE + 2
    speaker1_token_id: int = CDIAL_GPT_VOCAB_SIZE + 3
    speaker2_token_id: int = CDIAL_GPT_VOCAB_SIZE + 4
    image_token_id: int = CDIAL_GPT_VOCAB_SIZE + 5
    tag_token_id: int = CDIAL_GPT_VOCAB_SIZE + 6
    tie_word_embeddings: bool | None = None

    def __post_init__(self, **kwargs):
        self.convert_meme_encoder_name(kwargs)
        self.convert_normalize_meme_features(kwargs.pop("normalize_meme_features", None))
        # The decoder's token ids are given before it is built, so that it never holds its defaults (GPT-2's 50256,
        # outside our vocabulary) and its own validation has nothing to warn about.
        decoder_token_ids = {name: getattr(self, name) for name in DECODER_TOKEN_IDS}
        if not isinstance(self.text_config, PreTrainedConfig):
            defaults = self.sub_configs_defaults["text_config"].init_kwargs
            self.text_config = {**(self.text_config or defaults), **decoder_token_ids}
        super().__post_init__(**kwargs)
        self.text_config.update(decoder_token_ids)  # also for a decoder config given ready-made
        if self.tie_word_embeddings is None:  # tying follows the decoder: GPT-2 ties, Qwen2 and Llama keep an lm_head
            self.tie_word_embeddings = self.text_config.tie_word_embeddings
        self.text_config.tie_word_embeddings = self.tie_word_embeddings
        if self.head_hidden_size is None:
            self.head_hidden_size = self.text_config.hidden_size
        if self.meme_bank_ids is None:
            self.meme_bank_ids = []

    def convert_meme_encoder_name(self, kwargs: dict[str, Any]) -> None:
        """Set `meme_encoder_config` from the `meme_encoder_name` shorthand, and drop a former checkpoint path."""
        checkpoint = kwargs.pop("meme_encoder_checkpoint", None)
        if checkpoint is not None:
            logger.warning(
                f"MODGPTConfig.meme_encoder_checkpoint={checkpoint!r} is no longer read: a saved model holds its "
                "encoder's weights; to start from timm weights, load them into `model.meme_encoder.timm_model`."
            )
        if "meme_encoder_name" not in kwargs:
            return
        name = kwargs.pop("meme_encoder_name")
        self.meme_encoder_config = None if name is None else timm_encoder_config(name)

    def convert_normalize_meme_features(self, legacy: bool | None) -> None:
        """Set `meme_feature_normalization` from its former boolean form where only that is given."""
        normalization = LEGACY_NORMALIZATION[legacy]
        if self.meme_feature_normalization is None:
            self.meme_feature_normalization = normalization
        elif legacy is not None and normalization != self.meme_feature_normalization:
            raise ValueError(
                f"MODGPTConfig.normalize_meme_features={legacy} (the former form of meme_feature_normalization) "
                f"contradicts meme_feature_normalization={self.meme_feature_normalization!r}; give "
                "meme_feature_normalization only."
            )

    @property
    def meme_encoder_name(self) -> str | None:
        """The timm architecture of the meme encoder, `None` for a model without one."""
        return None if self.meme_encoder_config is None else self.meme_encoder_config.architecture

    @property
    def special_token_ids(self) -> dict[str, int | None]:
        names = ("bos", "eos", "pad", "speaker1", "speaker2", "image", "tag")
        return {f"{name}_token_id": getattr(self, f"{name}_token_id") for name in names}

    def validate_special_token_ids(self) -> None:
        """Every special token is a distinct id of the decoder's vocabulary."""
        vocab_size = self.text_config.vocab_size
        for name, value in self.special_token_ids.items():
            if value is None or not 0 <= value < vocab_size:
                raise ValueError(
                    f"MODGPTConfig.{name}={value} must be an id in the decoder vocabulary [0, {vocab_size})."
                )
        if len(set(self.special_token_ids.values())) != len(self.special_token_ids):
            raise ValueError(f"MODGPTConfig special token ids must be distinct, got {self.special_token_ids}.")

    def validate_sizes(self) -> None:
        for name in ("meme_feature_size", "num_emotions", "head_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"MODGPTConfig.{name} must be a positive integer, got {getattr(self, name)}.")

    def validate_head_dropout(self) -> None:
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"MODGPTConfig.head_dropout must be in [0, 1), got {self.head_dropout}.")

    def validate_loss_weights(self) -> None:
        for name in LOSS_WEIGHTS:
            if getattr(self, name) < 0:
                raise ValueError(f"MODGPTConfig.{name} must be non-negative, got {getattr(self, name)}.")

    def validate_meme_loss_temperature(self) -> None:
        if not self.meme_loss_temperature > 0:
            raise ValueError(f"MODGPTConfig.meme_loss_temperature must be positive, got {self.meme_loss_temperature}.")

    def validate_emotion_names(self) -> None:
        if self.emotion_names is not None and len(self.emotion_names) != self.num_emotions:
            raise ValueError(
                f"MODGPTConfig.emotion_names has {len(self.emotion_names)} names but num_emotions={self.num_emotions}."
            )

    def validate_meme_bank_ids(self) -> None:
        if len(set(self.meme_bank_ids)) != len(self.meme_bank_ids):
            raise ValueError("MODGPTConfig.meme_bank_ids holds duplicate meme ids.")


MODGPTConfig.register_for_auto_class()

__all__ = ["MODGPTConfig"]
