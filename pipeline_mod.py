"""The `meme-dialogue` pipeline: a dialogue in, a reply out (text, meme id and image, emotion, top memes)."""

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY


def is_dialogue(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and bool(value) and isinstance(value[0], Mapping)


class MemeDialoguePipeline(Pipeline):
    """
    Answers dialogues given in the turn schema `{"speaker", "text", "meme", "emotion"}` with a MOD-GPT model.

    ```python
    from transformers import pipeline

    chat = pipeline(model="path/to/mod-gpt", trust_remote_code=True)
    chat([{"speaker": "speaker1", "text": "今天好开心", "meme": None, "emotion": None}])
    # {"speaker": "speaker2", "text": ..., "meme": "042", "meme_image": <PIL.Image or None>, "emotion": ...,
    #  "top_memes": [{"meme": "042", "distance": 0.31}, ...]}
    ```

    Args:
        memes (`Mapping[str, PIL.Image.Image]` or a `memes` dataset split, *optional*):
            Meme images by id, returned with each chosen meme. Memes not yet in the model's bank are added to it
            (encoded by the model's meme encoder), so they can be chosen too.
    Call arguments: `candidates` (meme ids to choose among), `top_k` (memes listed with their distances),
    `batch_size`, and any `generate` argument (`max_new_tokens`, `do_sample`, ...).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args: Any, memes: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.meme_images = self.index_memes(memes) if memes is not None else {}
        new = [meme for meme in self.meme_images if meme not in set(self.model.meme_bank_ids)]
        if new:
            pixel_values = self.processor.image_processor([self.meme_images[m] for m in new])["pixel_values"]
            self.model.add_memes(new, pixel_values=pixel_values)

    @staticmethod
    def index_memes(memes: Any) -> dict:
        if isinstance(memes, Mapping):
            return dict(memes)
        return dict(zip(memes["meme_id"], memes["image"]))

    def _sanitize_parameters(self, candidates=None, top_k=None, **generate_kwargs):
        forward_params = dict(generate_kwargs)
        if candidates is not None:
            forward_params["candidates"] = candidates
        if top_k is not None:
            forward_params["top_k"] = top_k
        return {}, forward_params, {}

    def __call__(self, dialogues, batch_size: int | None = None, **kwargs: Any):
        """One dialogue gives one reply; a list of dialogues gives a list, answered `batch_size` at a time."""
        if is_dialogue(dialogues):
            return super().__call__([dialogues], **kwargs)[0]
        if not isinstance(dialogues, Sequence) or not dialogues or not all(is_dialogue(d) for d in dialogues):
            raise ValueError("meme-dialogue expects a dialogue (a non-empty list of turn dicts) or a list of them.")
        batch_size = batch_size or self._batch_size or 1
        _, forward_params, _ = self._sanitize_parameters(**kwargs)
        replies = []
        for start in range(0, len(dialogues), batch_size):
            chunk = [self.preprocess(dialogue)["dialogue"] for dialogue in dialogues[start : start + batch_size]]
            outputs = self.forward({"dialogue": chunk}, **forward_params)
            replies += [self.postprocess(output) for output in outputs]
        return replies

    def preprocess(self, dialogue: Sequence[Mapping]) -> dict[str, Any]:
        if not is_dialogue(dialogue):
            raise ValueError("A dialogue must be a non-empty list of turns {'speaker', 'text', 'meme', 'emotion'}.")
        self.processor.check_memes(dialogue, self.model.meme_bank_ids)
        return {"dialogue": [dict(turn) for turn in dialogue]}

    def _forward(self, model_inputs: dict[str, Any], **forward_params: Any):
        return self.model.respond(model_inputs["dialogue"], self.processor, **forward_params)

    def postprocess(self, reply: dict[str, Any]) -> dict[str, Any]:
        return {
            "speaker": reply["speaker"],
            "text": reply["text"],
            "meme": reply["meme"],
            "meme_image": self.meme_images.get(reply["meme"]),
            "emotion": reply["emotion"],
            "top_memes": [{"meme": meme, "distance": distance} for meme, distance in reply["meme_scores"]],
        }


PIPELINE_REGISTRY.register_pipeline("meme-dialogue", pipeline_class=MemeDialoguePipeline, pt_model=AutoModel)
