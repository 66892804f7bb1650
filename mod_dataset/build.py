"""Convert a checked release into Parquet files and a dataset card that `datasets.load_dataset` reads as is."""

import random
import shutil
import tempfile
from pathlib import Path

import datasets

from .card import dataset_card
from .release import TASK_SPLITS, Release, count_reasons, read_release

SPLITS = ("train", "validation", "easy_test", "hard_test")
DERIVED_SEED = 1234
NUM_CANDIDATES = 10


def turn_features(emotions: list[str]) -> dict:
    return {
        "speaker": datasets.Value("string"),
        "text": datasets.Value("string"),
        "meme": datasets.Value("string"),
        "emotion": datasets.ClassLabel(names=emotions),
    }


def config_features(emotions: list[str], feature_size: int | None) -> dict[str, datasets.Features]:
    turns = datasets.List(turn_features(emotions))
    view = {"id": datasets.Value("string"), "history": turns, "speaker": datasets.Value("string")}
    memes = {
        "meme_id": datasets.Value("string"),
        "image": datasets.Image(),
        "file_name": datasets.Value("string"),
        "seen": datasets.Value("bool"),
    }
    if feature_size:
        memes["feature"] = datasets.List(datasets.Value("float32"), length=feature_size)
    return {
        "dialogues": datasets.Features({"dialogue_id": datasets.Value("string"), "turns": turns}),
        "memes": datasets.Features(memes),
        "response": datasets.Features({**view, "answer": datasets.Value("string")}),
        "retrieval": datasets.Features(
            {
                **view,
                "answer_text": datasets.Value("string"),
                "candidates": datasets.List(datasets.Value("string")),
                "answer": datasets.Value("string"),
            }
        ),
        "emotion": datasets.Features({**view, "answer": datasets.ClassLabel(names=emotions)}),
    }


def to_turn(turn: dict) -> dict:
    """A release turn in the dataset's schema: speaker without brackets, `None` for what the turn lacks."""
    meme = turn.get("img_id")
    return {
        "speaker": turn["speaker_id"].strip("[]"),
        "text": turn.get("txt") or None,
        "meme": str(meme) if meme is not None else None,
        "emotion": turn.get("emotion_id") if meme is not None else None,
    }


def answer_turn(instance: dict, task: str) -> dict:
    answer = instance["answer"]
    turn = {"speaker_id": answer["speaker_id"], "txt": answer.get("txt")}
    if task == "task2":
        turn["img_id"] = answer["img_id"]
    if task == "task3":  # the answer is the emotion of the meme in the last history turn
        return {}
    return turn


def dialogue_rows(release: Release, split: str) -> list[dict]:
    if split in release.dialogues:
        return [
            {"dialogue_id": i, "turns": [to_turn(t) for t in turns]} for i, turns in release.dialogues[split].items()
        ]
    rows = []
    for task, instances in release.tasks.get(split, {}).items():
        for index, instance in enumerate(instances):
            turns = [to_turn(t) for t in instance["history"]]
            answer = answer_turn(instance, task)
            rows.append(
                {"dialogue_id": f"{split} {task} {index}", "turns": turns + ([to_turn(answer)] if answer else [])}
            )
    return rows


def official_views(release: Release, split: str) -> dict[str, list[dict]]:
    tasks = release.tasks[split]
    response = [
        {
            "id": f"{split} task1 {i}",
            "history": [to_turn(t) for t in x["history"]],
            "speaker": x["answer"]["speaker_id"].strip("[]"),
            "answer": x["answer"]["txt"],
        }
        for i, x in enumerate(tasks["task1"])
    ]
    retrieval = [
        {
            "id": f"{split} task2 {i}",
            "history": [to_turn(t) for t in x["history"]],
            "speaker": x["answer"]["speaker_id"].strip("[]"),
            "answer_text": x["answer"].get("txt") or None,
            "candidates": [str(m) for m in x["candidate"]["set"]],
            "answer": str(x["answer"]["img_id"]),
        }
        for i, x in enumerate(tasks["task2"])
    ]
    emotion = [
        {
            "id": f"{split} task3 {i}",
            "history": [to_turn(t) for t in x["history"]],
            "speaker": x["answer"]["speaker_id"].strip("[]"),
            "answer": x["answer"]["emotion_id"],
        }
        for i, x in enumerate(tasks["task3"])
    ]
    return {"response": response, "retrieval": retrieval, "emotion": emotion}


