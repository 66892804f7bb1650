"""Convert a checked release into Parquet files and a dataset card that `datasets.load_dataset` reads as is."""

import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path

import datasets
import pyarrow as pa

from output_folders import read_marker, why_not_writable

from .card import dataset_card, release_record
from .release import (
    ANSWER_FIELDS,
    SPLITS,
    TASK_SPLITS,
    TASK_VIEWS,
    Release,
    count_reasons,
    image_path,
    is_blank,
    read_release,
)

DERIVED_SEED = 1234
NUM_CANDIDATES = 10
# Written into every built folder: only a folder that has it is ever replaced by a new build.
MARKER = ".mod_dataset.json"
BUILDER = "mod_dataset"
FORMAT_VERSION = 1


class OutputFolderError(ValueError):
    """The output folder is refused because building there could destroy what the builder did not make; nothing is
    changed."""


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


def gold(instance: dict, task: str) -> str | int | None:
    """The instance's gold answer, `None` when the release leaves it blank."""
    return None if is_blank(task, instance["answer"]) else instance["answer"][ANSWER_FIELDS[task]]


def split_reply(instance: dict) -> tuple[list[dict], str | None]:
    """A task 2 instance's history before the reply, and the reply's text. In the official layout that text is the
    last history turn (the answering speaker's, text only); a meme-only reply has no such turn."""
    turns, last = instance["history"], instance["history"][-1]
    if last["speaker_id"] == instance["answer"]["speaker_id"] and last.get("txt") and "img_id" not in last:
        return [to_turn(t) for t in turns[:-1]], last["txt"]
    return [to_turn(t) for t in turns], None


def without_last_emotion(turns: list[dict]) -> list[dict]:
    """An emotion instance's history: its last turn holds the meme, and the answer (not the turn) its emotion."""
    return [*turns[:-1], {**turns[-1], "emotion": None}]


def response_row(key: str, instance: dict) -> dict:
    history = [to_turn(t) for t in instance["history"]]
    return {"id": key, "history": history, "speaker": speaker(instance), "answer": gold(instance, "task1")}


def retrieval_row(key: str, instance: dict) -> dict:
    history, text = split_reply(instance)
    meme = gold(instance, "task2")
    return {
        "id": key,
        "history": history,
        "speaker": speaker(instance),
        "answer_text": text,
        "candidates": [str(m) for m in instance["candidate"]["set"]],
        "answer": str(meme) if meme is not None else None,
    }


def emotion_row(key: str, instance: dict) -> dict:
    history = without_last_emotion([to_turn(t) for t in instance["history"]])
    return {"id": key, "history": history, "speaker": speaker(instance), "answer": gold(instance, "task3")}


def speaker(instance: dict) -> str:
    return instance["answer"]["speaker_id"].strip("[]")


VIEW_ROWS = {"task1": response_row, "task2": retrieval_row, "task3": emotion_row}


def official_views(release: Release, split: str) -> dict[str, list[dict]]:
    return {
        TASK_VIEWS[task]: [VIEW_ROWS[task](f"{split} {task} {i}", x) for i, x in enumerate(instances)]
        for task, instances in release.tasks[split].items()
    }


def instance_path(instance: dict, task: str) -> list[dict]:
    """The turns of a task instance whose meme use the release states: task 1 leaves its answer out (whether it
    came with a meme is not said), task 2 merges the reply's text and gold meme into one turn, task 3 puts the gold
    emotion on its last turn. A blank answer is left out."""
    answer = gold(instance, task)
    if task == "task2":
        history, text = split_reply(instance)
        reply = {"speaker": speaker(instance), "text": text, "meme": str(answer), "emotion": None}
        return history + ([reply] if answer is not None else [])
    turns = [to_turn(t) for t in instance["history"]]
    if task == "task3" and answer is not None:
        turns[-1]["emotion"] = answer
    return turns


def longest_paths(paths: list[tuple[str, list[dict]]]) -> list[dict]:
    """The paths that are no prefix of another path (turns compared on speaker, text and meme), in their order. In
    sorted order the paths that start with a given path follow it directly, so comparing each path with the next
    one finds every prefix; of equal paths the last is kept."""
    keys = [tuple((t["speaker"], t["text"] or "", t["meme"] or "") for t in turns) for _, turns in paths]
    order = sorted(range(len(paths)), key=keys.__getitem__)
    covered = {
        shorter for shorter, longer in zip(order, order[1:]) if keys[longer][: len(keys[shorter])] == keys[shorter]
    }
    return [{"dialogue_id": key, "turns": turns} for i, (key, turns) in enumerate(paths) if i not in covered and turns]


