"""Processor for MOD-GPT: tokenizer, meme image processor, and the one-sequence-per-dialogue encoding."""

import functools
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, takewhile
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, BatchFeature, BertTokenizer, PreTrainedTokenizerBase, ProcessorMixin
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.auto.tokenization_auto import get_tokenizer_config, tokenizer_class_from_name

try:
    from .configuration_mod_gpt import (
        IGNORE_INDEX,
        SEGMENTS,
        SPECIAL_TOKENS,
        is_timm_hub_model,
        timm_hub_encoder_config,
    )
except ImportError:
    from configuration_mod_gpt import (
        IGNORE_INDEX,
        SEGMENTS,
        SPECIAL_TOKENS,
        is_timm_hub_model,
        timm_hub_encoder_config,
    )


SPEAKERS = ("speaker1", "speaker2")
DIALOGUE_SPECIAL_TOKENS = {
    "bos_token": "[BOS]",
    "eos_token": "[EOS]",
    "pad_token": "[PAD]",
    "extra_special_tokens": ["[speaker1]", "[speaker2]", "[IMG]", "[TAG]"],
}
LABEL_TURNS = ("all", "last", "none")
LABEL_KEYS = ("labels", "usage_labels", "emotion_labels")
PADDING_SIDES = ("right", "left")
TURN_FIELDS = ("speaker", "text", "meme", "emotion")
# A bound on a turn's text checked before tokenising it, so that no input costs more than a whole encoding could hold.
MAX_CHARACTERS_PER_TOKEN = 8
PROCESSOR_SETTINGS = ("max_length", "emotion_names")  # what processor_config.json holds besides the sub-processors
CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"  # punctuation, ideographs, full-width forms
# A space after a CJK character and before a non-space, or after any character and before a CJK character.
SPACE_BESIDE_CJK = re.compile(f"(?<=[{CJK}]) (?=[^ ])|(?<=.) (?=[{CJK}])", re.DOTALL)


@functools.lru_cache(maxsize=16)
def timm_eval_transform(**data_config: Any):
    """timm's evaluation transform for a data config (of hashable values), built once per distinct config."""
    return timm.data.create_transform(**data_config, is_training=False)


