"""MOD-GPT model configuration."""

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# CDial-GPT's Chinese vocabulary has 13088 entries; the processor adds the 7 dialogue special tokens after them.
CDIAL_GPT_VOCAB_SIZE = 13088
SPECIAL_TOKENS = ("[BOS]", "[EOS]", "[PAD]", "[speaker1]", "[speaker2]", "[IMG]", "[TAG]")
SEGMENTS = ("speaker1", "speaker2", "meme")
# `normalize_meme_features` of configs saved before `meme_feature_normalization`; unset in newer ones.
LEGACY_NORMALIZATION = {None: "standardize", True: "rms", False: "none"}


class MODGPTConfig(PreTrainedConfig):
    r"""
    Configuration of [`MODGPTForMemeDialogue`]: a GPT-style decoder that answers a dialogue with text, decides
    whether to attach a meme, regresses the meme's visual feature for retrieval and predicts the meme's emotion.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the decoder, built through `AutoConfig` (GPT-2 by default, sized like CDial-GPT base:
            12 layers, 12 heads, hidden size 768, 513 positions). Any decoder loadable by `AutoModel` that accepts
            `inputs_embeds` and `position_ids` fits, such as GPT-2 or OpenAI-GPT (CDial-GPT) checkpoints.
        meme_encoder_name (`str`, *optional*, defaults to `"efficientnet_b0"`):
            timm model that encodes meme images into feature vectors. It is built with `pretrained=False`; weights
            come from `meme_encoder_checkpoint` or from the saved model. `None` builds no encoder: the model then
            works on precomputed meme features only (such as the organisers' CLIP vectors), and memes enter through
            `meme_features` and `add_memes(ids, meme_features=...)`.
        meme_encoder_checkpoint (`str`, *optional*):
            Local file (or hub file id `"hf-hub:..."`) of timm weights for the meme encoder, loaded when the model is
            first built from this config.
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
            Configs saved before this option existed hold `normalize_meme_features` instead and keep its meaning.
        normalize_meme_features (`bool`, *optional*):
            Former form of `meme_feature_normalization`: `True` means `"rms"`, `False` means `"none"`. Read only when
            `meme_feature_normalization` is not given.
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
        bos_token_id, eos_token_id, pad_token_id, speaker1_token_id, speaker2_token_id, image_token_id, tag_token_id (`int`):
            Ids of the special tokens `[BOS] [EOS] [PAD] [speaker1] [speaker2] [IMG] [TAG]`, as given by the processor.

    Example:

    ```python
    >>> from configuration_mod_gpt import MODGPTConfig
    >>> config = MODGPTConfig(text_config={"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2})
    >>> config.text_config.n_layer
    2
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
                "bos_token_id": CDIAL_GPT_VOCAB_SIZE,
                "eos_token_id": CDIAL_GPT_VOCAB_SIZE + 1,
            },
        )
    }

    text_config: dict | PreTrainedConfig | None = None
    meme_encoder_name: str | None = "efficientnet_b0"
    meme_encoder_checkpoint: str | None = None
    meme_feature_size: int = 1280
    meme_feature_normalization: Literal["standardize", "rms", "none"] | None = None
    normalize_meme_features: bool | None = None
    freeze_meme_encoder: bool = True
    num_emotions: int = 52
    emotion_names: list[str] | None = None
    head_hidden_size: int | None = None
    head_dropout: float = 0.1
    text_loss_weight: float = 1.0
    usage_loss_weight: float = 1.0
    meme_loss_weight: float = 1.0
    emotion_loss_weight: float = 1.0
    meme_loss: Literal["l2", "contrastive"] = "l2"
    meme_loss_temperature: float = 0.1
    retrieval_distance: Literal["l2", "cosine"] = "l2"
    meme_bank_ids: list[str] | None = None
    bos_token_id: int | None = CDIAL_GPT_VOCAB_SIZE
    eos_token_id: int | None = CDIAL_GPT_VOCAB_SIZE + 1
    pad_token_id: int | None = CDIAL_GPT_VOCAB_SIZE + 2
    speaker1_token_id: int = CDIAL_GPT_VOCAB_SIZE + 3
    speaker2_token_id: int = CDIAL_GPT_VOCAB_SIZE + 4
    image_token_id: int = CDIAL_GPT_VOCAB_SIZE + 5
    tag_token_id: int = CDIAL_GPT_VOCAB_SIZE + 6
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.head_hidden_size is None:
            self.head_hidden_size = self.text_config.hidden_size
        if self.meme_bank_ids is None:
            self.meme_bank_ids = []
        self.resolve_meme_feature_normalization()
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(self.text_config, name, getattr(self, name))
        self.check_consistency()

    def resolve_meme_feature_normalization(self) -> None:
        """Set `meme_feature_normalization` from its former boolean form where only that is given, then drop it."""
        legacy = LEGACY_NORMALIZATION[self.normalize_meme_features]
        if self.meme_feature_normalization is None:
            self.meme_feature_normalization = legacy
        elif self.normalize_meme_features is not None and legacy != self.meme_feature_normalization:
            raise ValueError(
                f"MODGPTConfig.normalize_meme_features={self.normalize_meme_features} (the former form of "
                f"meme_feature_normalization) contradicts meme_feature_normalization="
                f"{self.meme_feature_normalization!r}; give meme_feature_normalization only."
            )
        self.normalize_meme_features = None

    @property
    def special_token_ids(self) -> dict[str, int | None]:
        return {
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "speaker1_token_id": self.speaker1_token_id,
            "speaker2_token_id": self.speaker2_token_id,
            "image_token_id": self.image_token_id,
            "tag_token_id": self.tag_token_id,
        }

    def check_consistency(self) -> None:
        """Raise a `ValueError` naming the first field whose value does not fit the others."""
        vocab_size = self.text_config.vocab_size
        for name, value in self.special_token_ids.items():
            if value is None or not 0 <= value < vocab_size:
                raise ValueError(
                    f"MODGPTConfig.{name}={value} must be an id in the decoder vocabulary [0, {vocab_size})."
                )
        ids = [value for value in self.special_token_ids.values()]
        if len(set(ids)) != len(ids):
            raise ValueError(f"MODGPTConfig special token ids must be distinct, got {self.special_token_ids}.")
        for name in ("meme_feature_size", "num_emotions", "head_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"MODGPTConfig.{name} must be a positive integer, got {getattr(self, name)}.")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"MODGPTConfig.head_dropout must be in [0, 1), got {self.head_dropout}.")
        for name in ("text_loss_weight", "usage_loss_weight", "meme_loss_weight", "emotion_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"MODGPTConfig.{name} must be non-negative, got {getattr(self, name)}.")
        if self.meme_feature_normalization not in ("standardize", "rms", "none"):
            raise ValueError(
                "MODGPTConfig.meme_feature_normalization must be 'standardize', 'rms' or 'none', got "
                f"{self.meme_feature_normalization!r}."
            )
        if self.meme_loss not in ("l2", "contrastive"):
            raise ValueError(f"MODGPTConfig.meme_loss must be 'l2' or 'contrastive', got {self.meme_loss!r}.")
        if not self.meme_loss_temperature > 0:
            raise ValueError(f"MODGPTConfig.meme_loss_temperature must be positive, got {self.meme_loss_temperature}.")
        if self.meme_encoder_name is None and self.meme_encoder_checkpoint is not None:
            raise ValueError(
                f"MODGPTConfig.meme_encoder_checkpoint={self.meme_encoder_checkpoint!r} needs a meme_encoder_name; "
                "with meme_encoder_name=None the model has no image encoder."
            )
        if self.retrieval_distance not in ("l2", "cosine"):
            raise ValueError(
                f"MODGPTConfig.retrieval_distance must be 'l2' or 'cosine', got {self.retrieval_distance!r}."
            )
        if self.emotion_names is not None and len(self.emotion_names) != self.num_emotions:
            raise ValueError(
                f"MODGPTConfig.emotion_names has {len(self.emotion_names)} names but num_emotions={self.num_emotions}."
            )
        if len(set(self.meme_bank_ids)) != len(self.meme_bank_ids):
            raise ValueError("MODGPTConfig.meme_bank_ids holds duplicate meme ids.")


MODGPTConfig.register_for_auto_class()

__all__ = ["MODGPTConfig"]
