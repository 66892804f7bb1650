"""Processor for MOD-GPT: tokenizer, meme image processor, and the one-sequence-per-dialogue encoding."""

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import timm
import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import BatchFeature, BertTokenizer, ProcessorMixin
from transformers.image_processing_utils import BaseImageProcessor

try:
    from .configuration_mod_gpt import SEGMENTS, SPECIAL_TOKENS
except ImportError:
    from configuration_mod_gpt import SEGMENTS, SPECIAL_TOKENS


IGNORE_INDEX = -100
SPEAKERS = ("speaker1", "speaker2")
DIALOGUE_SPECIAL_TOKENS = {
    "bos_token": "[BOS]",
    "eos_token": "[EOS]",
    "pad_token": "[PAD]",
    "extra_special_tokens": ["[speaker1]", "[speaker2]", "[IMG]", "[TAG]"],
}
LABEL_TURNS = ("all", "last", "none")
PADDING_SIDES = ("right", "left")
TURN_FIELDS = ("speaker", "text", "meme", "emotion")


class MemeImageProcessor(BaseImageProcessor):
    """
    Turns meme images into the `pixel_values` of a timm encoder, with timm's own evaluation transform (resize,
    centre crop, normalise) built from a timm data config. Build one for an encoder with `from_timm_model`.
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
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.input_size = list(input_size)
        self.interpolation = interpolation
        self.mean = list(mean)
        self.std = list(std)
        self.crop_pct = crop_pct
        self.crop_mode = crop_mode

    @classmethod
    def from_timm_model(cls, model_name: str) -> "MemeImageProcessor":
        """The data config timm declares for `model_name` (read offline from timm's registry)."""
        data_config = timm.data.resolve_data_config(
            pretrained_cfg=timm.models.get_pretrained_cfg(model_name).to_dict()
        )
        return cls(**data_config)

    @property
    def transform(self):
        return timm.data.create_transform(
            input_size=tuple(self.input_size),
            interpolation=self.interpolation,
            mean=tuple(self.mean),
            std=tuple(self.std),
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
            is_training=False,
        )

    def preprocess(
        self, images: Image.Image | Sequence[Image.Image], return_tensors: str = "pt", **kwargs
    ) -> BatchFeature:
        images = [images] if isinstance(images, Image.Image) else list(images)
        transform = self.transform
        pixel_values = torch.stack([transform(image.convert("RGB")) for image in images])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)


