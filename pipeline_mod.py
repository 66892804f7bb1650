"""MOD-GPT inference, which every front end runs: `reply_to_dialogues` (a dialogue in, a reply out: text, meme,
emotion, top memes) and its parts; the `meme-dialogue` pipeline around it (with each meme's image); and
`load_mod_gpt`, which loads a saved MOD-GPT with its processor without running code from the folder."""

import argparse
import contextlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from huggingface_hub.errors import StrictDataclassError
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoProcessor, BatchFeature, Pipeline, PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer
from transformers.pipelines import PIPELINE_REGISTRY

try:
    from .attention_mod_gpt import ROW_GROUPS_SDPA
    from .configuration_mod_gpt import MODGPTConfig
    from .modeling_cached_openai_gpt import CachedOpenAIGPTModel
    from .modeling_mod_gpt import DEFAULT_NUM_MEMES, MemeBank, MODGPTForMemeDialogue, last_per_row
    from .processing_mod import MODProcessor
except ImportError:
    from attention_mod_gpt import ROW_GROUPS_SDPA
    from configuration_mod_gpt import MODGPTConfig
    from modeling_cached_openai_gpt import CachedOpenAIGPTModel
    from modeling_mod_gpt import DEFAULT_NUM_MEMES, MemeBank, MODGPTForMemeDialogue, last_per_row
    from processing_mod import MODProcessor

HUB_PREFIX = "hf://"
# Generation settings under which each dialogue decodes one sequence (what a joined prompt cache holds): 1 or unset.
SINGLE_SEQUENCE = ("num_beams", "num_return_sequences")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def machine_accelerator() -> torch.device | None:
    """This machine's accelerator (`cuda`, `mps`, ...), if it has one that torch can use."""
    return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None


def default_device() -> torch.device:
    """Where a model runs unless told: the machine's accelerator, else the CPU."""
    return machine_accelerator() or torch.device("cpu")


def device_argument(value: str) -> torch.device:
    """`--device`: a device torch knows and this machine has: `cpu`, or its accelerator's type (`cuda`, `cuda:1`)."""
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{value!r} is not a device ({error})") from None
    accelerator = machine_accelerator()
    if device.type != "cpu" and (accelerator is None or accelerator.type != device.type):
        have = "cpu" + (f" and {accelerator.type}" if accelerator else " only")
        raise argparse.ArgumentTypeError(f"{value!r}: this machine has no {device.type} device (it has {have})")
    return device


def model_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """One of `DTYPES`, by name or as a torch dtype; a `ValueError` names anything else."""
    if dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}.")
    return DTYPES[dtype]


