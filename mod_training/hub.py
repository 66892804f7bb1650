"""
The hub side of a run: its model card, and uploads that run in the background (`upload_folder(run_as_future=True)`,
queued in order on one thread); an upload never deletes anything, and a failed one is logged and leaves the local
copy in place.
"""

import json
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path

from accelerate.logging import get_logger
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .arguments import TrainArguments, looks_local

logger = get_logger(__name__)

# No hub task fits a model that answers in text and memes, so the card names no `pipeline_tag`: the hub's widgets
# would run a stock pipeline on it. `pipeline(model=..., trust_remote_code=True)` finds the "meme-dialogue" pipeline
# in config.json (`custom_pipelines`) instead.
MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

MOD-GPT (meme-incorporated open-domain dialogue): a GPT-style decoder that replies in text, decides whether to
attach a meme, picks it by regressing its visual feature and ranking the meme bank, and predicts its emotion.
Trained with `train.py` on `{{ dataset }}`.

## Usage

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{{ model_name }}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{{ model_name }}", trust_remote_code=True)
dialogue = [{"speaker": "speaker1", "text": "你好", "meme": None, "emotion": None}]
print(model.respond(dialogue, processor))
```

## Validation

| metric | value |
|---|---|
{% for name, value in metrics.items() -%}
| {{ name }} | {{ "%.4f" | format(value) }} |
{% endfor %}
## Training arguments

```json
{{ arguments }}
```
"""


def hub_id(name: str | None) -> str | None:
    """`name` when it names a hub repository, None for a local path (which the hub must never see as an id)."""
    return name if name is not None and not looks_local(name) else None


def model_card(args: TrainArguments, metrics: dict[str, float], model_name: str) -> ModelCard:
    """
    The model card: the validation metrics (without their `eval_` prefix) in its text, and in its `model-index` when
    the dataset is on the hub; a local dataset is named in the text only.
    """
    metrics = {name.removeprefix("eval_"): value for name, value in metrics.items()}
    dataset = hub_id(args.dataset)
    results = [
        EvalResult(
            task_type="text-generation",
            task_name="Meme-incorporated open-domain dialogue",
            dataset_type=dataset,
            dataset_name="MOD (DSTC10 Track 1)",
            dataset_split="validation",
            metric_type=name,
            metric_value=round(value, 4),
        )
        for name, value in metrics.items()
        if dataset is not None
    ]
    data = ModelCardData(
        model_name=model_name,
        base_model=hub_id(args.init_from),
        datasets=[dataset] if dataset else None,
        eval_results=results or None,
        library_name="transformers",
        tags=["meme-dialogue", "mod-gpt", "custom_code"],
        license="apache-2.0",
    )
    arguments = json.dumps({k: v for k, v in asdict(args).items() if v is not None}, indent=2, ensure_ascii=False)
    return ModelCard.from_template(
        data,
        template_str=MODEL_CARD_TEMPLATE,
        model_name=model_name,
        dataset=args.dataset,
        metrics=metrics,
        arguments=arguments,
    )


def write_model_card(folder: Path, args: TrainArguments, metrics: dict[str, float], model_name: str) -> None:
    model_card(args, metrics, model_name).save(folder / "README.md")


def start_hub_repo(repo_id: str) -> HfApi:
    """The client that pushes the run, with the repository's creation queued first."""
    api = HfApi()
    api.run_as_future(api.create_repo, repo_id, exist_ok=True)
    return api


def upload(api: HfApi, repo_id: str, folder: Path, path_in_repo: str | None = None) -> Future:
    """Queue the upload of every file of `folder` into `path_in_repo` (the repository's root by default)."""
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        path_in_repo=path_in_repo,
        commit_message=f"Upload {path_in_repo or 'the model'}",
        run_as_future=True,
    )


def upload_finished(upload: Future | None) -> bool:
    """Whether an upload is done and succeeded (so its local copy may go)."""
    return upload is not None and upload.done() and upload.exception() is None


def wait_for_uploads(uploads: dict[Path, Future]) -> None:
    """Wait for every upload; log the folders whose upload failed (their local copies are kept)."""
    failed = {str(folder): upload.exception() for folder, upload in uploads.items() if upload.exception() is not None}
    if failed:
        logger.error("These uploads failed; the local copies are kept: %s", failed)