def dialogue_rows(release: Release, split: str) -> list[dict]:
    """The split's dialogues; a split with task files only (the tests) gets the longest paths of its instances."""
    if split in release.dialogues:
        return [
            {"dialogue_id": i, "turns": [to_turn(t) for t in turns]} for i, turns in release.dialogues[split].items()
        ]
    paths = [
        (f"{split} {task} {index}", instance_path(instance, task))
        for task, instances in release.tasks[split].items()
        for index, instance in enumerate(instances)
    ]
    return longest_paths(paths)


def derived_views(dialogues: list[dict], meme_ids: list[str], split: str) -> dict[str, list[dict]]:
    """Task views cut from whole dialogues at every answer, with the gold and up to 9 other memes as candidates
    (sampled with a fixed seed; fewer when the release has fewer memes)."""
    rng = random.Random(f"{DERIVED_SEED}-{split}")
    views = {"response": [], "retrieval": [], "emotion": []}
    for row in dialogues:
        turns = row["turns"]
        for k, turn in enumerate(turns):
            base = {"id": f"{row['dialogue_id']} turn {k}", "history": turns[:k], "speaker": turn["speaker"]}
            # Every turn with an emotion, the first included, as the organisers' emotion reader takes them.
            if turn["meme"] is not None and turn["emotion"] is not None:
                views["emotion"].append(
                    {**base, "history": without_last_emotion(turns[: k + 1]), "answer": turn["emotion"]}
                )
            if k == 0:  # a response and a retrieval instance answer a history
                continue
            if turn["text"]:
                views["response"].append({**base, "answer": turn["text"]})
            if turn["meme"] is not None:
                others = [m for m in meme_ids if m != turn["meme"]]
                candidates = [turn["meme"], *rng.sample(others, min(NUM_CANDIDATES - 1, len(others)))]
                rng.shuffle(candidates)
                views["retrieval"].append(
                    {**base, "answer_text": turn["text"], "candidates": candidates, "answer": turn["meme"]}
                )
    return views


def meme_rows(release: Release, train_memes: set[str] | None) -> list[dict]:
    """One row per meme; `seen` (used in train) is `None` when the release has no train dialogues."""
    rows = []
    for meme_id in sorted(release.meme_files):
        file_name = release.meme_files[meme_id]
        path = image_path(release.root, file_name)
        row = {
            "meme_id": meme_id,
            "image": {"bytes": path.read_bytes(), "path": path.name},
            "file_name": file_name,
            "seen": meme_id in train_memes if train_memes is not None else None,
        }
        if release.features:
            row["feature"] = release.features.get(meme_id)
        rows.append(row)
    return rows


def build_tables(release: Release) -> dict[str, dict[str, list[dict]]]:
    """Every config's rows, by split; a split is built when the release has its dialogues or task files."""
    splits = [split for split in SPLITS if split in release.dialogues or split in release.tasks]
    dialogues = {split: dialogue_rows(release, split) for split in splits}
    train_memes = used_memes(dialogues["train"]) if "train" in dialogues else None
    tables = {"dialogues": dialogues, "memes": {"train": meme_rows(release, train_memes)}}
    pool = sorted(train_memes or release.meme_files)  # the negatives of derived views: train's memes if known
    for split in splits:
        views = (
            official_views(release, split) if split in release.tasks else derived_views(dialogues[split], pool, split)
        )
        for name, rows in views.items():
            tables.setdefault(name, {})[split] = rows
    return tables


def used_memes(dialogues: list[dict]) -> set[str]:
    return {t["meme"] for row in dialogues for t in row["turns"] if t["meme"] is not None}


def to_table(rows: list[dict], features: datasets.Features) -> pa.Table:
    """The rows (maybe none) as an Arrow table of the features' schema, which carries the features for
    `load_dataset`. The rows already hold their stored form (checked by `read_release`; an image as its
    `{bytes, path}`), so nothing is encoded in Python."""
    return pa.Table.from_pydict({name: [row[name] for row in rows] for name in features}, schema=features.arrow_schema)


