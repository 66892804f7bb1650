"""Statistics of the built data (the paper's Tables 1 and 2) and the dataset card."""

from pathlib import Path

import yaml
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard

from .release import SPLITS, TASK_VIEWS, Release

RECORD_KEY = "mod_release"  # the card's YAML key that says what the release had
CONFIG_DESCRIPTIONS = {
    "dialogues": "whole dialogues: `dialogue_id`, `turns` = list of `{speaker, text, meme, emotion}`",
    "memes": "`meme_id`, `image` (embedded bytes), `file_name`, `seen` (used in train; null without a train split), "
    "`feature` when the release has `id2feature.json`",
    "response": "task 1, text response: `id`, `history` (turns), `speaker` (who answers), `answer` (the text)",
    "retrieval": "task 2, meme retrieval: `id`, `history` (the turns before the reply), `speaker`, `answer_text` (the "
    "reply's text, null for a meme-only reply), `candidates` (meme ids, as given: 10 or 11), `answer` (the gold meme)",
    "emotion": "task 3, meme emotion: `id`, `history` (its last turn holds the meme, without its emotion), `speaker`, "
    "`answer` (the emotion)",
}
CITATION = """@article{fei2021towards,
  title={Towards Expressive Communication with Internet Memes: A New Multimodal Conversation Dataset and Benchmark},
  author={Fei, Zhengcong and Li, Zekang and Zhang, Jinchao and Feng, Yang and Zhou, Jie},
  journal={arXiv preprint arXiv:2109.01839},
  year={2021}
}"""


def split_statistics(rows: list[dict], train_memes: set[str] | None) -> dict[str, float | None]:
    turns = [turn for row in rows for turn in row["turns"]]
    texts = [turn["text"] for turn in turns if turn["text"]]
    memes = [turn["meme"] for turn in turns if turn["meme"] is not None]
    return {
        "dialogues": len(rows),
        "utterances": len(turns),
        "avg_turns": len(turns) / max(len(rows), 1),
        "avg_chars": sum(len(text) for text in texts) / max(len(texts), 1),
        "meme_turns": len(memes),
        "meme_ratio": len(memes) / max(len(turns), 1),
        "text_only": sum(1 for t in turns if t["text"] and t["meme"] is None),
        "meme_only": sum(1 for t in turns if not t["text"] and t["meme"] is not None),
        "text_and_meme": sum(1 for t in turns if t["text"] and t["meme"] is not None),
        "distinct_memes": len(set(memes)),
        "unseen_memes": len(set(memes) - train_memes) if train_memes is not None else None,
    }


def statistics(dialogues: dict[str, list[dict]], num_memes: int, num_emotions: int) -> dict[str, dict]:
    """The statistics of the built dialogues; memes count as unseen against train, unknown (None) without it."""
    train = dialogues.get("train")
    train_memes = (
        None if train is None else {t["meme"] for row in train for t in row["turns"] if t["meme"] is not None}
    )
    per_split = {split: split_statistics(rows, train_memes) for split, rows in dialogues.items()}
    overall = split_statistics([row for rows in dialogues.values() for row in rows], train_memes)
    overall.update(memes=num_memes, emotions=num_emotions)
    return {"overall": overall, "splits": per_split}


def format_statistics(stats: dict[str, dict]) -> str:
    overall = stats["overall"]
    lines = [
        "Table 1: overall",
        f"  dialogues {overall['dialogues']}, utterances {overall['utterances']}, "
        f"avg turns/dialogue {overall['avg_turns']:.2f}, avg characters/text {overall['avg_chars']:.2f}",
        f"  memes {overall['memes']}, emotions {overall['emotions']}, meme usage {100 * overall['meme_ratio']:.1f}% "
        f"(text only {overall['text_only']}, meme only {overall['meme_only']}, text+meme {overall['text_and_meme']})",
        "",
        "Table 2: splits",
        f"  {'split':<11}{'dialogues':>10}{'utterances':>11}{'avg turns':>10}{'meme turns':>11}{'memes':>7}{'unseen':>7}",
    ]
    for split, s in stats["splits"].items():
        unseen = "-" if s["unseen_memes"] is None else s["unseen_memes"]
        lines.append(
            f"  {split:<11}{s['dialogues']:>10}{s['utterances']:>11}{s['avg_turns']:>10.2f}"
            f"{s['meme_turns']:>11}{s['distinct_memes']:>7}{unseen:>7}"
        )
    return "\n".join(lines)


def release_record(release: Release, splits: list[str]) -> dict:
    """What the release had, for code as well as people: the splits built and those not, the dialogue and task files
    it lacked, and, by split, the task views whose answers are blank (null) because the release left them
    unannotated."""
    return {
        "splits": splits,
        "missing_splits": [split for split in SPLITS if split not in splits],
        "missing_files": list(release.missing_files),
        "unannotated": {split: [TASK_VIEWS[task] for task in tasks] for split, tasks in release.blank_tasks.items()},
    }


def format_release(record: dict) -> str:
    unannotated = "; ".join(f"{split} ({', '.join(views)})" for split, views in record["unannotated"].items())
    return "\n".join(
        [
            "Release",
            f"  splits built: {', '.join(record['splits'])}; not built: {', '.join(record['missing_splits']) or 'none'}",
            f"  missing files: {', '.join(record['missing_files']) or 'none'}",
            f"  blank answers (unannotated, null in the task views): {unannotated or 'none'}",
        ]
    )