class MODProcessor(ProcessorMixin):
    r"""
    Encodes dialogues for [`MODGPTForMemeDialogue`], one sequence per dialogue. A dialogue is a list of turns
    `{"speaker": "speaker1" | "speaker2", "text": str | None, "meme": str | None, "emotion": int | str | None}`;
    each turn becomes `[speakerK] [BOS] text [EOS] [TAG]`, followed by `[IMG]` when it holds a meme.

    Args:
        image_processor ([`MemeImageProcessor`]): turns meme images into the encoder's `pixel_values`.
        tokenizer ([`BertTokenizer`]): character-level for Chinese, WordPiece for other text, holding the special
            tokens `[BOS] [EOS] [PAD] [speaker1] [speaker2] [IMG] [TAG]`.
        max_length (`int`, *optional*, defaults to 500): longest encoding; older turns are dropped whole to fit, or,
            for training (`encode_windows`), a longer dialogue is cut into windows of whole turns.
        emotion_names (`list[str]`, *optional*): emotion names by id, so turns may give `emotion` as a name.
    """

    def __init__(
        self,
        image_processor: MemeImageProcessor | None = None,
        tokenizer: BertTokenizer | None = None,
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

    # Building the tokenizer ---------------------------------------------------------------------------------------

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
        normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        )
        corpus = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        corpus.normalizer = normalizer
        corpus.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        corpus.train_from_iterator(texts, trainer=trainer)
        tokenizer = BertTokenizer(vocab=corpus.get_vocab())
        return cls.from_tokenizer(tokenizer, meme_encoder_name=meme_encoder_name, **kwargs)

    @classmethod
    def from_vocab(
        cls, pretrained_name_or_path: str, meme_encoder_name: str = "efficientnet_b0", **kwargs: Any
    ) -> "MODProcessor":
        """Use an existing BERT-style vocabulary (a folder or hub repo with `vocab.txt`, e.g. CDial-GPT's)."""
        # BertTokenizer rather than AutoTokenizer: CDial-GPT's folders carry an OpenAI-GPT config.json.
        tokenizer = BertTokenizer.from_pretrained(pretrained_name_or_path)
        return cls.from_tokenizer(tokenizer, meme_encoder_name=meme_encoder_name, **kwargs)

    @classmethod
    def from_tokenizer(cls, tokenizer: BertTokenizer, meme_encoder_name: str = "efficientnet_b0", **kwargs: Any):
        """Add the dialogue special tokens (appended after the vocabulary) and pair it with the meme encoder's images."""
        tokenizer.add_special_tokens(DIALOGUE_SPECIAL_TOKENS)
        return cls(MemeImageProcessor.from_timm_model(meme_encoder_name), tokenizer, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(
        cls, pretrained_model_name_or_path: str, processor_dict: dict | None = None, **kwargs: Any
    ) -> list:
        # This module's own classes rather than the Auto classes, which would import the image processor's code
        # from the folder: loading a MODProcessor never runs code saved with it.
        kwargs.pop("trust_remote_code", None)
        return [
            MemeImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs),
            BertTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs),
        ]

    @property
    def special_token_ids(self) -> dict[str, int]:
        """The special token ids under the names `MODGPTConfig` takes."""
        names = ("bos", "eos", "pad", "speaker1", "speaker2", "image", "tag")
        return {f"{name}_token_id": self.token_ids[token] for name, token in zip(names, SPECIAL_TOKENS)}

    # Checking dialogues ------------------------------------------------------------------------------------------

    def check_dialogue(
        self, dialogue: Sequence[Mapping], dialogue_index: int = 0, known_memes: Iterable[str] | None = None
    ) -> None:
        """
        Raise a `ValueError` naming the dialogue, turn and field of the first thing that is not a valid dialogue (see
        `check_turn`) or, with `known_memes`, of the first meme not among them.
        """
        check_dialogue_shape(dialogue, dialogue_index)
        known = set(known_memes) if known_memes is not None else None
        for turn_index, turn in enumerate(dialogue):
            where = f"dialogue {dialogue_index}, turn {turn_index}"
            self.check_turn(turn, where)
            meme = turn.get("meme")
            if known is not None and meme is not None and meme not in known:
                raise ValueError(f"{where}: 'meme' {meme!r} is unknown (not in the meme bank).")

    def check_turn(self, turn: Mapping, where: str) -> None:
        """
        Raise a `ValueError` naming the field of `turn` that does not follow the turn schema: only the fields
        `speaker` ("speaker1" or "speaker2"), `text` (a string or None), `meme` (a meme id string or None) and
        `emotion` (None, an emotion id or name; only with a meme), and at least one of `text` and `meme`.
        """
        check_is_turn(turn, where)
        unknown = [key for key in turn if key not in TURN_FIELDS]
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; a turn has the fields {list(TURN_FIELDS)}.")
        self.speaker_of(turn, where)
        text, meme, emotion = turn.get("text"), turn.get("meme"), turn.get("emotion")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{where}: 'text' must be a string or None, got {describe(text)}.")
        if meme is not None and not (isinstance(meme, str) and meme):
            raise ValueError(f"{where}: 'meme' must be a meme id (a non-empty string) or None, got {describe(meme)}.")
        if text is None and meme is None:
            raise ValueError(f"{where}: a turn needs 'text' or 'meme', both are missing.")
        if emotion is not None and meme is None:
            raise ValueError(f"{where}: 'emotion' is given for a turn without a meme, got {describe(emotion)}.")
        self.emotion_id(emotion, where)

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

    def next_speaker(self, dialogue: list[Mapping]) -> str:
        """The speaker who answers the dialogue: the one who did not speak last."""
        last = self.speaker_of(dialogue[-1], "last turn")
        return SPEAKERS[1 - SPEAKERS.index(last)]

    # Encoding -----------------------------------------------------------------------------------------------------

    def encode_turn(self, turn: Mapping, where: str, labelled: bool) -> dict[str, list]:
        """The tokens of one turn, with segment ids, text labels, and usage/emotion labels at `[TAG]`/`[IMG]`."""
        self.check_turn(turn, where)
        speaker = self.speaker_of(turn, where)
        text, meme = turn.get("text"), turn.get("meme")
        ids = self.token_ids
        text_ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        input_ids = [ids[f"[{speaker}]"], ids["[BOS]"], *text_ids, ids["[EOS]"], ids["[TAG]"]]
        segment = SEGMENTS.index(speaker)
        token_type_ids = [segment] * len(input_ids)
        ignore = [IGNORE_INDEX] * len(input_ids)
        labels = [IGNORE_INDEX, IGNORE_INDEX, *text_ids, ids["[EOS]"], IGNORE_INDEX] if labelled else list(ignore)
        usage_labels = ignore[:-1] + [int(meme is not None) if labelled else IGNORE_INDEX]
        emotion_labels = list(ignore)
        memes = []
        if meme is not None:
            input_ids.append(ids["[IMG]"])
            token_type_ids.append(SEGMENTS.index("meme"))
            labels.append(IGNORE_INDEX)
            usage_labels.append(IGNORE_INDEX)
            emotion_labels.append(self.emotion_id(turn.get("emotion"), where) if labelled else IGNORE_INDEX)
            memes.append(meme)
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "labels": labels,
            "usage_labels": usage_labels,
            "emotion_labels": emotion_labels,
            "meme_ids": memes,
        }

    def encode_turns(self, dialogue: Sequence[Mapping], dialogue_index: int, label_turns: str) -> list[dict]:
        """Each turn of a dialogue encoded by `encode_turn`, labelled as `label_turns` says."""
        if label_turns not in LABEL_TURNS:
            raise ValueError(f"label_turns must be one of {LABEL_TURNS}, got {label_turns!r}.")
        check_dialogue_shape(dialogue, dialogue_index)
        last = len(dialogue) - 1
        turns = []
        for turn_index, turn in enumerate(dialogue):
            where = f"dialogue {dialogue_index}, turn {turn_index}"
            labelled = label_turns == "all" and turn_index > 0 or label_turns == "last" and turn_index == last
            turns.append(self.encode_turn(turn, where, labelled))
        return turns

    def encode_dialogue(
        self,
        dialogue: Sequence[Mapping],
        dialogue_index: int = 0,
        add_generation_prompt: bool = False,
        label_turns: str = "all",
        max_length: int | None = None,
    ) -> dict[str, list]:
        """
        Encode one dialogue as a single sequence. `label_turns="all"` labels every turn from the second on (the
        paper's choice), `"last"` only the last turn (the per-response view: history + answer), `"none"` none.
        `add_generation_prompt` appends `[speakerK] [BOS]` for the speaker who answers next. Whole old turns are
        dropped from the left until the encoding fits `max_length`; the last turn (with the generation prompt) is
        always kept, and a `ValueError` names it when it alone does not fit.
        """
        max_length = max_length or self.max_length
        turns = self.encode_turns(dialogue, dialogue_index, label_turns)
        if add_generation_prompt:
            turns[-1] = join_turns([turns[-1], self.generation_prompt(dialogue)])
        lengths = [len(turn["input_ids"]) for turn in turns]
        what = "its special tokens and the reply prompt" if add_generation_prompt else "its special tokens"
        self.check_turn_lengths(lengths[-1:], max_length, dialogue_index, first_turn=len(turns) - 1, what=what)
        start = len(turns) - longest_run_that_fits(lengths[::-1], max_length)
        return join_turns(turns[start:])

    def encode_windows(
        self, dialogue: Sequence[Mapping], dialogue_index: int = 0, max_length: int | None = None
    ) -> list[dict[str, list]]:
        """
        Encode one dialogue for training as windows of whole turns that each fit `max_length`, together labelling
        every turn from the second on exactly once. A dialogue that fits is one window, `encode_dialogue`'s own
        encoding. Otherwise the first window is the longest prefix that fits; each later window takes the next new
        turns, filling at most half of `max_length` (always at least one turn), and puts before them, unlabelled, the
        longest run of immediately preceding turns that fits: each response is learned once, with as much history as
        fits.
        """
        max_length = max_length or self.max_length
        turns = self.encode_turns(dialogue, dialogue_index, "all")
        lengths = [len(turn["input_ids"]) for turn in turns]
        self.check_turn_lengths(lengths, max_length, dialogue_index)
        windows, start = [], 0
        while start < len(turns):
            budget = max_length if start == 0 else max_length // 2
            end = start + max(1, longest_run_that_fits(lengths[start:], budget))
            room = max_length - sum(lengths[start:end])
            context_start = start - longest_run_that_fits(lengths[:start][::-1], room)
            context = [without_labels(turn) for turn in turns[context_start:start]]
            if end > 1 or len(turns) == 1:  # the first turn alone has no label: it only serves as the next context
                windows.append(join_turns(context + turns[start:end]))
            start = end
        return windows

    def generation_prompt(self, dialogue: Sequence[Mapping]) -> dict[str, list]:
        """`[speakerK] [BOS]` for the speaker who answers `dialogue` next, unlabelled."""
        speaker = self.next_speaker(dialogue)
        prompt = {
            "input_ids": [self.token_ids[f"[{speaker}]"], self.token_ids["[BOS]"]],
            "token_type_ids": [SEGMENTS.index(speaker)] * 2,
            "meme_ids": [],
        }
        return without_labels(prompt)

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

    def pad(self, encodings: Sequence[Mapping[str, list]], padding_side: str = "right") -> BatchFeature:
        """Pad encoded dialogues into a batch of tensors; `meme_ids` stays a flat list in reading order."""
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}.")
        longest = max(len(encoding["input_ids"]) for encoding in encodings)
        pad_values = {
            "input_ids": self.token_ids["[PAD]"],
            "attention_mask": 0,
            "token_type_ids": 0,
            "labels": IGNORE_INDEX,
            "usage_labels": IGNORE_INDEX,
            "emotion_labels": IGNORE_INDEX,
        }
        columns: dict[str, list[list[int]]] = {key: [] for key in pad_values}
        for encoding in encodings:
            row = dict(encoding, attention_mask=[1] * len(encoding["input_ids"]))
            padding = longest - len(encoding["input_ids"])
            for key, value in pad_values.items():
                filler = [value] * padding
                columns[key].append(row[key] + filler if padding_side == "right" else filler + row[key])
        batch = BatchFeature({key: torch.tensor(rows, dtype=torch.long) for key, rows in columns.items()})
        batch["meme_ids"] = [meme for encoding in encodings for meme in encoding["meme_ids"]]
        return batch

    def __call__(
        self,
        dialogues: Sequence[Mapping] | Sequence[Sequence[Mapping]],
        add_generation_prompt: bool = False,
        label_turns: str = "all",
        padding_side: str = "right",
        max_length: int | None = None,
        meme_images: Mapping[str, Image.Image] | None = None,
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """
        Encode one dialogue or a batch into padded tensors: `input_ids`, `attention_mask`, `token_type_ids`,
        `labels`, `usage_labels`, `emotion_labels`, and `meme_ids` (the memes at the `[IMG]` tokens, in reading
        order), the memes of the meme bank that `model(**inputs)` looks up. With `meme_images` (meme id to image) the
        memes come as images instead: `pixel_values` in place of `meme_ids`, as the model takes one of the two.
        """
        if return_tensors != "pt":
            raise ValueError(f"MODProcessor returns PyTorch tensors only, got return_tensors={return_tensors!r}.")
        batch, _ = self.dialogue_batch(dialogues)
        encodings = [
            self.encode_dialogue(dialogue, index, add_generation_prompt, label_turns, max_length)
            for index, dialogue in enumerate(batch)
        ]
        inputs = self.pad(encodings, padding_side)
        if meme_images is not None and inputs["meme_ids"]:
            missing = sorted(set(inputs["meme_ids"]) - set(meme_images))
            if missing:
                raise ValueError(f"meme_images lacks the images of memes {missing}.")
            images = [meme_images[meme] for meme in inputs.pop("meme_ids")]
            inputs["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return inputs

    # Decoding -----------------------------------------------------------------------------------------------------

    def decode_replies(self, reply_ids: torch.LongTensor) -> list[str]:
        """Text of generated replies: the tokens before the first `[EOS]`, joined without spaces between CJK."""
        eos = self.token_ids["[EOS]"]
        replies = []
        for row in reply_ids.tolist():
            row = row[: row.index(eos)] if eos in row else row
            replies.append(self.decode_text(row))
        return replies

    def decode_text(self, token_ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return join_cjk(text)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)


def is_nonempty_list(value: Any) -> bool:
    """A non-empty sequence that is neither a string nor a mapping: the shape of a dialogue and of a batch."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 0


def describe(value: Any) -> str:
    """A value's type and a short repr, for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def check_dialogue_shape(dialogue: Any, dialogue_index: int) -> None:
    if not is_nonempty_list(dialogue):
        raise ValueError(
            f"dialogue {dialogue_index}: a dialogue must be a non-empty list of turns, got {describe(dialogue)}."
        )


def check_is_turn(turn: Any, where: str) -> None:
    if not isinstance(turn, Mapping):
        raise ValueError(f"{where}: a turn must be a dict, got {describe(turn)}.")


def join_turns(turns: Sequence[Mapping[str, list]]) -> dict[str, list]:
    """Encoded turns concatenated into one sequence."""
    return {key: [item for turn in turns for item in turn[key]] for key in turns[0]}


def without_labels(turn: Mapping[str, list]) -> dict[str, list]:
    """An encoded turn as unlabelled context: text, usage and emotion labels all ignored."""
    ignore = [IGNORE_INDEX] * len(turn["input_ids"])
    return dict(turn, labels=ignore, usage_labels=list(ignore), emotion_labels=list(ignore))


def longest_run_that_fits(lengths: Sequence[int], budget: int) -> int:
    """How many of `lengths`, taken from the front, fit together in `budget`."""
    total = count = 0
    for length in lengths:
        if total + length > budget:
            break
        total, count = total + length, count + 1
    return count


def is_cjk(character: str) -> bool:
    code = ord(character)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x3000 <= code <= 0x303F or 0xFF00 <= code <= 0xFFEF


def join_cjk(text: str) -> str:
    """Remove the spaces WordPiece decoding puts between Chinese characters, keeping those between other words."""
    pieces = text.split(" ")
    joined = pieces[0] if pieces else ""
    for piece in pieces[1:]:
        if joined and piece and (is_cjk(joined[-1]) or is_cjk(piece[0])):
            joined += piece
        else:
            joined += " " + piece
    return joined


MemeImageProcessor.register_for_auto_class("AutoImageProcessor")
MODProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["MODProcessor", "MemeImageProcessor"]