def derived_views(dialogues: list[dict], meme_ids: list[str], split: str) -> dict[str, list[dict]]:
    """Task views cut from whole dialogues at every answer, with 1 gold + 9 sampled candidates (fixed seed)."""
    rng = random.Random(f"{DERIVED_SEED}-{split}")
    views = {"response": [], "retrieval": [], "emotion": []}
    for row in dialogues:
        turns = row["turns"]
        for k in range(1, len(turns)):
            turn, history, key = turns[k], turns[:k], f"{row['dialogue_id']} turn {k}"
            base = {"id": key, "history": history, "speaker": turn["speaker"]}
            if turn["text"]:
                views["response"].append({**base, "answer": turn["text"]})
            if turn["meme"] is not None:
                others = rng.sample([m for m in meme_ids if m != turn["meme"]], NUM_CANDIDATES - 1)
                candidates = [turn["meme"], *others]
                rng.shuffle(candidates)
                views["retrieval"].append(
                    {**base, "answer_text": turn["text"], "candidates": candidates, "answer": turn["meme"]}
                )
                if turn["emotion"] is not None:
                    views["emotion"].append({**base, "history": turns[: k + 1], "answer": turn["emotion"]})
    return views


def meme_rows(release: Release, seen: set[str]) -> list[dict]:
    rows = []
    for meme_id in sorted(release.meme_files):
        file_name = release.meme_files[meme_id]
        row = {
            "meme_id": meme_id,
            "image": {"bytes": (release.root / "meme_set" / file_name).read_bytes(), "path": file_name},
            "file_name": file_name,
            "seen": meme_id in seen,
        }
        if release.features is not None:
            row["feature"] = release.features.get(meme_id)
        rows.append(row)
    return rows


def build_tables(release: Release) -> dict[str, dict[str, list[dict]]]:
    """Every config's rows, by split."""
    dialogues = {split: dialogue_rows(release, split) for split in SPLITS}
    seen = {t["meme"] for row in dialogues["train"] for t in row["turns"] if t["meme"] is not None}
    tables = {"dialogues": dialogues, "memes": {"train": meme_rows(release, seen)}}
    for split in SPLITS:
        has_tasks = all(release.tasks.get(split, {}).get(task) is not None for task in ("task1", "task2", "task3"))
        views = official_views(release, split) if has_tasks else derived_views(dialogues[split], sorted(seen), split)
        for name, rows in views.items():
            tables.setdefault(name, {})[split] = rows
    return tables


def write_tables(tables: dict[str, dict[str, list[dict]]], features: dict[str, datasets.Features], out: Path) -> None:
    for config, splits in tables.items():
        for split, rows in splits.items():
            path = out / config / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            dataset = datasets.Dataset.from_list(rows, features=features[config])
            dataset.to_parquet(str(path))


def build_dataset(raw_dir: str | Path, out_dir: str | Path, language: str = "zh", skip_invalid: bool = False) -> dict:
    """
    Convert the release in `raw_dir` into a hub dataset folder `out_dir`. Raises `InvalidReleaseError` listing
    every problem unless `skip_invalid`, which leaves the bad rows out and returns the count by reason under
    `"skipped"`. The folder is written elsewhere first and moved into place whole, so a failed build leaves
    nothing half-written (and an existing `out_dir` untouched).
    """
    release = read_release(Path(raw_dir), language, skip_invalid)
    tables = build_tables(release)
    feature_size = len(next(iter(release.features.values()))) if release.features else None
    features = config_features(release.emotions, feature_size)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the built folder is meant to be shared like any other
    try:
        datasets.disable_progress_bars()
        write_tables(tables, features, staging)
        counts = {config: {split: len(rows) for split, rows in splits.items()} for config, splits in tables.items()}
        (staging / "README.md").write_text(dataset_card(tables, counts, release, language), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"counts": counts, "skipped": count_reasons(release.skipped)}


def push_to_hub(out_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a built folder as a dataset repo (created if needed)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset")
    return str(getattr(commit, "commit_url", commit))


__all__ = ["SPLITS", "build_dataset", "push_to_hub", "TASK_SPLITS"]