def check_positive_int(name: str, value: Any, or_none: bool = False) -> int | None:
    """`value` if it is a positive integer (or None, where `or_none`); else a `ValueError` naming `name`."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < 1) and not (or_none and value is None):
        raise ValueError(f"{name} must be a positive integer{' or None' if or_none else ''}, got {value!r}.")
    return value


class MemeDialoguePipeline(Pipeline):
    """
    Answers dialogues given in the turn schema `{"speaker", "text", "meme", "emotion"}` with a MOD-GPT model.

    ```python
    from transformers import pipeline

    chat = pipeline(model="path/to/mod-gpt", trust_remote_code=True)
    chat([{"speaker": "speaker1", "text": "今天好开心", "meme": None, "emotion": None}])
    # {"speaker": "speaker2", "text": ..., "meme": "042", "emotion": ...,
    #  "top_memes": [{"meme": "042", "score": -0.31}, ...], "meme_image": <PIL.Image or None>}
    ```

    Replies are `reply_to_dialogues`'s (see it for the fields; a `score` is higher for a
    better meme) with `meme_image`, the chosen meme's image where `memes` has it.

    Args:
        memes (`Mapping[str, PIL.Image.Image | torch.Tensor]` or a `memes` dataset split, *optional*):
            Meme images by id, returned with each chosen meme. Memes the model's bank lacks become candidates of this
            pipeline: encoded by the model's meme encoder, or, for a model trained on the release's features (no
            meme encoder), taken from the `feature` column of a `memes` dataset split. A mapping may also hold a
            meme's raw feature instead of its image (`encode_memes` computes them once, for memes used in many
            calls, as the web chat's uploads are). They enter a copy of the
            bank that this pipeline keeps, so the model and other pipelines sharing it do not change. A call takes
            `memes` too, for that call only.
        device (`str` or `torch.device`, *optional*) and dtype (`"float32"`, `"bfloat16"`, `"float16"` or the torch
            dtype, *optional*): where and in what precision the model runs (it is moved and cast in place); `"auto"`
            or `None` keeps the model's own.
    Call arguments (given to `pipeline(...)` they apply to every call): `candidates` (meme ids to choose among, the
    same list for every dialogue of the call), `num_memes` (memes listed in `top_memes`, default 5), `use_meme`
    (`None`: the usage head decides; `True`: always attach the best meme; `False`: never), `batch_size`,
    `max_prompt_tokens` (see `generate_texts`), and any `generate` argument (`max_new_tokens`, `top_k`, `top_p`,
    `temperature`, ...), passed to `generate` untouched.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(
        self,
        *args: Any,
        memes: Any = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int | None = None,
        **kwargs: Any,
    ):
        # `pipeline(...)` passes its `dtype` on ("auto" unless given): the model was already loaded in it.
        dtype = None if dtype in (None, "auto") else model_dtype(dtype)
        self.batch_size = 1 if batch_size is None else check_positive_int("batch_size", batch_size)
        super().__init__(*args, **kwargs)
        if dtype is not None:  # like `device=`, which moves the model in place
            self.model.to(dtype=dtype)
        self.meme_bank, self.meme_images = self.with_memes(memes, self.model.meme_bank, {})

    def with_memes(self, memes: Any, bank: MemeBank, images: dict) -> tuple[MemeBank, dict]:
        """`bank` and `images`, or, given `memes`, copies of them with those memes added (the originals stay)."""
        if memes is None:
            return bank, images
        bank = bank.copy()
        if isinstance(memes, Mapping):
            known = set(bank.ids)
            features = {meme: value for meme, value in memes.items() if isinstance(value, torch.Tensor)}
            new = {meme: value for meme, value in memes.items() if meme not in known and meme not in features}
            features.update(self.encode_memes(new))
            if features:
                self.model.add_memes(
                    list(features), meme_features=torch.stack(list(features.values())), meme_bank=bank
                )
        elif isinstance(memes, datasets.Dataset):  # its images, or its features for a model without a meme encoder
            add_memes_from_table(self.model, memes, self.processor.image_processor, meme_bank=bank)
        else:
            raise ValueError(
                f"memes must map meme ids to images (or features) or be a `memes` dataset split, got a "
                f"{type(memes).__name__}."
            )
        return bank, {**images, **self.index_memes(memes)}

    @torch.no_grad()
    def encode_memes(self, images: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The raw meme feature of each image (by id), to pass as `memes` in later calls without encoding again."""
        for meme, image in images.items():
            if not isinstance(meme, str) or not isinstance(image, Image.Image):
                raise ValueError(f"memes: {meme!r} must be a meme id (str) mapped to a PIL image, got {image!r}.")
            try:
                self.processor.image_processor.check_image(image)
            except ValueError as error:
                raise ValueError(f"meme {meme!r}: {error}") from None
        if not images:
            return {}
        pixel_values = self.processor.image_processor(list(images.values()))["pixel_values"]
        features = self.model.model.encode_meme_images(pixel_values.to(self.model.device))
        return dict(zip(images, features.float().cpu()))

    @staticmethod
    def index_memes(memes: Any) -> dict:
        if isinstance(memes, Mapping):
            return {meme: image for meme, image in memes.items() if isinstance(image, Image.Image)}
        return dict(zip(memes["meme_id"], memes["image"])) if "image" in memes.column_names else {}

    def _sanitize_parameters(self, **call_kwargs: Any):
        # `Pipeline.__init__` calls this once, with the call arguments given to `pipeline(...)`; `__call__` does not.
        self.call_defaults = call_kwargs
        return {}, {}, {}

    def __call__(self, dialogues, batch_size: int | None = None, memes: Any = None, **kwargs: Any):
        """
        One dialogue gives one reply; a list of dialogues gives a list, answered `batch_size` at a time. `memes` (as
        the constructor takes them) are candidates of this call only.
        """
        batch, single = self.processor.dialogue_batch(dialogues)
        batch_size = self.batch_size if batch_size is None else check_positive_int("batch_size", batch_size)
        bank, images = self.with_memes(memes, self.meme_bank, self.meme_images)
        forward_params = {**self.call_defaults, **kwargs, "meme_bank": bank}
        inputs = [self.preprocess(dialogue, index, bank)["dialogue"] for index, dialogue in enumerate(batch)]
        replies = []
        for start in range(0, len(inputs), batch_size):
            outputs = self.forward({"dialogue": inputs[start : start + batch_size]}, **forward_params)
            replies += [self.postprocess(output, images) for output in outputs]
        return replies[0] if single else replies

    def preprocess(
        self, dialogue: Sequence[Mapping], dialogue_index: int = 0, meme_bank: MemeBank | None = None
    ) -> dict[str, Any]:
        """The dialogue checked (its turns, and its memes against the bank) and copied."""
        known = (self.meme_bank if meme_bank is None else meme_bank).ids
        self.processor.check_dialogue(dialogue, dialogue_index, known_memes=known)
        return {"dialogue": [dict(turn) for turn in dialogue]}

    def _forward(self, model_inputs: dict[str, Any], candidates: list[str] | None = None, **forward_params: Any):
        """Replies to a list of checked dialogues, each choosing among the same `candidates` if given."""
        dialogues = model_inputs["dialogue"]
        per_dialogue = None if candidates is None else [candidates] * len(dialogues)
        return reply_to_dialogues(self.model, self.processor, dialogues, per_dialogue, **forward_params)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Save the model and the whole processor (the base class saves only its tokenizer and image processor)."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)

    def postprocess(self, reply: dict[str, Any], meme_images: dict | None = None) -> dict[str, Any]:
        images = self.meme_images if meme_images is None else meme_images
        return {**reply, "meme_image": images.get(reply["meme"])}


# Replying: the inference every front end runs (this pipeline, `model.respond`, chat.py, app.py, evaluate_mod.py) --


def max_positions(model: MODGPTForMemeDialogue) -> int:
    """Positions the decoder embeds: `n_positions` (GPT-2, OpenAI-GPT) or else `max_position_embeddings`."""
    text_config = model.config.text_config
    return getattr(text_config, "n_positions", None) or text_config.max_position_embeddings


def max_prompt_length(
    model: MODGPTForMemeDialogue, processor: MODProcessor, max_new_tokens: int = 0, max_length: int | None = None
) -> int:
    """
    Longest encoding the model takes with room for `max_new_tokens` generated tokens after it: the decoder's positions
    less that room, and never more than `max_length` (default: the processor's).
    """
    limit = max_positions(model) - max_new_tokens
    if limit < 1:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the decoder's {max_positions(model)} "
            "positions."
        )
    return min(max_length or processor.max_length, limit)


def encode_dialogues(
    model: MODGPTForMemeDialogue,
    processor: MODProcessor,
    dialogues: list[list[dict]],
    max_new_tokens: int | None = None,
    meme_bank: MemeBank | None = None,
    **processor_kwargs: Any,
) -> BatchFeature:
    """
    The processor's left-padded encoding of `dialogues` on the model's device, with `meme_features` (the features of
    their memes in `meme_bank`, default the model's, in reading order) in place of `meme_ids`. Each dialogue keeps
    its latest turns that fit `max_prompt_length`: with `add_generation_prompt=True`, room is left for
    `max_new_tokens` generated tokens (default: the generation config's).
    """
    if max_new_tokens is None:
        prompting = processor_kwargs.get("add_generation_prompt")
        max_new_tokens = model.generation_config.max_new_tokens if prompting else 0
    max_length = max_prompt_length(model, processor, max_new_tokens or 0, processor_kwargs.pop("max_length", None))
    inputs = processor(dialogues, padding_side="left", return_tensors="pt", max_length=max_length, **processor_kwargs)
    meme_ids = inputs.pop("meme_ids")
    inputs = inputs.to(model.device)
    bank = model.meme_bank if meme_bank is None else meme_bank
    inputs["meme_features"] = bank.lookup(meme_ids) if meme_ids else None
    return inputs


def forward_dialogues(
    model: MODGPTForMemeDialogue, processor: MODProcessor, dialogues: list[list[dict]], **processor_kwargs: Any
) -> tuple[BatchFeature, Any]:
    """Encode `dialogues` with `encode_dialogues` and run the model on them (with the labels `label_turns` asks for)."""
    inputs = encode_dialogues(model, processor, dialogues, **processor_kwargs)
    return inputs, model(**inputs)


class InPlaceLayer(DynamicLayer):
    """
    A `DynamicLayer` whose keys and values live in a buffer with room to grow: each update writes its positions in
    place and returns views of the filled part. `DynamicLayer` concatenates instead, copying the whole cache of every
    row at every generated token; in place, evaluation's batched generation runs about 10% faster on the CPU
    (BENCHMARKS.md, row 8).
    A full buffer, or keys that `crop`, `batch_select_indices` or `reorder_cache` replaced, move to a new buffer of
    twice the length needed.
    """

    buffer_keys: torch.Tensor | None = None
    buffer_values: torch.Tensor | None = None
    written_keys: torch.Tensor | None = None  # the view of the buffer that the last update returned

    @classmethod
    def over(cls, buffer_keys: torch.Tensor, buffer_values: torch.Tensor, length: int = 0) -> "InPlaceLayer":
        """A layer writing into the given buffers (views of a larger one, for instance), their first `length`
        positions already filled."""
        layer = cls()
        layer.lazy_initialization(buffer_keys, buffer_values)
        layer.buffer_keys, layer.buffer_values = buffer_keys, buffer_values
        layer.keys, layer.values = buffer_keys[:, :, :length], buffer_values[:, :, :length]
        layer.written_keys = layer.keys
        return layer

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        if not self.buffer_holds_keys(end):
            self.buffer_keys = self.grown(self.keys, key_states, start, end)
            self.buffer_values = self.grown(self.values, value_states, start, end)
        self.buffer_keys[:, :, start:end] = key_states
        self.buffer_values[:, :, start:end] = value_states
        self.keys, self.values = self.buffer_keys[:, :, :end], self.buffer_values[:, :, :end]
        self.written_keys = self.keys
        return self.keys, self.values

    def buffer_holds_keys(self, length: int) -> bool:
        """Whether the keys are still those written in the buffer and it has room for `length` positions."""
        return self.buffer_keys is not None and self.keys is self.written_keys and length <= self.buffer_keys.shape[-2]

    @staticmethod
    def grown(cached: torch.Tensor, new: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """A buffer of `2 * end` positions holding the `start` cached ones."""
        buffer = new.new_empty((*new.shape[:-2], 2 * end, new.shape[-1]))
        if start:
            buffer[:, :, :start] = cached
        return buffer


def in_place_cache() -> Cache:
    """A cache of `InPlaceLayer`s, one per decoder layer as the model first updates it."""
    return Cache(layer_class_to_replicate=InPlaceLayer)


def prompt_lengths(
    model: MODGPTForMemeDialogue, processor: MODProcessor, dialogues: list[list[dict]], max_new_tokens: int
) -> list[int]:
    """The length of each dialogue's prompt as `generate_texts` encodes it (truncated, with the reply prompt)."""
    max_length = max_prompt_length(model, processor, max_new_tokens)
    return [
        len(processor.encode_dialogue(dialogue, index, add_generation_prompt=True, max_length=max_length)["input_ids"])
        for index, dialogue in enumerate(dialogues)
    ]


def prompt_runs(lengths: list[int], max_tokens: int) -> list[tuple[int, int]]:
    """
    `(start, end)` of consecutive runs of `lengths` whose padded size (rows x the longest) stays within `max_tokens`;
    a longer prompt runs alone. Sorted lengths give runs with little padding.
    """
    runs, start, longest = [], 0, 0
    for index, length in enumerate(lengths):
        if index > start and (index - start + 1) * max(longest, length) > max_tokens:
            runs.append((start, index))
            start, longest = index, 0
        longest = max(longest, length)
    return runs + [(start, len(lengths))]


def decodes_row_groups(model: MODGPTForMemeDialogue) -> bool:
    """Whether the decoder's attention can skip other row groups' keys (`attention_mod_gpt`): the cached
    OpenAI-GPT decoder, or a transformers decoder running SDPA."""
    decoder = model.model.language_model
    if isinstance(decoder, CachedOpenAIGPTModel):
        return True
    # transformers has no public reader of the implementation; its own batched generation reads this attribute.
    return model.model.decoder_has_cache and decoder.config._attn_implementation in ("sdpa", ROW_GROUPS_SDPA)


# Generations that switch a decoder to `ROW_GROUPS_SDPA` run one at a time, so that none switches it back under another.
ROW_GROUPS_LOCK = threading.Lock()


@contextlib.contextmanager
def row_groups_attention(model: MODGPTForMemeDialogue) -> Iterator[None]:
    """A transformers decoder's attention switched to `sdpa_by_row_groups` (plain SDPA where no row groups are given,
    so other callers of the model meanwhile get what they had), and back."""
    decoder = model.model.language_model
    if isinstance(decoder, CachedOpenAIGPTModel):  # its attention always takes row groups
        yield
        return
    with ROW_GROUPS_LOCK:
        before = decoder.config._attn_implementation
        decoder.set_attn_implementation(ROW_GROUPS_SDPA)
        try:
            yield
        finally:
            decoder.set_attn_implementation(before)


def cache_buffers(model: MODGPTForMemeDialogue, rows: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Uninitialised key and value buffers of `rows` x `length` positions for each decoder layer (sized as
    transformers sizes a static cache); memory that is never written costs nothing on the CPU."""
    text_config = model.config.text_config
    heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    decoder = model.model.language_model
    shape, options = (rows, heads, length, head_dim), {"dtype": decoder.dtype, "device": decoder.device}
    return [
        (torch.empty(shape, **options), torch.empty(shape, **options)) for _ in range(text_config.num_hidden_layers)
    ]


def joined_prompt(
    model: MODGPTForMemeDialogue, prompt: BatchFeature, runs: list[tuple[int, int]], max_new_tokens: int
) -> dict[str, Any]:
    """
    `generate`'s inputs for the left-padded `prompt` (`encode_dialogues`) to decode as one batch though its rows run
    apart: each run of rows (`prompt_runs`), cut to its own longest prompt and less its last token, runs through the
    decoder into its rows of one cache, right-aligned at the whole batch's width. Returns the prompt's text inputs,
    that cache, and the `attention_row_groups` with which attention skips the columns that are another run's padding.
    """
    text = {name: value for name, value in prompt.items() if name != "meme_features"}
    lengths, width = prompt["attention_mask"].sum(-1).tolist(), prompt["input_ids"].shape[1]
    memes_before = [0] + (prompt["input_ids"] == model.config.image_token_id).sum(-1).cumsum(0).tolist()
    buffers = cache_buffers(model, len(lengths), width - 1 + max_new_tokens)
    row_groups = []
    for start, end in runs:
        first_key = width - max(lengths[start:end])
        rows_cache = Cache(
            layers=[InPlaceLayer.over(k[start:end, :, first_key:], v[start:end, :, first_key:]) for k, v in buffers]
        )
        rows_text = {name: value[start:end, first_key:-1] for name, value in text.items()}
        memes = (
            None
            if prompt["meme_features"] is None
            else prompt["meme_features"][memes_before[start] : memes_before[end]]
        )
        model.model(**rows_text, meme_features=memes, cache=rows_cache, use_cache=True)
        row_groups.append((start, end, first_key))
    cache = Cache(layers=[InPlaceLayer.over(keys, values, width - 1) for keys, values in buffers])
    return {**text, "cache": cache, "attention_row_groups": tuple(row_groups)}


@torch.no_grad()
def generate_texts(
    model: MODGPTForMemeDialogue,
    processor: MODProcessor,
    dialogues: list[list[dict]],
    meme_bank: MemeBank | None = None,
    max_prompt_tokens: int | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """
    The text of the next turn of each dialogue, from `model.generate` on their prompts (every `generate_kwargs` entry,
    such as `top_p`, `max_new_tokens` or `logits_processor`, goes there untouched). The prompt keeps the latest turns
    that fit the decoder with room for `max_new_tokens` (see `max_prompt_length`). Unless told otherwise, `generate`
    caches keys and values in place (`in_place_cache`).
    With `max_prompt_tokens`, the prompts run in consecutive runs of at most that many padded tokens (`prompt_runs`;
    give the dialogues sorted by length) and then decode together in one batch, each run's rows attending to its own
    columns only (`joined_prompt`): on the CPU, short passes and one wide decoding batch are each the faster way.
    This needs single-sequence decoding into the in-place cache and a decoder that `decodes_row_groups`; otherwise,
    and when one run holds them all, the prompts run as one padded batch.
    """
    check_positive_int("max_prompt_tokens", max_prompt_tokens, or_none=True)
    generation_config = generate_kwargs.get("generation_config") or model.generation_config
    max_new_tokens = generate_kwargs.get("max_new_tokens", generation_config.max_new_tokens)
    use_cache = generate_kwargs.get("use_cache", generation_config.use_cache)
    cache_implementation = generate_kwargs.get("cache_implementation", generation_config.cache_implementation)
    in_place = use_cache and not cache_implementation and "cache" not in generate_kwargs
    single = all(generate_kwargs.get(name, getattr(generation_config, name)) in (None, 1) for name in SINGLE_SEQUENCE)
    prompt = encode_dialogues(model, processor, dialogues, max_new_tokens, meme_bank, add_generation_prompt=True)
    runs = []
    if max_prompt_tokens and in_place and single and max_new_tokens and decodes_row_groups(model):
        runs = prompt_runs(prompt["attention_mask"].sum(-1).tolist(), max_prompt_tokens)
    if len(runs) > 1:
        with row_groups_attention(model):
            generated = model.generate(**joined_prompt(model, prompt, runs, max_new_tokens), **generate_kwargs)
    else:
        if in_place:
            generate_kwargs["cache"] = in_place_cache()
        generated = model.generate(**prompt, **generate_kwargs)
    return processor.decode_replies(generated[:, prompt["input_ids"].shape[1] :])


@torch.no_grad()
def reply_to_dialogues(
    model: MODGPTForMemeDialogue,
    processor: MODProcessor,
    dialogues: list[list[dict]],
    candidates: list[list[str]] | None = None,
    num_memes: int | None = DEFAULT_NUM_MEMES,
    use_meme: bool | None = None,
    meme_bank: MemeBank | None = None,
    **generate_kwargs: Any,
) -> list[dict[str, Any]]:
    """
    Reply to each dialogue: generate the text (`generate_texts`), close it with `[EOS] [TAG]` and read the heads
    there: the usage head decides whether to attach a meme (`use_meme=None`; `True` always attaches the best one,
    `False` never), retrieval ranks `meme_bank` (default the model's) or each dialogue's `candidates`, and the emotion
    head reads the chosen meme's `[IMG]`. A latest turn that cannot fit the decoder is a `ValueError`, as is any bad
    input, before generating.

    Returns, per dialogue, `{"speaker", "text", "meme", "emotion", "top_memes"}`: `meme` is an id or `None`, `emotion`
    a name (an id where the config has no names) or `None`, and `top_memes` lists the `num_memes` best-ranked memes
    (all for `None`) as `{"meme": id, "score": float}`, best first. The score is the negative retrieval distance to
    the predicted meme feature (L2: minus the Euclidean distance; cosine: cosine similarity minus 1), so higher is
    better.
    """
    bank = model.meme_bank if meme_bank is None else meme_bank
    check_reply_request(processor, dialogues, candidates, num_memes, use_meme, bank)
    dialogues = [list(dialogue) for dialogue in dialogues]
    texts = generate_texts(model, processor, dialogues, meme_bank=bank, **generate_kwargs)
    replies = [{"speaker": processor.next_speaker(dialogue), "text": text} for dialogue, text in zip(dialogues, texts)]

    closed, outputs = forward_dialogues(
        model, processor, [dialogue + [reply] for dialogue, reply in zip(dialogues, replies)], meme_bank=bank
    )
    last_tag = last_per_row(closed["input_ids"] == model.config.tag_token_id)
    rankings = bank.rank(outputs.meme_predictions[last_tag], candidates)
    if use_meme is None:
        attach = outputs.usage_logits[last_tag].argmax(-1).bool().tolist()
    else:
        attach = [use_meme] * len(dialogues)
    chosen = [ranking.meme_ids[0] if uses and ranking.meme_ids else None for ranking, uses in zip(rankings, attach)]
    emotions = predict_emotions(model, processor, dialogues, replies, chosen, bank)
    return [
        {
            **reply,
            "meme": meme,
            "emotion": emotion,
            "top_memes": [
                {"meme": meme_id, "score": -distance}
                for meme_id, distance in zip(ranking.meme_ids[:num_memes], ranking.distances[:num_memes])
            ],
        }
        for reply, meme, emotion, ranking in zip(replies, chosen, emotions, rankings)
    ]


def check_reply_request(
    processor: MODProcessor,
    dialogues: list[list[dict]],
    candidates: list[list[str]] | None,
    num_memes: int | None,
    use_meme: bool | None,
    bank: MemeBank,
) -> None:
    """Raise a `ValueError` naming the first bad argument of `reply_to_dialogues`."""
    for index, dialogue in enumerate(dialogues):
        processor.check_dialogue(dialogue, index, known_memes=bank.ids)
    if candidates is not None:
        bank.check_candidates(candidates, len(dialogues))
    check_positive_int("num_memes", num_memes, or_none=True)
    if use_meme not in (None, True, False):
        raise ValueError(f"use_meme must be True, False or None (the usage head decides), got {use_meme!r}.")


def predict_emotions(
    model: MODGPTForMemeDialogue,
    processor: MODProcessor,
    dialogues: list[list[dict]],
    replies: list[dict],
    chosen: list[str | None],
    bank: MemeBank,
) -> list[int | str | None]:
    """Emotion of each chosen meme, read at its `[IMG]` after the reply; `None` where no meme was chosen."""
    with_meme = [index for index, meme in enumerate(chosen) if meme is not None]
    emotions: list[int | str | None] = [None] * len(dialogues)
    if not with_meme:
        return emotions
    answered = [dialogues[i] + [dict(replies[i], meme=chosen[i])] for i in with_meme]
    inputs, outputs = forward_dialogues(model, processor, answered, meme_bank=bank)
    last_image = last_per_row(inputs["input_ids"] == model.config.image_token_id)
    names = model.config.emotion_names
    for index, emotion_id in zip(with_meme, outputs.emotion_logits[last_image].argmax(-1).tolist()):
        emotions[index] = names[emotion_id] if names else emotion_id
    return emotions


def add_memes_from_table(
    model: MODGPTForMemeDialogue, memes: datasets.Dataset, image_processor: Any, meme_bank: MemeBank | None = None
) -> list[str]:
    """
    Add the memes of a `memes` table (the built dataset's `memes` config) that the bank (`meme_bank`, default the
    model's) lacks, such as the hard test's unseen memes: from their images through the meme encoder, or, for a model
    without one (trained on the release's features), from the table's `feature` column. Returns the ids added.
    """
    known = set((model.meme_bank if meme_bank is None else meme_bank).ids)
    new = [index for index, meme_id in enumerate(memes["meme_id"]) if meme_id not in known]
    if not new:
        return []
    rows = memes.select(new)
    if model.model.meme_encoder is not None:
        pixel_values = image_processor(rows["image"])["pixel_values"]
        model.add_memes(rows["meme_id"], pixel_values=pixel_values, meme_bank=meme_bank)
    elif "feature" not in rows.column_names or any(feature is None for feature in rows["feature"]):
        raise ValueError(
            f"Memes {rows['meme_id'][:10]} are not in the meme bank, and this model (no meme encoder: it was trained "
            "on the release's features) needs their `feature` vectors, which the memes table lacks (the release had "
            "no id2feature.json, or no vector for them)."
        )
    else:
        model.add_memes(rows["meme_id"], meme_features=torch.tensor(rows["feature"]), meme_bank=meme_bank)
    return rows["meme_id"]


# Loading a saved MOD-GPT -------------------------------------------------------------------------------------------


def model_source(model: str) -> str:
    """
    Where `model` lives: a local folder, or `hf://owner/name` for a hub repo. A path that is not a folder is a
    `FileNotFoundError`: a mistyped or not yet trained local path is never looked up on the hub.
    """
    if model.startswith(HUB_PREFIX):
        return model[len(HUB_PREFIX) :]
    if not Path(model).is_dir():
        raise FileNotFoundError(
            f"model folder {model!r} does not exist (a model on the hub is named {HUB_PREFIX}owner/name)."
        )
    return model


def load_mod_gpt_config(model: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """
    The config of a saved MOD-GPT (see `model_source`). Without `trust_remote_code`, only a MOD-GPT folder (config.json
    with model_type "mod_gpt") is taken, read with this package's `MODGPTConfig`. A config whose values do not pass the
    config's checks is a `ValueError` naming the folder.
    """
    source = model_source(model)
    if trust_remote_code:
        return AutoConfig.from_pretrained(source, trust_remote_code=True)
    model_type = saved_model_type(source)
    if model_type != MODGPTConfig.model_type:
        raise ValueError(
            f"{model!r} is not a MOD-GPT model (config.json has model_type {json.dumps(model_type)}, not "
            f'"{MODGPTConfig.model_type}"); run its own code only if you trust it (trust_remote_code).'
        )
    try:
        return MODGPTConfig.from_pretrained(source)
    except StrictDataclassError as error:
        raise ValueError(f"{model!r}: config.json is not a valid MOD-GPT config ({error})") from error


def saved_model_type(source: str) -> str | None:
    """The `model_type` in the config.json of `source` (a local folder or a hub repo id)."""
    config = PretrainedConfig.get_config_dict(source)[0]
    return config.get("model_type") if isinstance(config, dict) else None


def is_mod_gpt_folder(path: str | None) -> bool:
    """
    Whether `path` is a local folder holding a saved MOD-GPT (its config.json has model_type "mod_gpt"). A config.json
    that is not valid JSON is a `ValueError` naming it.
    """
    if path is None or not (Path(path) / "config.json").is_file():
        return False
    try:
        return saved_model_type(path) == MODGPTConfig.model_type
    except OSError as error:  # transformers' error for a config.json it cannot parse
        raise ValueError(f"{Path(path) / 'config.json'} is not valid JSON ({error}).") from error


def load_mod_gpt_model(
    model: str, trust_remote_code: bool = False, config: PretrainedConfig | None = None
) -> MODGPTForMemeDialogue:
    """
    A saved MOD-GPT in eval mode, built from this package's classes: the code files saved in the folder run only with
    `trust_remote_code=True` (then through the Auto classes). `config` defaults to `load_mod_gpt_config(model,
    trust_remote_code)`.
    """
    config = config or load_mod_gpt_config(model, trust_remote_code)
    source = model_source(model)
    if trust_remote_code:
        return AutoModel.from_pretrained(source, config=config, trust_remote_code=True).eval()
    return MODGPTForMemeDialogue.from_pretrained(source, config=config).eval()


def load_mod_gpt_processor(model: str, trust_remote_code: bool = False) -> MODProcessor:
    """The processor of a saved MOD-GPT, by this package's class unless `trust_remote_code` (see `load_mod_gpt_model`)."""
    source = model_source(model)
    if trust_remote_code:
        return AutoProcessor.from_pretrained(source, trust_remote_code=True)
    return MODProcessor.from_pretrained(source)


def load_mod_gpt(
    model: str, trust_remote_code: bool = False, config: PretrainedConfig | None = None
) -> tuple[MODGPTForMemeDialogue, MODProcessor]:
    """A saved MOD-GPT in eval mode and its processor (`load_mod_gpt_model`, `load_mod_gpt_processor`)."""
    return load_mod_gpt_model(model, trust_remote_code, config), load_mod_gpt_processor(model, trust_remote_code)


PIPELINE_REGISTRY.register_pipeline("meme-dialogue", pipeline_class=MemeDialoguePipeline, pt_model=AutoModel)