class MemeImageProcessor(BaseImageProcessor):
    """
    Turns meme images into the `pixel_values` of a timm encoder, with timm's own evaluation transform (resize,
    centre crop, normalise) built from a timm data config. Build one for an encoder with `from_timm_model`.

    An image is checked before it is decoded or transformed: it must have pixels, at most `max_pixels` of them
    (a small compressed file can hold a huge image), and sides no more than `max_aspect_ratio` to one (the transform
    scales the short side to the input size, so a 20000 x 1 image would become 5,120,000 x 256).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        input_size: Sequence[int] = (3, 224, 224),
        interpolation: str = "bicubic",
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        crop_pct: float = 0.875,
        crop_mode: str = "center",
        max_pixels: int = 4096 * 4096,
        max_aspect_ratio: float = 16.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.max_pixels = max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.input_size = list(input_size)
        self.interpolation = interpolation
        self.mean = list(mean)
        self.std = list(std)
        self.crop_pct = crop_pct
        self.crop_mode = crop_mode

    @classmethod
    def from_timm_model(cls, model_name: str) -> "MemeImageProcessor":
        """
        The data config of a timm encoder: the `pretrained_cfg` of a timm hub id or local folder in its layout
        (`timm/efficientnet_b0.ra_in1k`), or what timm's registry declares for an architecture (`efficientnet_b0`).
        """
        if is_timm_hub_model(model_name):
            pretrained_cfg = timm_hub_encoder_config(model_name)["pretrained_cfg"]
        else:
            pretrained_cfg = timm.models.get_pretrained_cfg(model_name).to_dict()
        return cls(**timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg))

    @property
    def transform(self):
        # Looked up from the settings on every call rather than stored, so the saved config, pickling and settings
        # changed after construction never meet a stale or unserialisable transform.
        return timm_eval_transform(
            input_size=tuple(self.input_size),
            interpolation=self.interpolation,
            mean=tuple(self.mean),
            std=tuple(self.std),
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
        )

    def check_image(self, image: Image.Image) -> None:
        """Refuse an image without pixels, too large, or too elongated (see above), from its size alone."""
        width, height = image.size
        if width == 0 or height == 0:
            raise ValueError(f"the image is {width} x {height} pixels: it has none.")
        if width * height > self.max_pixels:
            raise ValueError(
                f"the image is {width} x {height} pixels, more than the {self.max_pixels:,} a meme may have."
            )
        if max(width, height) / min(width, height) > self.max_aspect_ratio:
            raise ValueError(
                f"the image is {width} x {height} pixels, longer than {self.max_aspect_ratio:g} to 1 (a meme's sides "
                "may be at most that)."
            )

    def preprocess(self, images: Image.Image | Iterable[Image.Image], return_tensors: str = "pt") -> BatchFeature:
        images = image_list(images)
        for index, image in enumerate(images):
            try:
                self.check_image(image)
            except ValueError as error:
                raise ValueError(f"meme image {index}: {error}") from None
        transform = self.transform
        pixel_values = torch.stack([transform(image.convert("RGB")) for image in images])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)


class Turn(NamedTuple):
    """A checked turn: its speaker (without brackets), text, meme id, and emotion label (`IGNORE_INDEX` if none)."""

    speaker: str
    text: str | None
    meme: str | None
    emotion: int


class MODProcessor(ProcessorMixin):
    r"""
    Encodes dialogues for [`MODGPTForMemeDialogue`], one sequence per dialogue. A dialogue is a list of turns
    `{"speaker": "speaker1" | "speaker2", "text": str | None, "meme": str | None, "emotion": int | str | None}`;
    each turn becomes `[speakerK] [BOS] text [EOS] [TAG]`, followed by `[IMG]` when it holds a meme.

    Args:
        image_processor ([`MemeImageProcessor`]): turns meme images into the encoder's `pixel_values`.
        tokenizer ([`PreTrainedTokenizerBase`]): the decoder's tokenizer (a `BertTokenizer` as CDial-GPT's, character
            level for Chinese and WordPiece for other text, unless the decoder brings another), holding the special
            tokens `[BOS] [EOS] [PAD] [speaker1] [speaker2] [IMG] [TAG]`.
        max_length (`int`, *optional*, defaults to 500): longest encoding; older turns are dropped whole to fit, or,
            for training (`encode_windows`), a longer dialogue is cut into windows of whole turns.
        emotion_names (`list[str]`, *optional*): emotion names by id, so turns may give `emotion` as a name.
    """

    def __init__(
        self,
        image_processor: MemeImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_length: int = 500,
        emotion_names: list[str] | None = None,
        **kwargs: Any,
    ):
        self.max_length = max_length
        self.emotion_names = list(emotion_names) if emotion_names is not None else None
        super().__init__(image_processor, tokenizer, **kwargs)
        missing = [token for token in SPECIAL_TOKENS if token not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"The tokenizer lacks the dialogue special tokens {missing}: build it with MODProcessor.")
        self.token_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}

    @classmethod
    def from_corpus(
        cls,
        texts: Iterable[str],
        vocab_size: int = 13088,
        min_frequency: int = 1,
        meme_encoder_name: str = "efficientnet_b0",
        **kwargs: Any,
    ) -> "MODProcessor":
        """
        Build the vocabulary from `texts` offline with the `tokenizers` library: BERT normalisation and
        pre-tokenisation, so every Chinese character is its own token (as in CDial-GPT) and other text is split
        into WordPiece units.
        """
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        )
        corpus = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        corpus.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
        corpus.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        corpus.train_from_iterator(texts, trainer=trainer)
        return cls.from_tokenizer(BertTokenizer(vocab=corpus.get_vocab()), meme_encoder_name, **kwargs)

    @classmethod
    def from_vocab(
        cls, pretrained_name_or_path: str, meme_encoder_name: str = "efficientnet_b0", **kwargs: Any
    ) -> "MODProcessor":
        """
        Use an existing BERT-style vocabulary (a folder or hub repo with `vocab.txt`, e.g. CDial-GPT's): its ids are
        kept, tokens it has (`[PAD]`, `[speaker1]`, ...) are reused, and only the missing dialogue tokens are appended.
        """
        # BertTokenizer rather than AutoTokenizer: CDial-GPT's folders carry an OpenAI-GPT config.json.
        tokenizer = BertTokenizer.from_pretrained(pretrained_name_or_path)
        if tokenizer.mask_token_id >= tokenizer.vocab_size:  # CDial-GPT's vocabulary has none: add no unused token
            tokenizer = BertTokenizer.from_pretrained(pretrained_name_or_path, mask_token=None)
        return cls.from_tokenizer(tokenizer, meme_encoder_name, **kwargs)

    @classmethod
    def from_text_backbone(
        cls, pretrained_name_or_path: str, meme_encoder_name: str = "efficientnet_b0", **kwargs: Any
    ) -> "MODProcessor":
        """
        The tokenizer of a pretrained decoder (as `MODGPTForMemeDialogue.from_text_backbone` takes it), with the
        dialogue special tokens added: a `vocab.txt` (CDial-GPT) through `from_vocab`, any other tokenizer (Qwen2's
        byte-level BPE `tokenizer.json`, ...) through `AutoTokenizer`, its ids kept.
        """
        if has_vocab_file(pretrained_name_or_path):
            return cls.from_vocab(pretrained_name_or_path, meme_encoder_name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_name_or_path, trust_remote_code=False)
        return cls.from_tokenizer(tokenizer, meme_encoder_name, **kwargs)

    @classmethod
    def from_tokenizer(
        cls, tokenizer: PreTrainedTokenizerBase, meme_encoder_name: str = "efficientnet_b0", **kwargs: Any
    ) -> "MODProcessor":
        """Add the dialogue special tokens (appended after the vocabulary) and pair it with the meme encoder's images."""
        tokenizer.add_special_tokens(DIALOGUE_SPECIAL_TOKENS)
        return cls(MemeImageProcessor.from_timm_model(meme_encoder_name), tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, **kwargs: Any) -> "MODProcessor":
        """
        Load a saved processor with this module's own classes. The Auto classes would import the image processor's
        code saved in the folder (and ask on a terminal whether to): loading a MODProcessor never runs code saved
        with it, whatever `trust_remote_code` says. Hub arguments (`revision`, `cache_dir`, `token`, ...) pass through.
        """
        kwargs.pop("trust_remote_code", None)
        settings, _ = cls.get_processor_dict(pretrained_model_name_or_path, **kwargs)
        return cls(
            MemeImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs),
            load_saved_tokenizer(pretrained_model_name_or_path, **kwargs),
            **{name: settings[name] for name in PROCESSOR_SETTINGS if name in settings},
        )

    @property
    def special_token_ids(self) -> dict[str, int]:
        """The special token ids under the names `MODGPTConfig` takes."""
        names = ("bos", "eos", "pad", "speaker1", "speaker2", "image", "tag")
        return {f"{name}_token_id": self.token_ids[token] for name, token in zip(names, SPECIAL_TOKENS)}

    def __call__(
        self,
        dialogues: Sequence[Mapping] | Sequence[Sequence[Mapping]],
        add_generation_prompt: bool = False,
        label_turns: str | None = None,
        padding_side: str = "right",
        max_length: int | None = None,
        meme_images: Mapping[str, Image.Image] | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """
        Encode one dialogue or a batch into padded tensors: `input_ids`, `attention_mask`, `token_type_ids`, and
        `meme_ids` (the memes at the `[IMG]` tokens, in reading order), the memes of the meme bank that
        `model(**inputs)` looks up; with `label_turns` (`"all"`, `"last"` or `"none"`, see `encode_turns`) also the
        `labels`, `usage_labels` and `emotion_labels` that training and scoring want. With `meme_images` (meme id to
        image) the memes come as images instead: `pixel_values` in place of `meme_ids`, as the model takes one of the
        two.
        """
        if return_tensors != "pt":
            raise ValueError(f"MODProcessor returns PyTorch tensors only, got return_tensors={return_tensors!r}.")
        batch, _ = self.dialogue_batch(dialogues)
        encodings = [
            self.encode_dialogue(dialogue, index, add_generation_prompt, label_turns or "none", max_length)
            for index, dialogue in enumerate(batch)
        ]
        inputs = self.pad(encodings, padding_side)
        if label_turns is None:
            for key in LABEL_KEYS:
                del inputs[key]
        if meme_images is not None and inputs["meme_ids"]:
            missing = sorted(set(inputs["meme_ids"]) - set(meme_images))
            if missing:
                raise ValueError(f"meme_images lacks the images of memes {missing}.")
            images = [meme_images[meme] for meme in inputs.pop("meme_ids")]
            inputs["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return inputs

    # Checking dialogues ------------------------------------------------------------------------------------------

    @staticmethod
    def dialogue_batch(dialogues: Any) -> tuple[list, bool]:
        """
        `dialogues` as a batch, and whether it was one dialogue: a list whose first item is a turn (a dict) is one
        dialogue, any other non-empty list a batch of dialogues (each checked when it is encoded).
        """
        if not is_nonempty_list(dialogues):
            raise ValueError(
                "Expected a dialogue (a non-empty list of turns) or a batch of dialogues (a non-empty list of them), "
                f"got {describe(dialogues)}."
            )
        single = isinstance(dialogues[0], Mapping)
        return ([dialogues] if single else list(dialogues)), single

    def check_dialogue(
        self, dialogue: Sequence[Mapping], dialogue_index: int = 0, known_memes: Iterable[str] | None = None
    ) -> list[Turn]:
        """
        The turns of `dialogue`, each checked by `check_turn`. A `ValueError` names the dialogue, turn and field of the
        first thing that is not a valid dialogue or, with `known_memes`, of the first meme not among them.
        """
        if not is_nonempty_list(dialogue):
            raise ValueError(
                f"dialogue {dialogue_index}: a dialogue must be a non-empty list of turns, got {describe(dialogue)}."
            )
        known = set(known_memes) if known_memes is not None else None
        turns = []
        for turn_index, turn in enumerate(dialogue):
            where = f"dialogue {dialogue_index}, turn {turn_index}"
            checked = self.check_turn(turn, where)
            if known is not None and checked.meme is not None and checked.meme not in known:
                raise ValueError(f"{where}: 'meme' {checked.meme!r} is unknown (not in the meme bank).")
            turns.append(checked)
        return turns

    def check_turn(self, turn: Mapping, where: str) -> Turn:
        """
        The turn as a `Turn`, once checked against the turn schema: only the fields `speaker` ("speaker1" or
        "speaker2"), `text` (a string or None), `meme` (a meme id string or None) and `emotion` (None, an emotion id
        or name; only with a meme), and at least one of `text` and `meme`. A `ValueError` names the field that is not.
        """
        check_is_turn(turn, where)
        unknown = [key for key in turn if key not in TURN_FIELDS]
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; a turn has the fields {list(TURN_FIELDS)}.")
        speaker = self.speaker_of(turn, where)
        text, meme, emotion = turn.get("text"), turn.get("meme"), turn.get("emotion")
        if text is not None:
            self.check_text(text, where)
        if meme is not None and not (isinstance(meme, str) and meme):
            raise ValueError(f"{where}: 'meme' must be a meme id (a non-empty string) or None, got {describe(meme)}.")
        if text is None and meme is None:
            raise ValueError(f"{where}: a turn needs 'text' or 'meme', both are missing.")
        if emotion is not None and meme is None:
            raise ValueError(f"{where}: 'emotion' is given for a turn without a meme, got {describe(emotion)}.")
        return Turn(speaker, text, meme, self.emotion_id(emotion, where))

    def check_text(self, text: Any, where: str) -> None:
        """A turn's text: a string of valid Unicode, refused before tokenising when it is longer than a whole
        encoding could hold (`max_length` tokens of `MAX_CHARACTERS_PER_TOKEN` characters)."""
        if not isinstance(text, str):
            raise ValueError(f"{where}: 'text' must be a string or None, got {describe(text)}.")
        limit = self.max_length * MAX_CHARACTERS_PER_TOKEN
        if len(text) > limit:
            raise ValueError(
                f"{where}: 'text' has {len(text):,} characters, more than the {limit:,} a turn may have "
                f"({MAX_CHARACTERS_PER_TOKEN} per token of max_length={self.max_length})."
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{where}: 'text' is not valid Unicode text (character {error.start} is a lone surrogate)."
            ) from None

    def speaker_of(self, turn: Mapping, where: str) -> str:
        """The turn's speaker, "speaker1" or "speaker2" (written with or without brackets)."""
        check_is_turn(turn, where)
        speaker = turn.get("speaker")
        speaker = speaker.strip("[]") if isinstance(speaker, str) else None
        if speaker not in SPEAKERS:
            raise ValueError(f"{where}: 'speaker' must be 'speaker1' or 'speaker2', got {turn.get('speaker')!r}.")
        return speaker

    def emotion_id(self, emotion: int | str | None, where: str) -> int:
        """The label of a turn's `emotion`: its id, from an integer id or a name; `IGNORE_INDEX` for None."""
        if emotion is None:
            return IGNORE_INDEX
        if isinstance(emotion, str):
            if self.emotion_names is None or emotion not in self.emotion_names:
                known = (
                    f"one of {self.emotion_names}" if self.emotion_names else "this processor has no names: give an id"
                )
                raise ValueError(f"{where}: 'emotion' {emotion!r} is not a known emotion name ({known}).")
            return self.emotion_names.index(emotion)
        if isinstance(emotion, bool) or not isinstance(emotion, numbers.Integral):
            raise ValueError(f"{where}: 'emotion' must be an integer id, a name or None, got {describe(emotion)}.")
        if emotion < 0 or (self.emotion_names is not None and emotion >= len(self.emotion_names)):
            raise ValueError(f"{where}: 'emotion' id {emotion} is out of range.")
        return int(emotion)

    def next_speaker(self, dialogue: list[Mapping]) -> str:
        """The speaker who answers the dialogue: the one who did not speak last."""
        last = self.speaker_of(dialogue[-1], "last turn")
        return SPEAKERS[1 - SPEAKERS.index(last)]

    @staticmethod
    def check_turn_lengths(
        lengths: list[int], max_length: int, dialogue_index: int, first_turn: int = 0, what: str = "its special tokens"
    ) -> None:
        """Raise a `ValueError` naming the first turn whose encoding alone is longer than `max_length`."""
        for turn_index, length in enumerate(lengths, start=first_turn):
            if length > max_length:
                raise ValueError(
                    f"dialogue {dialogue_index}, turn {turn_index}: 'text' encodes to {length} tokens with {what}, "
                    f"more than max_length={max_length}."
                )

    # Encoding -----------------------------------------------------------------------------------------------------

    def encode_turns(self, dialogue: Sequence[Mapping], dialogue_index: int, label_turns: str) -> list[dict]:
        """
        Each turn of `dialogue` checked and encoded by `encode_turn`: `label_turns="all"` labels every turn from the
        second on (the paper's choice) and the first turn's meme emotion (as the organisers' emotion reader, which
        makes an instance of every turn with an emotion), `"last"` only the last turn (the per-response view),
        `"none"` none.
        """
        if label_turns not in LABEL_TURNS:
            raise ValueError(f"label_turns must be one of {LABEL_TURNS}, got {label_turns!r}.")
        turns = self.check_dialogue(dialogue, dialogue_index)
        # Text is text: a special-token string typed in it ("[EOS]") is encoded as characters, never as a control token.
        texts = [turn.text or "" for turn in turns]
        texts = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        labelled = {"all": range(1, len(turns)), "last": [len(turns) - 1], "none": []}[label_turns]
        unlabelled_keeps = ("emotion_labels",) if label_turns == "all" else ()
        return [
            self.encode_turn(turn, ids, LABEL_KEYS if index in labelled else unlabelled_keeps)
            for index, (turn, ids) in enumerate(zip(turns, texts))
        ]

    def encode_turn(self, turn: Turn, text_ids: list[int], label_keys: Sequence[str] = LABEL_KEYS) -> dict[str, list]:
        """
        `[speakerK] [BOS] text [EOS] [TAG]`, and `[IMG]` after a meme, with segment ids, and the labels of
        `label_keys`: the text and `[EOS]` as text labels, the usage label (meme or not) at `[TAG]`, the emotion label
        at `[IMG]`.
        """
        ids, ignore = self.token_ids, [IGNORE_INDEX]
        utterance = {
            "input_ids": [ids[f"[{turn.speaker}]"], ids["[BOS]"], *text_ids, ids["[EOS]"], ids["[TAG]"]],
            "token_type_ids": [SEGMENTS.index(turn.speaker)] * (len(text_ids) + 4),
            "labels": ignore * 2 + text_ids + [ids["[EOS]"]] + ignore,
            "usage_labels": ignore * (len(text_ids) + 3) + [int(turn.meme is not None)],
            "emotion_labels": ignore * (len(text_ids) + 4),
            "meme_ids": [],
        }
        image = {
            "input_ids": [ids["[IMG]"]],
            "token_type_ids": [SEGMENTS.index("meme")],
            "labels": ignore,
            "usage_labels": ignore,
            "emotion_labels": [turn.emotion],
            "meme_ids": [turn.meme],
        }
        encoding = join_turns([utterance, image] if turn.meme is not None else [utterance])
        return without_labels(encoding, keep=label_keys)

    def encode_dialogue(
        self,
        dialogue: Sequence[Mapping],
        dialogue_index: int = 0,
        add_generation_prompt: bool = False,
        label_turns: str = "all",
        max_length: int | None = None,
    ) -> dict[str, list]:
        """
        Encode one dialogue as a single sequence, its turns labelled as `label_turns` says (see `encode_turns`).
        `add_generation_prompt` appends `[speakerK] [BOS]` for the speaker who answers next. Whole old turns are
        dropped from the left until the encoding fits `max_length`; the last turn (with the generation prompt) is
        always kept, and a `ValueError` names it when it alone does not fit.
        """
        max_length = max_length or self.max_length
        turns = self.encode_turns(dialogue, dialogue_index, label_turns)
        what = "its special tokens"
        if add_generation_prompt:
            turns[-1] = join_turns([turns[-1], self.generation_prompt(dialogue)])
            what += " and the reply prompt"
        lengths = [len(turn["input_ids"]) for turn in turns]
        self.check_turn_lengths(lengths[-1:], max_length, dialogue_index, first_turn=len(turns) - 1, what=what)
        kept = longest_run_that_fits(lengths[::-1], max_length)
        return join_turns(turns[len(turns) - kept :])

    def encode_windows(
        self, dialogue: Sequence[Mapping], dialogue_index: int = 0, max_length: int | None = None
    ) -> list[dict[str, list]]:
        """
        Encode one dialogue for training as windows of whole turns that each fit `max_length` (see `window_spans`),
        together labelling every turn from the second on exactly once: each response is learned once, with as much
        history as fits. A dialogue that fits is one window, `encode_dialogue`'s own encoding.
        """
        max_length = max_length or self.max_length
        turns = self.encode_turns(dialogue, dialogue_index, "all")
        lengths = [len(turn["input_ids"]) for turn in turns]
        self.check_turn_lengths(lengths, max_length, dialogue_index)
        windows = [
            join_turns([without_labels(turn) for turn in turns[context_start:start]] + turns[start:end])
            for context_start, start, end in window_spans(lengths, max_length)
        ]
        # A window of the first turn alone labels at most its meme's emotion; without one it is only context.
        return [window for window in windows if labels_anything(window)] or windows[:1]

    def generation_prompt(self, dialogue: Sequence[Mapping]) -> dict[str, list]:
        """`[speakerK] [BOS]` for the speaker who answers `dialogue` next, unlabelled."""
        speaker = self.next_speaker(dialogue)
        prompt = {
            "input_ids": [self.token_ids[f"[{speaker}]"], self.token_ids["[BOS]"]],
            "token_type_ids": [SEGMENTS.index(speaker)] * 2,
            "meme_ids": [],
        }
        return without_labels(prompt)

    def pad(self, encodings: Sequence[Mapping[str, list]], padding_side: str = "right") -> BatchFeature:
        """Pad encoded dialogues into a batch of tensors; `meme_ids` stays a flat list in reading order."""
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}.")
        model_inputs = [{key: encoding[key] for key in ("input_ids", "token_type_ids")} for encoding in encodings]
        padded = self.tokenizer.pad(model_inputs, padding_side=padding_side)
        batch = BatchFeature({key: torch.tensor(rows, dtype=torch.long) for key, rows in padded.items()})
        for key in LABEL_KEYS:
            batch[key] = pad_labels([encoding[key] for encoding in encodings], padding_side)
        batch["meme_ids"] = [meme for encoding in encodings for meme in encoding["meme_ids"]]
        return batch

    # Decoding -----------------------------------------------------------------------------------------------------

    def decode_replies(self, reply_ids: torch.LongTensor) -> list[str]:
        """Text of generated replies: the tokens before the first `[EOS]`, joined without spaces between CJK."""
        before_eos = (reply_ids == self.token_ids["[EOS]"]).cumsum(dim=1) == 0
        return [self.decode_text(row[keep].tolist()) for row, keep in zip(reply_ids, before_eos)]

    def decode_text(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids`, special tokens left out, without the spaces WordPiece puts between CJK characters."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return join_cjk(text)


def image_list(images: Any) -> list[Image.Image]:
    """`images`, one PIL image or an iterable of them, as a non-empty list; a `ValueError` names anything else."""
    if isinstance(images, Image.Image):
        return [images]
    listed = list(images) if isinstance(images, Iterable) and not isinstance(images, (str, bytes)) else []
    if not listed:
        raise ValueError(f"Expected a PIL image or a non-empty list of them, got {describe(images)}.")
    for index, image in enumerate(listed):
        if not isinstance(image, Image.Image):
            raise ValueError(f"image {index} must be a PIL image, got {describe(image)}.")
    return listed


def is_nonempty_list(value: Any) -> bool:
    """A non-empty sequence that is neither a string nor a mapping: the shape of a dialogue and of a batch."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 0


def describe(value: Any) -> str:
    """A value's type and a short repr, for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def check_is_turn(turn: Any, where: str) -> None:
    if not isinstance(turn, Mapping):
        raise ValueError(f"{where}: a turn must be a dict, got {describe(turn)}.")


def load_saved_tokenizer(pretrained_model_name_or_path: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """
    The tokenizer saved with a processor, of the transformers class its `tokenizer_config.json` names. Unlike
    `AutoTokenizer`, this reads no model config (a MOD-GPT folder's is not the tokenizer's business) and no code.
    """
    name = get_tokenizer_config(pretrained_model_name_or_path, **kwargs).get("tokenizer_class")
    tokenizer_class = tokenizer_class_from_name(name) if name else None
    if tokenizer_class is None:
        raise ValueError(
            f"{pretrained_model_name_or_path!r}: tokenizer_config.json names no tokenizer class of transformers "
            f"(tokenizer_class: {name!r})."
        )
    return tokenizer_class.from_pretrained(pretrained_model_name_or_path, **kwargs)


def has_vocab_file(pretrained_name_or_path: str) -> bool:
    """Whether a local folder or hub repo holds a `vocab.txt` (hub repos through the local cache when offline)."""
    if Path(pretrained_name_or_path).is_dir():
        return (Path(pretrained_name_or_path) / "vocab.txt").is_file()
    try:
        hf_hub_download(pretrained_name_or_path, "vocab.txt")
    except EntryNotFoundError:
        return False
    return True


def join_turns(turns: Sequence[Mapping[str, list]]) -> dict[str, list]:
    """Encoded turns concatenated into one sequence."""
    return {key: [item for turn in turns for item in turn[key]] for key in turns[0]}


def without_labels(turn: Mapping[str, list], keep: Sequence[str] = ()) -> dict[str, list]:
    """An encoded turn as unlabelled context: its text, usage and emotion labels ignored, but those of `keep`."""
    return dict(turn, **{key: [IGNORE_INDEX] * len(turn["input_ids"]) for key in LABEL_KEYS if key not in keep})


def labels_anything(encoding: Mapping[str, list]) -> bool:
    return any(label != IGNORE_INDEX for key in LABEL_KEYS for label in encoding[key])


def pad_labels(rows: Sequence[list[int]], padding_side: str) -> torch.Tensor:
    """Label rows padded with `IGNORE_INDEX` to the longest, as one tensor."""
    longest = max(len(row) for row in rows)
    padding = [[IGNORE_INDEX] * (longest - len(row)) for row in rows]
    if padding_side == "left":
        return torch.tensor([fill + row for fill, row in zip(padding, rows)], dtype=torch.long)
    return torch.tensor([row + fill for fill, row in zip(padding, rows)], dtype=torch.long)


def longest_run_that_fits(lengths: Sequence[int], budget: int) -> int:
    """How many of `lengths`, taken from the front, fit together in `budget`."""
    fitting = takewhile(lambda total: total <= budget, accumulate(lengths))
    return sum(1 for _ in fitting)


def window_spans(lengths: Sequence[int], max_length: int) -> list[tuple[int, int, int]]:
    """
    `(context_start, start, end)` of the training windows over turns of these `lengths`, each window the turns
    `context_start:end`, of which `start:end` are new (labelled) and the ones before them context. The first window is
    the longest prefix that fits `max_length`; each later one takes the next new turns, filling at most half of
    `max_length` (always at least one turn), and puts before them the longest run of immediately preceding turns that
    fits.
    """
    spans, start = [], 0
    while start < len(lengths):
        budget = max_length if start == 0 else max_length // 2
        end = start + max(1, longest_run_that_fits(lengths[start:], budget))
        room = max_length - sum(lengths[start:end])
        spans.append((start - longest_run_that_fits(lengths[:start][::-1], room), start, end))
        start = end
    return spans


def join_cjk(text: str) -> str:
    """Remove the spaces WordPiece decoding puts beside Chinese characters, keeping those between other words."""
    return SPACE_BESIDE_CJK.sub("", text)


MemeImageProcessor.register_for_auto_class("AutoImageProcessor")
MODProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["MODProcessor", "MemeImageProcessor"]