def write_tables(
    tables: dict[str, dict[str, list[dict]]], features: dict[str, datasets.Features], out: Path
) -> dict[str, dict[str, dict]]:
    """Write every config's splits as Parquet files, one Arrow table at a time, with the writer of
    `Dataset.to_parquet`; return, by config and split, each file's `path`, its `num_examples` and `num_bytes` (in
    Arrow). Each file is named after a digest of its bytes: the card names the files, and `datasets` keys its cache of
    a local folder on the card, so a rebuilt folder (or another folder of the same name) is never read from the cache
    of different data."""
    files: dict[str, dict[str, dict]] = {}
    for config, splits in tables.items():
        (out / config).mkdir(parents=True, exist_ok=True)
        for split, rows in splits.items():
            written = out / config / f"{split}.parquet"
            table = to_table(rows, features[config])
            # A fingerprint given: `Dataset` would otherwise hash the whole table, a pickled copy of it in memory.
            datasets.Dataset(table, fingerprint=f"{config}-{split}").to_parquet(str(written))
            path = f"{config}/{split}-{hashlib.sha256(written.read_bytes()).hexdigest()[:16]}.parquet"
            written.rename(out / path)
            files.setdefault(config, {})[split] = {
                "path": path,
                "num_examples": table.num_rows,
                "num_bytes": table.nbytes,
            }
    return files


def check_output(out: Path, raw_dir: Path) -> None:
    """Refuse an output folder that is the release folder, holds it or lies inside it, and an existing one that is
    neither empty nor built by this package (recognised by its marker file; a dataset card alone proves nothing)."""
    release = raw_dir.resolve()
    if out == release or out in release.parents:
        raise OutputFolderError(
            f"the output folder {out} is the release folder or holds it ({release}); nothing was changed: "
            "give a folder outside the release"
        )
    if release in out.parents:
        raise OutputFolderError(
            f"the output folder {out} lies inside the release folder {release}; nothing was changed: "
            "give a folder outside the release"
        )
    problem = why_not_writable(out, MARKER, BUILDER, is_built)
    if problem:
        raise OutputFolderError(
            f"the output folder {out} {problem}; nothing was changed: give a new or empty folder, or remove this one "
            "yourself"
        )


def is_built(folder: Path) -> bool:
    """Whether `folder` holds the marker file of a folder this package built."""
    return (read_marker(folder, MARKER) or {}).get("builder") == BUILDER


def move_into_place(staging: Path, out: Path) -> None:
    """Rename the staged folder to `out`. A folder already there (empty, or built by this package) is moved aside
    first, put back if the rename fails, and deleted only once the new folder is in place."""
    if not out.exists():
        staging.rename(out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
    old = out.rename(aside / out.name)
    try:
        staging.rename(out)
    except BaseException:
        old.rename(out)
        aside.rmdir()
        raise
    shutil.rmtree(aside)


def build_dataset(raw_dir: str | Path, out_dir: str | Path, language: str = "zh", skip_invalid: bool = False) -> dict:
    """
    Convert the release in `raw_dir` into a hub dataset folder `out_dir`. Raises `InvalidReleaseError` listing
    every problem unless `skip_invalid`, which leaves the bad rows out and returns the count by reason under
    `"skipped"`. Problems of a whole file are never skipped: malformed JSON, a split with only some of its three
    task files, a task file mixing blank and annotated answers.

    `out_dir` may be new, empty, or a folder built here before (it holds the marker file `.mod_dataset.json`), which
    is replaced whole; anything else, and a folder that is, holds or lies inside the release, raises
    `OutputFolderError` before any work. The folder is written next to `out_dir` first and moved into place whole,
    so a failed build leaves nothing half-written and an existing `out_dir` untouched. Returns the rows per config
    and split (`"counts"`) and what the release had (`"release"`, the card's record).
    """
    out = Path(out_dir).resolve()
    check_output(out, Path(raw_dir))
    release = read_release(Path(raw_dir), language, skip_invalid)
    tables = build_tables(release)
    feature_size = len(next(iter(release.features.values()))) if release.features else None
    features = config_features(release.emotions, feature_size)
    record = release_record(release, list(tables["dialogues"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-new-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the built folder is meant to be shared like any other
    try:
        datasets.disable_progress_bars()
        files = write_tables(tables, features, staging)
        card = dataset_card(tables, files, record, release.emotions, language)
        (staging / "README.md").write_text(card, encoding="utf-8")
        marker = {"builder": BUILDER, "format": FORMAT_VERSION}
        (staging / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        check_output(out, Path(raw_dir))  # again: the folder may have changed while the dataset was built
        move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    counts = {config: {split: f["num_examples"] for split, f in splits.items()} for config, splits in files.items()}
    return {"counts": counts, "skipped": count_reasons(release.skipped), "release": record}


def push_to_hub(out_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a built folder as a dataset repo (created if needed)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    # The Parquet files of an earlier upload have other names (digests of their bytes): replace them all.
    commit = api.upload_folder(
        folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset", delete_patterns=["*.parquet"]
    )
    return str(getattr(commit, "commit_url", commit))


__all__ = ["SPLITS", "OutputFolderError", "build_dataset", "push_to_hub", "TASK_SPLITS"]
