"""The `meme-dialogue` pipeline: a dialogue in, a reply out (text, meme id and image, emotion, top memes); and
`load_mod_gpt`, which loads a saved MOD-GPT with its processor without running code from the folder."""

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from huggingface_hub.errors import StrictDataclassError
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoProcessor, Pipeline, PretrainedConfig
from transformers.pipelines import PIPELINE_REGISTRY

try:
    from .configuration_mod_gpt import MODGPTConfig
    from .modeling_mod_gpt import MemeBank, MODGPTForMemeDialogue
    from .processing_mod import MODProcessor
except ImportError:
    from configuration_mod_gpt import MODGPTConfig
    from modeling_mod_gpt import MemeBank, MODGPTForMemeDialogue
    from processing_mod import MODProcessor

HUB_PREFIX = "hf://"
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

    Replies are `MODGPTForMemeDialogue.respond`'s (see `reply_to_dialogues` for the fields; a `score` is higher for a
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
    (`None`: the usage head decides; `True`: always attach the best meme; `False`: never), `batch_size`, and any
    `generate` argument (`max_new_tokens`, `top_k`, `top_p`, `temperature`, ...), passed to `generate` untouched.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args: Any, memes: Any = None, dtype: str | torch.dtype | None = None, **kwargs: Any):
        # `pipeline(...)` passes its `dtype` on ("auto" unless given): the model was already loaded in it.
        dtype = None if dtype in (None, "auto") else model_dtype(dtype)
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
            self.model.add_memes_from_table(memes, self.processor.image_processor, meme_bank=bank)
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
        return {}, call_kwargs, {}

    def __call__(self, dialogues, batch_size: int | None = None, memes: Any = None, **kwargs: Any):
        """
        One dialogue gives one reply; a list of dialogues gives a list, answered `batch_size` at a time. `memes` (as
        the constructor takes them) are candidates of this call only.
        """
        batch, single = self.processor.dialogue_batch(dialogues)
        batch_size = (self._batch_size or 1) if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        bank, images = self.with_memes(memes, self.meme_bank, self.meme_images)
        forward_params = {**self._forward_params, **self._sanitize_parameters(**kwargs)[1], "meme_bank": bank}
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
        return self.model.respond(dialogues, self.processor, candidates=per_dialogue, **forward_params)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Save the model and the whole processor (the base class saves only its tokenizer and image processor)."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)

    def postprocess(self, reply: dict[str, Any], meme_images: dict | None = None) -> dict[str, Any]:
        images = self.meme_images if meme_images is None else meme_images
        return {**reply, "meme_image": images.get(reply["meme"])}


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
    model_type = PretrainedConfig.get_config_dict(source)[0].get("model_type")
    if model_type != MODGPTConfig.model_type:
        raise ValueError(
            f"{model!r} is not a MOD-GPT model (config.json has model_type {json.dumps(model_type)}, not "
            f'"{MODGPTConfig.model_type}"); run its own code only if you trust it (trust_remote_code).'
        )
    try:
        return MODGPTConfig.from_pretrained(source)
    except StrictDataclassError as error:
        raise ValueError(f"{model!r}: config.json is not a valid MOD-GPT config ({error})") from error


def load_mod_gpt(
    model: str, trust_remote_code: bool = False, config: PretrainedConfig | None = None
) -> tuple[MODGPTForMemeDialogue, MODProcessor]:
    """
    A saved MOD-GPT and its processor, in eval mode, built from this package's classes: the code files saved in the
    folder run only with `trust_remote_code=True` (then through the Auto classes). `config` defaults to
    `load_mod_gpt_config(model, trust_remote_code)`.
    """
    config = config or load_mod_gpt_config(model, trust_remote_code)
    source = model_source(model)
    if trust_remote_code:
        loaded = AutoModel.from_pretrained(source, config=config, trust_remote_code=True)
        return loaded.eval(), AutoProcessor.from_pretrained(source, trust_remote_code=True)
    return MODGPTForMemeDialogue.from_pretrained(source, config=config).eval(), MODProcessor.from_pretrained(source)


PIPELINE_REGISTRY.register_pipeline("meme-dialogue", pipeline_class=MemeDialoguePipeline, pt_model=AutoModel)