def dataset_info(files: dict[str, dict[str, dict]]) -> list[dict]:
    """The card's `dataset_info`: by config, each split's rows and Arrow bytes. `datasets` checks the rows it loads
    against `num_examples`, and keys its cache of a local folder on this block."""
    return [
        {
            "config_name": config,
            "splits": [
                {"name": split, "num_bytes": f["num_bytes"], "num_examples": f["num_examples"]}
                for split, f in splits.items()
            ],
            "dataset_size": sum(f["num_bytes"] for f in splits.values()),
        }
        for config, splits in files.items()
    ]


def expected_counts(dataset: str | Path) -> dict[str, dict[str, int]] | None:
    """The rows by config and split that the dataset card of a local folder declares (`dataset_info`), to compare
    with the rows loaded from it; None for a hub id, or a folder whose card declares none."""
    card = Path(dataset) / "README.md"
    if not card.is_file():
        return None
    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(card).data)
    counts = {
        config: {split: info.splits[split].num_examples for split in info.splits}
        for config, info in infos.items()
        if info.splits
    }
    return counts or None


def check_row_counts(dataset: str | Path, loaded: dict) -> None:
    """
    Raise a `ValueError` naming every config and split of `loaded` (`DatasetDict`s by config name) whose rows differ
    from those the card of `dataset` declares: a stale `datasets` cache, or files changed after the build. A dataset
    whose card declares none (a hub id) is not checked.
    """
    expected = expected_counts(dataset) or {}
    mismatches = [
        f"config {config!r}, split {split!r} loaded {len(splits[split]) if split in splits else 0} rows but the "
        f"dataset card declares {expected[config].get(split, 0)}"
        for config, splits in loaded.items()
        if config in expected
        for split in sorted({*expected[config], *splits})
        if (len(splits[split]) if split in splits else 0) != expected[config].get(split, 0)
    ]
    if mismatches:
        raise ValueError(
            f"{'; '.join(mismatches)}. The `datasets` cache may hold another dataset of the same folder name, or the "
            f"files changed after the build: clear the cache (HF_DATASETS_CACHE) or rebuild {dataset}."
        )


def dataset_card(tables: dict, files: dict, record: dict, emotions: list[str], language: str) -> str:
    configs = [
        {
            "config_name": config,
            **({"default": True} if config == "dialogues" else {}),
            "data_files": [{"split": split, "path": f["path"]} for split, f in splits.items()],
        }
        for config, splits in files.items()
    ]
    header = {
        "language": [language],
        "license": "other",
        "license_name": "mod-research-only",
        "pretty_name": "MOD: Meme incorporated Open-domain Dialogue",
        "task_categories": ["text-generation"],
        "tags": ["dialogue", "memes", "multimodal", "dstc10"],
        "configs": configs,
        "dataset_info": dataset_info(files),
        RECORD_KEY: record,
    }
    stats = statistics(tables["dialogues"], len(tables["memes"]["train"]), len(emotions))
    count_lines = "\n".join(
        f"| {config} | " + ", ".join(f"{split}: {f['num_examples']}" for split, f in splits.items()) + " |"
        for config, splits in files.items()
    )
    config_lines = "\n".join(f"- `{name}`: {text}" for name, text in CONFIG_DESCRIPTIONS.items())
    return f"""---
{yaml.safe_dump(header, allow_unicode=True, sort_keys=False)}---

# MOD: Meme incorporated Open-domain Dialogue

Multi-turn open-domain dialogues in which speakers answer with text, with an Internet meme (a sticker image), or
with both; the data of DSTC10 Track 1, from *Towards Expressive Communication with Internet Memes: A New
Multimodal Conversation Dataset and Benchmark* (Fei et al., 2021). Converted with `python -m mod_dataset build`
into Parquet files that `datasets.load_dataset` reads without custom code:

```python
from datasets import load_dataset
dialogues = load_dataset("<this folder or repo>")            # {", ".join(record["splits"])}
memes = load_dataset("<this folder or repo>", "memes")
```

## Configs

{config_lines}

A turn is `{{"speaker": "speaker1" | "speaker2", "text": str | None, "meme": str | None, "emotion": int | None}}`,
`emotion` being a class label named after `emotion_dict.json` (None where a meme turn has no `emotion_id`).

The task views use the official instances and candidate sets where the release has task files; for a split with
dialogues only (`train`, or `validation` without its task files) they are cut from the dialogues at every answer,
with the gold and up to 9 other memes of `train` as candidates, sampled with a fixed seed. In `retrieval` the reply's text, which the release gives as
the last history turn, is `answer_text` and not part of `history`. An answer the release leaves blank (a test
release handed out for submission) is null.

A split with task files only (the tests) has no whole dialogues in the release; its `dialogues` hold only turns
whose meme use the release states. Each instance gives a path of turns: task 1 its history (whether its answer came
with a meme is not said), task 2 its history with the reply as one turn (its text and the gold meme), task 3 its
history, the gold emotion on the last turn; a blank answer is left out. A path that is the start of another
(speaker, text and meme alike) is dropped, so no turn counts twice; `dialogue_id` names the instance kept, e.g.
`easy_test task2 17`. The hard test holds memes never used in `train` (`seen` is false for them in `memes`).

| config | rows per split |
|---|---|
{count_lines}

## Release

The YAML key `{RECORD_KEY}` above holds the same record: `splits`, `missing_splits`, `missing_files`, and
`unannotated` (by split, the task views whose answers are all null).

```
{format_release(record)}
```

## Statistics

```
{format_statistics(stats)}
```

## Licence

The MOD data is released by its authors for research use only; it may not be used commercially. Meme images keep
the rights of their owners. Check the terms of the original release before redistributing this conversion.

## Citation

```bibtex
{CITATION}
```
"""
