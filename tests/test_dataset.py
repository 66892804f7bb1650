"""mod_dataset: the built sample against the raw release files, loading in a fresh process, the release variants
(train/validation only, blank test answers, tests alone, a few memes), every kind of bad input reported at once (or
skipped), atomic and deterministic builds, the dataset card, stats, and the hub upload."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO_ROOT
from PIL import Image

import mod_dataset.build as builder
from mod_dataset import (
    SAMPLE_DIR,
    SPLITS,
    InvalidReleaseError,
    build_dataset,
    expected_counts,
    make_sample,
    push_to_hub,
)
from mod_dataset.__main__ import main

TASKS = ("task1", "task2", "task3")
TASK_FILES = {"validation": "c_val", "easy_test": "c_test_easy", "hard_test": "c_test_hard"}
TEST_SPLITS = ("easy_test", "hard_test")
VIEWS = {"task1": "response", "task2": "retrieval", "task3": "emotion"}
ANSWER_FIELDS = {"task1": "txt", "task2": "img_id", "task3": "emotion_id"}

# Run in a fresh interpreter from another folder: only `datasets` reads the built folder, no code of this repo.
LOADER = textwrap.dedent(
    """
    import hashlib, json, sys
    import datasets
    from PIL import Image

    folder = sys.argv[1]
    dialogues = datasets.load_dataset(folder)
    memes = datasets.load_dataset(folder, "memes")
    views = {name: datasets.load_dataset(folder, name) for name in ("response", "retrieval", "emotion")}
    json.dump(
        {
            "splits": {split: ds.to_list() for split, ds in dialogues.items()},
            "emotions": dialogues["train"].features["turns"].feature["emotion"].names,
            "meme_splits": list(memes),
            "memes": [
                {
                    "meme_id": row["meme_id"],
                    "file_name": row["file_name"],
                    "seen": row["seen"],
                    "is_pil": isinstance(row["image"], Image.Image),
                    "size": list(row["image"].size),
                    "pixels": hashlib.sha256(row["image"].convert("RGB").tobytes()).hexdigest(),
                }
                for row in memes["train"]
            ],
            "views": {name: {split: ds.to_list() for split, ds in view.items()} for name, view in views.items()},
            "repo_code_imported": any(name.startswith("mod_dataset") for name in sys.modules),
        },
        sys.stdout,
        ensure_ascii=False,
    )
    """
)


def raw(name: str, root: Path = SAMPLE_DIR):
    return json.loads((root / name).read_text(encoding="utf-8"))


def task_file(split: str, task: str) -> str:
    return f"{TASK_FILES[split]}_{task}.json"


def emotion_names() -> list[str]:
    by_id = {emotion_id: name for name, emotion_id in raw("emotion_dict.json").items()}
    return [by_id[i] for i in range(len(by_id))]


def as_turn(turn: dict) -> dict:
    """A raw release turn as the dataset should hold it (the schema of the mod_dataset docstring)."""
    meme = turn.get("img_id")
    return {
        "speaker": turn["speaker_id"].strip("[]"),
        "text": turn.get("txt"),
        "meme": meme,
        "emotion": turn.get("emotion_id") if meme is not None else None,
    }


def reply_text(instance: dict) -> str | None:
    """Official task 2 layout: the reply's text is the last history turn when that turn is the answering speaker's
    text alone; a meme-only reply has no such turn."""
    last = instance["history"][-1]
    same_speaker = last["speaker_id"] == instance["answer"]["speaker_id"]
    return last["txt"] if same_speaker and last.get("txt") and "img_id" not in last else None


def instance_path(task: str, instance: dict) -> list[dict]:
    """The turns of an annotated test instance whose meme use the release states (the rule of the package docs)."""
    turns = [as_turn(t) for t in instance["history"]]
    answer = instance["answer"]
    if task == "task2":
        text = reply_text(instance)
        history = turns[:-1] if text is not None else turns
        return [*history, {**as_turn(answer), "text": text, "meme": answer["img_id"]}]
    if task == "task3":
        turns[-1]["emotion"] = answer["emotion_id"]
    return turns


def turn_keys(turns: list[dict]) -> tuple:
    return tuple((t["speaker"], t["text"], t["meme"]) for t in turns)


def offline_env(tmp_path: Path) -> dict:
    """No HF cache or PYTHONPATH of the caller: a private HF_HOME, offline."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE")) and k != "PYTHONPATH"
    }
    return {**environment, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder under `folder`, hidden ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def read_parquet(folder: Path, config: str, split: str) -> list[dict]:
    (path,) = (folder / config).glob(f"{split}-*.parquet")
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def loaded(sample_dataset, tmp_path_factory) -> dict:
    """What `datasets.load_dataset` gives in a fresh process for the built sample."""
    tmp_path = tmp_path_factory.mktemp("fresh")
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(sample_dataset)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=offline_env(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def stats_output(sample_dataset, tmp_path_factory) -> str:
    tmp_path = tmp_path_factory.mktemp("stats")
    command = [sys.executable, "-m", "mod_dataset", "stats", str(sample_dataset)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# Loading the built sample ---------------------------------------------------------------------------------------------


def test_fresh_process_loads_four_splits_with_the_raw_row_counts(loaded):
    assert not loaded["repo_code_imported"]
    assert list(loaded["splits"]) == list(SPLITS)
    rows = {split: len(dialogues) for split, dialogues in loaded["splits"].items()}
    assert rows["train"] == len(raw("c_train.json"))
    assert rows["validation"] == len(raw("c_val.json"))
    for split in TEST_SPLITS:  # one row per set of overlapping instances (see the test dialogues test below)
        assert 0 < rows[split] <= sum(len(raw(task_file(split, task))) for task in TASKS), split


def test_emotion_names_follow_emotion_dict_ids(loaded):
    assert loaded["emotions"] == emotion_names()
    assert len(set(loaded["emotions"])) == len(loaded["emotions"]) > 1


@pytest.mark.parametrize("split, file", [("train", "c_train.json"), ("validation", "c_val.json")])
def test_dialogues_equal_the_raw_json_turn_by_turn(loaded, split, file):
    expected = [{"dialogue_id": i, "turns": [as_turn(t) for t in turns]} for i, turns in raw(file).items()]
    assert loaded["splits"][split] == expected


def test_a_dialogue_spot_check_keeps_text_meme_and_emotion_name(loaded):
    row = next(r for r in loaded["splits"]["train"] if r["dialogue_id"] == "dialogue 0")
    turns = raw("c_train.json")["dialogue 0"]
    assert [t["text"] for t in row["turns"]] == [t.get("txt") for t in turns]
    memes = [(t["meme"], loaded["emotions"][t["emotion"]]) for t in row["turns"] if t["meme"]]
    names = emotion_names()
    assert memes == [(t["img_id"], names[t["emotion_id"]]) for t in turns if "img_id" in t]
    assert memes  # the spot-checked dialogue does hold memes


@pytest.mark.parametrize("split", TEST_SPLITS)
def test_test_dialogues_are_the_longest_instance_paths(loaded, split):
    """Each row is one instance's turns of stated meme use: task 1 without its answer, task 2 with the reply merged
    into one turn (text + gold meme), task 3 with its gold emotion; no row is the start of another, and every
    instance's path starts some row, so no turn is scored twice and none is lost."""
    paths = {
        f"{split} {task} {index}": instance_path(task, instance)
        for task in TASKS
        for index, instance in enumerate(raw(task_file(split, task)))
    }
    rows = loaded["splits"][split]
    for row in rows:
        assert row["turns"] == paths[row["dialogue_id"]], row["dialogue_id"]
    keys = [turn_keys(row["turns"]) for row in rows]
    for i, key in enumerate(keys):
        assert not any(other[: len(key)] == key for j, other in enumerate(keys) if j != i), rows[i]["dialogue_id"]
    for name, path in paths.items():
        assert any(key[: len(path)] == turn_keys(path) for key in keys), name
    for row in rows:  # a task 2 reply is one turn, never its text followed by a separate meme-only turn
        for before, after in zip(row["turns"], row["turns"][1:]):
            split_reply = before["speaker"] == after["speaker"] and before["meme"] is None and after["text"] is None
            assert not split_reply, row["dialogue_id"]
    assert len(rows) < len(paths)  # the sample's instances overlap: the merge is exercised


def test_memes_decode_to_the_release_images(loaded):
    img2id = raw("img2id.json")
    assert loaded["meme_splits"] == ["train"]
    assert sorted(m["meme_id"] for m in loaded["memes"]) == sorted(img2id.values())
    for meme in loaded["memes"]:
        assert img2id[meme["file_name"]] == meme["meme_id"]
        assert meme["is_pil"]
        with Image.open(SAMPLE_DIR / "meme_set" / meme["file_name"]) as image:
            assert meme["size"] == list(image.size)
            assert meme["pixels"] == hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def test_seen_marks_train_memes_and_the_hard_test_has_unseen_ones(loaded):
    train_memes = {t["img_id"] for turns in raw("c_train.json").values() for t in turns if "img_id" in t}
    seen = {m["meme_id"]: m["seen"] for m in loaded["memes"]}
    assert seen == {meme: meme in train_memes for meme in seen}
    used = {
        split: {t["meme"] for r in rows for t in r["turns"] if t["meme"]} for split, rows in loaded["splits"].items()
    }
    assert {m for m in used["hard_test"] if not seen[m]}, "the hard test should use memes never seen in train"
    assert all(seen[m] for m in used["easy_test"] | used["validation"])


# Task views ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", list(TASK_FILES))
def test_task_views_hold_the_raw_instances_candidates_and_answers(loaded, split):
    views = loaded["views"]
    for task, view in VIEWS.items():
        instances = raw(task_file(split, task))
        rows = views[view][split]
        assert len(rows) == len(instances), (split, task)
        for row, instance in zip(rows, instances):
            history = [as_turn(t) for t in instance["history"]]
            assert row["speaker"] == instance["answer"]["speaker_id"].strip("[]")
            if task == "task1":
                assert row["history"] == history
                assert row["answer"] == instance["answer"]["txt"]
            elif task == "task2":  # the reply's text moves from the end of the history to answer_text
                text = reply_text(instance)
                assert row["answer_text"] == text
                assert row["history"] == (history[:-1] if text is not None else history)
                assert row["candidates"] == instance["candidate"]["set"]
                assert row["answer"] == instance["answer"]["img_id"]
            else:  # the last turn holds the meme; its emotion is the answer, not part of the history
                assert row["history"] == [*history[:-1], {**history[-1], "emotion": None}]
                assert row["history"][-1]["meme"] == instance["history"][-1]["img_id"]
                assert row["answer"] == instance["answer"]["emotion_id"]


def test_train_task_views_are_cut_from_train_dialogues(loaded):
    dialogues = {row["dialogue_id"]: row["turns"] for row in loaded["splits"]["train"]}
    retrieval = loaded["views"]["retrieval"]["train"]
    assert len(retrieval) == sum(1 for turns in dialogues.values() for t in turns[1:] if t["meme"])
    for row in retrieval:
        assert len(row["candidates"]) == 10 and len(set(row["candidates"])) == 10
        assert row["answer"] in row["candidates"]
        turns = dialogues[row["id"].rsplit(" turn ", 1)[0]]
        reply = turns[len(row["history"])]
        assert turns[: len(row["history"])] == row["history"]
        assert (row["answer_text"], row["answer"]) == (reply["text"], reply["meme"])
    emotion = loaded["views"]["emotion"]["train"]
    assert len(emotion) == sum(1 for turns in dialogues.values() for t in turns if t["emotion"] is not None)
    for row in emotion:  # like the official task 3: the meme closes the history, its emotion is only the answer
        turns = dialogues[row["id"].rsplit(" turn ", 1)[0]]
        meme_turn = turns[len(row["history"]) - 1]
        assert row["history"] == [*turns[: len(row["history"]) - 1], {**meme_turn, "emotion": None}]
        assert meme_turn["emotion"] is not None and row["answer"] == meme_turn["emotion"]


def test_a_dialogue_opening_with_a_meme_gives_an_emotion_instance_of_its_first_turn(tmp_path):
    """The organisers' emotion reader makes an instance of every turn with an emotion, the first one included."""
    root = copy_sample(tmp_path)
    train = json.loads((root / "c_train.json").read_text(encoding="utf-8"))
    train["dialogue 0"][0] = {"speaker_id": "[speaker1]", "txt": "听说火锅了", "img_id": "002", "emotion_id": 1}
    write(root, "c_train.json", train)
    build_dataset(root, tmp_path / "data")
    emotion = {row["id"]: row for row in read_parquet(tmp_path / "data", "emotion", "train")}
    first = emotion["dialogue 0 turn 0"]
    assert first["answer"] == 1 and len(first["history"]) == 1
    assert (first["history"][0]["meme"], first["history"][0]["emotion"]) == ("002", None)


# The sample follows the official layout --------------------------------------------------------------------------------


def test_sample_task2_has_reply_texts_meme_only_replies_and_10_or_11_candidates(loaded):
    for split in TASK_FILES:
        instances = raw(task_file(split, "task2"))
        texts = [reply_text(x) for x in instances]
        assert 0 < texts.count(None) < len(texts), split  # meme-only replies and replies with text
        assert sorted({len(x["candidate"]["set"]) for x in instances}) == [10, 11], split
        for instance in instances:
            assert set(instance["answer"]) == {"speaker_id", "img_id"}
            assert instance["candidate"]["speaker_id"] == instance["answer"]["speaker_id"]
        rows = loaded["views"]["retrieval"][split]
        assert [row["answer_text"] for row in rows] == texts
        assert [len(row["candidates"]) for row in rows] == [len(x["candidate"]["set"]) for x in instances]


def test_sample_has_meme_turns_without_emotion_and_task3_answers_with_one(loaded):
    turns = [t for turns in raw("c_train.json").values() for t in turns if "img_id" in t]
    without = [t for t in turns if "emotion_id" not in t]
    assert 0.05 < len(without) / len(turns) < 0.3
    built = [t for row in loaded["splits"]["train"] for t in row["turns"] if t["meme"] is not None]
    assert sum(t["emotion"] is None for t in built) == len(without)
    for split in TASK_FILES:
        for instance in raw(task_file(split, "task3")):
            last = instance["history"][-1]
            assert "img_id" in last and "emotion_id" not in last  # as in the organisers' example
            assert isinstance(instance["answer"]["emotion_id"], int)


def test_memes_feature_column_equals_id2feature(sample_dataset):
    features = raw("id2feature.json")
    rows = read_parquet(sample_dataset, "memes", "train")
    assert sorted(features) == [row["meme_id"] for row in rows]
    built = np.array([row["feature"] for row in rows], dtype=np.float32)
    assert built.shape == (len(rows), 512)
    np.testing.assert_array_equal(built, np.array([features[row["meme_id"]] for row in rows], dtype=np.float32))
    np.testing.assert_allclose(np.linalg.norm(built, axis=1), 1, atol=1e-3)  # L2-normalised like CLIP features
    similarity = built @ built.T  # the features tell the memes apart: each is nearest to itself
    assert (similarity.argmax(axis=1) == np.arange(len(rows))).all()
    assert (similarity - 2 * np.eye(len(rows))).max() < 0.98


# Bad input -------------------------------------------------------------------------------------------------------------


def copy_sample(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    shutil.copytree(SAMPLE_DIR, root)
    return root


def write(root: Path, name: str, content) -> None:
    (root / name).write_text(json.dumps(content, ensure_ascii=False, indent=1), encoding="utf-8")


BROKEN_MEMES = {"010", "011", "012"}  # no image, a broken image, a feature of the wrong size


def plant_row_problems(root: Path) -> list[tuple[str, str, str]]:
    """Problems that spoil single dialogues, instances or memes; returns (file, where, message) to be reported."""
    train = raw("c_train.json", root)
    del train["dialogue 3"][0]["speaker_id"]
    train["dialogue 5"][0]["img_id"] = "999"
    train["dialogue 7"] = "not a list of turns"
    write(root, "c_train.json", train)
    (root / "meme_set" / "010.png").unlink()
    png = (root / "meme_set" / "011.png").read_bytes()
    (root / "meme_set" / "011.png").write_bytes(png[: len(png) // 2])
    features = raw("id2feature.json", root)
    features["012"] = features["012"][:2]
    write(root, "id2feature.json", features)
    task2 = raw("c_val_task2.json", root)
    outsider = next(m for m in sorted(raw("img2id.json").values()) if m not in task2[2]["candidate"]["set"])
    task2[2]["answer"]["img_id"] = outsider
    write(root, "c_val_task2.json", task2)
    user_of = {
        meme: next(i for i, t in train.items() if isinstance(t, list) and any(x.get("img_id") == meme for x in t))
        for meme in ("010", "012")
    }
    return [
        ("c_train.json", "'dialogue 3', turn 0", "turn has no speaker_id"),
        ("c_train.json", "'dialogue 5', turn 0", "img_id '999' is not in img2id.json"),
        ("c_train.json", "'dialogue 7'", "must be a non-empty list of turns"),
        ("meme_set/010.png", "'010'", "image file is missing"),
        ("meme_set/011.png", "'011'", "image cannot be decoded"),
        ("id2feature.json", "'012'", "the feature has 2 numbers, the other memes' 512"),
        ("c_train.json", f"'{user_of['010']}'", "img_id '010' is unusable (see the problem of meme '010')"),
        ("c_train.json", f"'{user_of['012']}'", "img_id '012' is unusable"),
        ("c_val_task2.json", "instance 2", f"answer meme '{outsider}' is not among its candidates"),
    ]


def plant_file_problems(root: Path) -> list[tuple[str, str, str]]:
    """Problems no row can be skipped for: a duplicate dialogue id (duplicate JSON key), malformed JSON."""
    val = raw("c_val.json", root)
    first = next(iter(val))
    pairs = [f"{json.dumps(i, ensure_ascii=False)}: {json.dumps(t, ensure_ascii=False)}" for i, t in val.items()]
    duplicate = f"{json.dumps(first)}: {json.dumps(val[first], ensure_ascii=False)}"
    (root / "c_val.json").write_text("{\n" + ",\n".join([*pairs, duplicate]) + "\n}\n", encoding="utf-8")
    (root / "c_test_easy_task1.json").write_text('[\n {"history": [],\n  "answer": }\n]\n', encoding="utf-8")
    return [
        ("c_val.json", f"'{first}'", "duplicate id"),
        ("c_test_easy_task1.json", "line 3, column 13", "malformed JSON"),
    ]


def assert_reported(problems, expected) -> None:
    for file, where, message in expected:
        assert any(p.file == file and where in p.where and message in p.message for p in problems), (
            f"not reported: {file}, {where}: {message}\n" + "\n".join(map(str, problems))
        )


def test_invalid_release_error_lists_every_problem_with_file_and_place(tmp_path):
    root = copy_sample(tmp_path)
    expected = plant_row_problems(root) + plant_file_problems(root)
    with pytest.raises(InvalidReleaseError) as error:
        build_dataset(root, tmp_path / "out")
    assert_reported(error.value.problems, expected)
    message = str(error.value)
    for file, where, _ in expected:
        assert f"{file}, " in message and where in message
    assert not (tmp_path / "out").exists()


def test_skip_invalid_builds_without_the_bad_rows_and_counts_them(tmp_path):
    root = copy_sample(tmp_path)
    plant_row_problems(root)
    result = build_dataset(root, tmp_path / "out", skip_invalid=True)
    skipped = result["skipped"]
    for reason in ("turn has no speaker_id", "img_id '999' is not in img2id.json", "image file is missing"):
        assert skipped[reason] == 1, skipped
    assert skipped["image cannot be decoded"] == 1
    assert skipped["the feature has 2 numbers, the other memes' 512"] == 1
    assert skipped["a dialogue must be a non-empty list of turns"] == 1
    assert sum(n for reason, n in skipped.items() if reason.startswith("answer meme")) == 1
    assert all(skipped[f"img_id '{meme}' is unusable"] > 0 for meme in BROKEN_MEMES)

    train = raw("c_train.json", root)
    bad = {"dialogue 3", "dialogue 5", "dialogue 7"}
    uses_broken_meme = {
        i for i, turns in train.items() if i not in bad and BROKEN_MEMES & {t.get("img_id") for t in turns}
    }
    built = [row["dialogue_id"] for row in read_parquet(tmp_path / "out", "dialogues", "train")]
    assert built == [i for i in train if i not in bad | uses_broken_meme]
    memes = {row["meme_id"] for row in read_parquet(tmp_path / "out", "memes", "train")}
    assert memes == set(raw("img2id.json").values()) - BROKEN_MEMES
    answers = [row["answer"] for row in read_parquet(tmp_path / "out", "retrieval", "validation")]
    kept = [x for i, x in enumerate(raw("c_val_task2.json", root)) if i != 2]
    kept = [x for x in kept if not BROKEN_MEMES & {*x["candidate"]["set"], *(t.get("img_id") for t in x["history"])}]
    assert answers == [x["answer"]["img_id"] for x in kept]


def test_skip_invalid_still_refuses_malformed_json(tmp_path):
    root = copy_sample(tmp_path)
    plant_row_problems(root)
    expected = plant_file_problems(root)[1:]
    with pytest.raises(InvalidReleaseError) as error:
        build_dataset(root, tmp_path / "out", skip_invalid=True)
    assert_reported(error.value.problems, expected)


def test_cli_build_reports_problems_or_prints_what_it_skipped(tmp_path, capsys):
    root = copy_sample(tmp_path)
    plant_row_problems(root)
    assert main(["build", str(root), str(tmp_path / "strict")]) == 1
    assert "c_train.json, dialogue 'dialogue 3', turn 0: turn has no speaker_id" in capsys.readouterr().err

    assert main(["build", str(root), str(tmp_path / "out"), "--skip-invalid"]) == 0
    skipped = build_dataset(root, tmp_path / "again", skip_invalid=True)["skipped"]
    printed = capsys.readouterr().out
    assert f"left out the rows with {sum(skipped.values())} problem(s): " in printed
    assert "1 x turn has no speaker_id" in printed and "1 x image file is missing" in printed
    assert f"dialogues: train {len(read_parquet(tmp_path / 'out', 'dialogues', 'train'))}," in printed


def test_skip_invalid_may_leave_a_split_empty(tmp_path):
    root = copy_sample(tmp_path)
    write(root, "c_val.json", {key: "not a list of turns" for key in raw("c_val.json")})
    result = build_dataset(root, tmp_path / "out", skip_invalid=True)
    assert result["counts"]["dialogues"]["validation"] == 0
    assert read_parquet(tmp_path / "out", "dialogues", "validation") == []
    assert len(read_parquet(tmp_path / "out", "response", "validation")) == len(raw("c_val_task1.json"))


# Wrongly typed JSON ----------------------------------------------------------------------------------------------------


def put(name: str, keys: tuple, value):
    """A change to a release: the value at `keys` in file `name` replaced (no keys: the whole file)."""

    def change(root: Path) -> None:
        if not keys:
            return write(root, name, value)
        content = raw(name, root)
        target = content
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        write(root, name, content)

    return change


def put_text(name: str, text: str):
    return lambda root: (root / name).write_text(text, encoding="utf-8")


def rename_image(new_name: str, meme: str = "003", value=None):
    """An img2id.json entry renamed (and its meme id replaced by `value`, if given)."""

    def change(root: Path) -> None:
        img2id = {name: m for name, m in raw("img2id.json", root).items() if m != meme}
        write(root, "img2id.json", {**img2id, new_name: meme if value is None else value})

    return change


MEME_TURN = ("dialogue 0", 1)  # the sample's first meme turn: speaker2 sends meme 002 with emotion 2
AT_TURN = "'dialogue 0', turn 1"
LONG_NAME = "a" * 300 + ".png"
WRONG_TYPES = [  # (change, (file, where, message)): each is reported, never a traceback
    (
        put("c_train.json", (*MEME_TURN, "img_id"), ["002"]),
        ("c_train.json", AT_TURN, "img_id (a meme id such as '042') must be a string (got a list)"),
    ),
    (
        put("c_train.json", (*MEME_TURN, "img_id"), {"id": "002"}),
        ("c_train.json", AT_TURN, "must be a string (got an object)"),
    ),
    (put("c_train.json", (*MEME_TURN, "img_id"), 2), ("c_train.json", AT_TURN, "must be a string (got the number 2)")),
    (
        put("c_train.json", (*MEME_TURN, "emotion_id"), 2.7),
        ("c_train.json", AT_TURN, "emotion_id must be an integer (got the number 2.7)"),
    ),
    (
        put("c_train.json", (*MEME_TURN, "emotion_id"), 2.0),
        ("c_train.json", AT_TURN, "emotion_id must be an integer (got the number 2.0)"),
    ),
    (
        put("c_train.json", (*MEME_TURN, "emotion_id"), True),
        ("c_train.json", AT_TURN, "emotion_id must be an integer (got true)"),
    ),
    (
        put("c_train.json", ("dialogue 0", 0, "txt"), ["听说", "火锅"]),
        ("c_train.json", "'dialogue 0', turn 0", "txt must be a string (got a list)"),
    ),
    (
        put("c_train.json", ("dialogue 0", 0, "txt"), 5),
        ("c_train.json", "'dialogue 0', turn 0", "txt must be a string (got the number 5)"),
    ),
    (
        put("c_train.json", ("dialogue 0", 0, "speaker_id"), 1),
        (
            "c_train.json",
            "'dialogue 0', turn 0",
            "speaker_id must be one of ('[speaker1]', '[speaker2]') (got the number 1)",
        ),
    ),
    (
        put("c_val_task2.json", (0, "candidate"), ["000", "001"]),
        ("c_val_task2.json", "instance 0", "needs candidate.set, a list of meme ids (got a list)"),
    ),
    (
        put("c_val_task2.json", (0, "candidate", "set"), "000"),
        ("c_val_task2.json", "instance 0", "a list of meme ids (got the string '000' as candidate.set)"),
    ),
    (
        put("c_val_task2.json", (0, "candidate", "set", 3), ["000"]),
        ("c_val_task2.json", "instance 0, candidate.set[3]", "a meme id must be a string (got a list)"),
    ),
    (
        put("c_val_task2.json", (0, "candidate", "set", 3), 7),
        ("c_val_task2.json", "instance 0, candidate.set[3]", "a meme id must be a string (got the number 7)"),
    ),
    (
        put("emotion_dict.json", ("难过",), "1"),
        ("emotion_dict.json", "emotion '难过'", "its id must be an integer (got the string '1')"),
    ),
    (
        put("emotion_dict.json", ("难过",), True),
        ("emotion_dict.json", "emotion '难过'", "its id must be an integer (got true)"),
    ),
    (
        put("emotion_dict.json", (), list(range(8))),
        ("emotion_dict.json", "", "the file (name -> id) must be an object (got a list)"),
    ),
    (
        put("id2feature.json", ("003",), "x"),
        (
            "id2feature.json",
            "meme '003'",
            "the feature must be a non-empty list of numbers that a float32 holds (got the string 'x')",
        ),
    ),
    (
        put("id2feature.json", ("003",), [[0.1, 0.2], [0.3]]),
        ("id2feature.json", "meme '003'", "a float32 holds (got a list)"),
    ),
    (put("id2feature.json", ("003",), 0.5), ("id2feature.json", "meme '003'", "a float32 holds (got the number 0.5)")),
    (put("id2feature.json", ("003", 7), 1e39), ("id2feature.json", "meme '003'", "a float32 holds (got a list)")),
    (
        put_text("c_train.json", "[" * 100_000 + "]" * 100_000),
        ("c_train.json", "", "malformed JSON (nested too deeply to read)"),
    ),
    (
        put_text("id2feature.json", '{"003": [' + "1" * 5000 + "]}"),
        ("id2feature.json", "", "malformed JSON (Exceeds the limit"),
    ),
    (
        rename_image(LONG_NAME),
        (f"meme_set/{LONG_NAME}", "meme '003'", "image file cannot be read (File name too long)"),
    ),
    (
        rename_image("003.png", value=3),
        ("img2id.json", "entry '003.png'", "the meme id (such as '042') must be a string (got the number 3)"),
    ),
    (rename_image("003.png", value=["003"]), ("img2id.json", "entry '003.png'", "must be a string (got a list)")),
    (
        put("img2id.json", (), ["000.png"]),
        ("img2id.json", "", "the file (image name -> meme id) must be an object (got a list)"),
    ),
    (
        put("c_train.json", (), []),
        ("c_train.json", "", "the file (dialogue id -> turns) must be an object (got a list)"),
    ),
    (put("c_val.json", (), None), ("c_val.json", "", "the file holds null")),
    (put("c_val_task1.json", (), {"0": {}}), ("c_val_task1.json", "", "a task file must be a list (got an object)")),
    (
        put("c_val_task1.json", (0,), []),
        ("c_val_task1.json", "instance 0", "an instance must be an object (got a list)"),
    ),
    (
        put("c_val_task1.json", (0, "history"), {"speaker_id": "[speaker1]", "txt": "你好"}),
        ("c_val_task1.json", "instance 0", "its history must be a non-empty list of turns (got an object)"),
    ),
    (
        put("c_val_task3.json", (0, "answer"), 3),
        ("c_val_task3.json", "instance 0, answer", "the answer must be an object (got the number 3)"),
    ),
]


@pytest.mark.parametrize("change, expected", WRONG_TYPES, ids=[expected[2] for _, expected in WRONG_TYPES])
def test_wrongly_typed_json_is_a_listed_problem_with_its_place(tmp_path, change, expected):
    root = copy_sample(tmp_path)
    change(root)
    with pytest.raises(InvalidReleaseError) as error:
        build_dataset(root, tmp_path / "out")
    assert_reported(error.value.problems, [expected])
    assert not (tmp_path / "out").exists()


# Images only from inside the release -----------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["../secret.png", "../../secret.png", "absolute path", "link out of the release"])
def test_an_image_from_outside_meme_set_is_refused_and_never_embedded(tmp_path, entry):
    root = copy_sample(tmp_path)
    secret = tmp_path / "secret.png"  # outside the release; a copy lies in the release, outside meme_set/
    Image.new("RGB", (4, 4), (1, 2, 3)).save(secret)
    shutil.copy(secret, root / "secret.png")
    name = {"absolute path": str(secret), "link out of the release": "link.png"}.get(entry, entry)
    (root / "meme_set" / "link.png").symlink_to(secret)
    rename_image(name)(root)
    with pytest.raises(InvalidReleaseError) as error:
        build_dataset(root, tmp_path / "out")
    message = f"the image is a link to {secret}" if entry.startswith("link") else "named relative to meme_set/"
    assert_reported(error.value.problems, [("img2id.json", f"meme '003' (entry {name!r})", message)])

    build_dataset(root, tmp_path / "out", skip_invalid=True)  # the meme is left out, with the turns that use it
    memes = read_parquet(tmp_path / "out", "memes", "train")
    assert "003" not in {row["meme_id"] for row in memes} and len(memes) == len(raw("img2id.json")) - 1
    assert secret.read_bytes() not in {row["image"]["bytes"] for row in memes}


def test_a_link_to_an_image_elsewhere_in_the_release_is_followed(tmp_path):
    root = copy_sample(tmp_path)
    (root / "images").mkdir()
    (root / "meme_set" / "003.png").rename(root / "images" / "003.png")
    (root / "meme_set" / "003.png").symlink_to(root / "images" / "003.png")
    build_dataset(root, tmp_path / "out")
    (meme,) = [row for row in read_parquet(tmp_path / "out", "memes", "train") if row["meme_id"] == "003"]
    assert meme["image"]["bytes"] == (SAMPLE_DIR / "meme_set" / "003.png").read_bytes()


# Run in a fresh interpreter: the stored bytes (not decoded) and the decoded size of every meme.
MEME_BYTES = textwrap.dedent(
    """
    import hashlib, json, sys
    import datasets

    memes = datasets.load_dataset(sys.argv[1], "memes", split="train")
    stored = memes.cast_column("image", datasets.Image(decode=False))
    print(json.dumps({
        row["meme_id"]: {
            "sha256": hashlib.sha256(raw["image"]["bytes"]).hexdigest(),
            "path": raw["image"]["path"],
            "size": list(row["image"].size),
        }
        for row, raw in zip(memes, stored)
    }))
    """
)


@pytest.mark.slow
def test_image_bytes_are_embedded_even_with_files_of_their_names_in_the_working_directory(tmp_path, monkeypatch):
    decoys = tmp_path / "cwd"
    decoys.mkdir()
    img2id = raw("img2id.json")
    for name in img2id:
        Image.new("RGB", (2, 2)).save(decoys / name)
    monkeypatch.chdir(decoys)
    build_dataset(SAMPLE_DIR, tmp_path / "out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [sys.executable, "-c", MEME_BYTES, str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=elsewhere, env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    stored = json.loads(result.stdout)
    assert sorted(stored) == sorted(img2id.values())
    for name, meme in img2id.items():
        release_file = SAMPLE_DIR / "meme_set" / name
        assert stored[meme]["sha256"] == hashlib.sha256(release_file.read_bytes()).hexdigest(), name
        assert stored[meme]["path"] == name  # the bare file name: nothing of the builder's disk
        with Image.open(release_file) as image:
            assert stored[meme]["size"] == list(image.size)


# Release variants ------------------------------------------------------------------------------------------------------


def delete_files(root: Path, *patterns: str) -> list[str]:
    names = sorted(p.name for pattern in patterns for p in root.glob(pattern))
    for name in names:
        (root / name).unlink()
    return names


def blank_test_answers(root: Path) -> None:
    """The challenge's test release as handed out: every answer keeps its speaker, its gold field is empty."""
    for split in TEST_SPLITS:
        for task in TASKS:
            instances = raw(task_file(split, task), root)
            for instance in instances:
                instance["answer"] = {"speaker_id": instance["answer"]["speaker_id"], ANSWER_FIELDS[task]: ""}
            write(root, task_file(split, task), instances)


def built_splits(folder: Path) -> dict[str, list[str]]:
    return {c["config_name"]: [f["split"] for f in c["data_files"]] for c in card_header(folder)["configs"]}


def stats_of(folder: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["stats", str(folder)]) == 0
    return capsys.readouterr().out


def test_train_validation_release_builds_its_two_splits(tmp_path, capsys):
    root = copy_sample(tmp_path)
    missing = delete_files(root, "c_test_*")
    assert len(missing) == 6
    result = build_dataset(root, tmp_path / "out")
    assert result["release"] == {
        "splits": ["train", "validation"],
        "missing_splits": ["easy_test", "hard_test"],
        "missing_files": missing,
        "unannotated": {},
    }
    assert card_header(tmp_path / "out")["mod_release"] == result["release"]
    splits = built_splits(tmp_path / "out")
    assert splits.pop("memes") == ["train"]
    assert splits == {config: ["train", "validation"] for config in ("dialogues", *VIEWS.values())}
    assert not list((tmp_path / "out").rglob("*test*"))
    assert len(read_parquet(tmp_path / "out", "retrieval", "validation")) == len(raw("c_val_task2.json"))
    assert f"missing files: {', '.join(missing)}" in stats_of(tmp_path / "out", capsys)


@pytest.mark.parametrize("alone", [False, True], ids=["with train and validation", "test files alone"])
def test_test_release_with_blank_answers_builds_them_as_nulls(tmp_path, capsys, alone):
    root = copy_sample(tmp_path)
    blank_test_answers(root)
    if alone:
        delete_files(root, "c_train.json", "c_val*")
    out = tmp_path / "out"
    result = build_dataset(root, out)
    splits = [*TEST_SPLITS] if alone else list(SPLITS)
    unannotated = {split: list(VIEWS.values()) for split in TEST_SPLITS}
    assert result["release"]["splits"] == splits and result["release"]["unannotated"] == unannotated
    assert card_header(out)["mod_release"] == result["release"]
    assert built_splits(out)["dialogues"] == splits
    for split in TEST_SPLITS:
        for task, view in VIEWS.items():
            rows = read_parquet(out, view, split)
            assert len(rows) == len(raw(task_file(split, task), root)) > 0
            assert all(row["answer"] is None for row in rows), (split, view)
        texts = [reply_text(x) for x in raw(task_file(split, "task2"), root)]
        assert [row["answer_text"] for row in read_parquet(out, "retrieval", split)] == texts
        # blank answers are left out of the dialogues: every turn there is a history turn of the release
        history_turns = {
            turn_keys([as_turn(t)]) for task in TASKS for x in raw(task_file(split, task), root) for t in x["history"]
        }
        dialogues = read_parquet(out, "dialogues", split)
        assert dialogues and all(turn_keys([t]) in history_turns for row in dialogues for t in row["turns"])
    if not alone:
        assert all(row["answer"] is not None for row in read_parquet(out, "emotion", "validation"))
    assert {row["seen"] for row in read_parquet(out, "memes", "train")} == ({None} if alone else {True, False})
    printed = stats_of(out, capsys)
    assert "blank answers (unannotated, null in the task views): easy_test (response, retrieval, emotion); " in printed
    assert f"splits built: {', '.join(splits)}; not built: {'train, validation' if alone else 'none'}\n" in printed


def test_full_release_card_records_no_missing_file_and_no_blank_split(sample_dataset):
    record = {"splits": list(SPLITS), "missing_splits": [], "missing_files": [], "unannotated": {}}
    assert card_header(sample_dataset)["mod_release"] == record


def test_partial_task_files_and_mixed_answers_are_reported_even_when_skipping(tmp_path):
    root = copy_sample(tmp_path)
    delete_files(root, "c_test_easy_task2.json")
    task1 = raw("c_test_hard_task1.json", root)
    task1[3]["answer"]["txt"] = ""
    write(root, "c_test_hard_task1.json", task1)
    expected = [
        ("c_test_easy_task2.json", "", "missing, while c_test_easy_task1.json and c_test_easy_task3.json are there"),
        ("c_test_hard_task1.json", "", f"1 of {len(task1)} answers are blank (instance 3), the others annotated"),
    ]
    for skip_invalid in (False, True):
        with pytest.raises(InvalidReleaseError) as error:
            build_dataset(root, tmp_path / "out", skip_invalid=skip_invalid)
        assert_reported(error.value.problems, expected)
        assert len(error.value.problems) == 2


def test_release_without_any_split_is_an_error(tmp_path):
    root = copy_sample(tmp_path)
    delete_files(root, "c_*.json")
    with pytest.raises(InvalidReleaseError) as error:
        build_dataset(root, tmp_path / "out")
    assert [p.message.split(":")[0] for p in error.value.problems] == ["no split to build"]
    assert "c_train.json" in str(error.value) and "c_test_hard_task3.json" in str(error.value)


def test_a_release_with_fewer_memes_than_candidates_builds(tmp_path, capsys):
    """Five memes: the derived retrieval views hold every meme as a candidate, as many as there are."""
    root = copy_sample(tmp_path)
    kept = {"000", "001", "002", "003", "004"}
    write(root, "img2id.json", {name: meme for name, meme in raw("img2id.json").items() if meme in kept})
    for name in ("c_train.json", "c_val.json"):
        dialogues = raw(name, root)
        write(root, name, {i: t for i, t in dialogues.items() if {x["img_id"] for x in t if "img_id" in x} <= kept})
    delete_files(root, "c_*_task*.json")
    assert main(["build", str(root), str(tmp_path / "out")]) == 0
    train_memes = {t["meme"] for row in read_parquet(tmp_path / "out", "dialogues", "train") for t in row["turns"]}
    train_memes.discard(None)
    assert len(train_memes) == 5
    for split in ("train", "validation"):
        rows = read_parquet(tmp_path / "out", "retrieval", split)
        assert rows and all(sorted(row["candidates"]) == sorted(train_memes) for row in rows), split
        assert all(row["answer"] in row["candidates"] for row in rows)


# The output folder: only a folder built here is ever replaced -----------------------------------------------------------


@pytest.mark.parametrize(
    "output", ["the release", "the release, spelled with ..", "a link to the release", "its parent", "meme_set"]
)
def test_an_output_folder_that_is_holds_or_lies_in_the_release_is_refused(tmp_path, capsys, output):
    root = copy_sample(tmp_path)
    (tmp_path / "notes.txt").write_text("not made by the builder")
    (tmp_path / "link").symlink_to(root)
    out = {
        "the release": root,
        "the release, spelled with ..": root / "meme_set" / "..",
        "a link to the release": tmp_path / "link",
        "its parent": tmp_path,
        "meme_set": root / "meme_set",
    }[output]
    before = snapshot(tmp_path)
    assert main(["build", str(root), str(out)]) == 1
    relation = "lies inside the release folder" if output == "meme_set" else "is the release folder or holds it"
    assert f"mod_dataset: error: the output folder {out.resolve()} {relation}" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("output", ["the working directory", "a hub dataset of the user's", "a file"])
def test_an_output_folder_not_built_here_is_refused_and_kept_whole(tmp_path, capsys, monkeypatch, output):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: data/*.parquet\n---\n")
    (work / "data" / "train.parquet").write_bytes(b"PAR1")
    monkeypatch.chdir(work)
    out = {"the working directory": ".", "a hub dataset of the user's": str(work), "a file": "README.md"}[output]
    before = snapshot(tmp_path)
    assert main(["build", str(SAMPLE_DIR), out]) == 1
    error = capsys.readouterr().err
    if output == "a file":
        assert f"mod_dataset: error: the output folder {work / 'README.md'} is a file, not a folder" in error
    else:
        assert (
            f"mod_dataset: error: the output folder {work} is not empty and was not written by mod_dataset (it has "
            "no .mod_dataset.json; it holds README.md, data, ...); nothing was changed" in error
        )
    assert snapshot(tmp_path) == before


def test_an_empty_folder_is_used_and_a_folder_built_here_is_replaced_whole(tmp_path):
    root, site = copy_sample(tmp_path), tmp_path / "site"
    (site / "data").mkdir(parents=True)
    build_dataset(root, site / "data")
    assert json.loads((site / "data" / ".mod_dataset.json").read_text())["builder"] == "mod_dataset"
    first = set(snapshot(site / "data"))
    write(root, "c_test_easy_task1.json", raw("c_test_easy_task1.json")[:5])
    build_dataset(root, site / "data")
    second = set(snapshot(site / "data"))
    assert [p.name for p in site.iterdir()] == ["data"]  # nothing staged or set aside is left beside it
    changed = first ^ second  # the old files of the changed splits are gone, the new ones there
    assert first - second and second - first and all("/easy_test-" in name for name in changed), changed


def test_a_failure_while_moving_the_new_folder_in_keeps_the_old_one(tmp_path, monkeypatch):
    site = tmp_path / "site"
    out = site / "data"
    build_dataset(SAMPLE_DIR, out)
    before = snapshot(site)
    rename, failed = Path.rename, []

    def rename_failing_once_onto_out(self, target):
        if Path(target) == out and not failed:
            failed.append(self)
            raise OSError("rename failed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_failing_once_onto_out)
    with pytest.raises(OSError, match="rename failed"):
        build_dataset(SAMPLE_DIR, out)
    assert failed and snapshot(site) == before


# Atomic and deterministic builds --------------------------------------------------------------------------------------


def test_failed_build_leaves_an_existing_folder_and_its_parent_untouched(tmp_path):
    root = copy_sample(tmp_path)
    plant_row_problems(root)
    out = tmp_path / "site" / "data"
    build_dataset(SAMPLE_DIR, out)  # the previous build
    before = snapshot(tmp_path / "site")
    with pytest.raises(InvalidReleaseError):
        build_dataset(root, out)
    assert snapshot(tmp_path / "site") == before


def test_build_failing_mid_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    written = []

    def failing_card(*args, **kwargs):
        written.extend(site.rglob("*.parquet"))
        raise OSError("disk full")

    monkeypatch.setattr(builder, "dataset_card", failing_card)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(SAMPLE_DIR, site / "data")
    assert len(written) == 4 * len(SPLITS) + 1  # every Parquet file was written (elsewhere) when it failed...
    assert snapshot(site) == {}  # ...and none is left


def test_building_twice_gives_byte_identical_files(sample_dataset, tmp_path):
    build_dataset(copy_sample(tmp_path), tmp_path / "out")
    again = snapshot(tmp_path / "out")
    assert sorted(name for name in again if name.endswith(".parquet")) == sorted(
        str(p.relative_to(sample_dataset)) for p in sample_dataset.rglob("*.parquet")
    )
    for name, content in again.items():
        if content is not None:
            assert (sample_dataset / name).read_bytes() == content, name


COUNT_ROWS = "import datasets, sys; print(len(datasets.load_dataset(sys.argv[1], 'response', split='easy_test')))"


@pytest.mark.slow
def test_a_rebuilt_folder_loads_its_new_rows_and_not_the_cache_of_the_old_ones(tmp_path):
    """`datasets` caches a local folder under its name and card: every build's card must differ when the data does."""
    root, out, env = copy_sample(tmp_path), tmp_path / "site" / "data", offline_env(tmp_path)

    def rows_loaded() -> int:
        command = [sys.executable, "-c", COUNT_ROWS, str(out)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return int(result.stdout)

    build_dataset(root, out)
    assert rows_loaded() == len(raw("c_test_easy_task1.json"))
    write(root, "c_test_easy_task1.json", raw("c_test_easy_task1.json")[:5])
    build_dataset(root, out)
    assert rows_loaded() == 5


# Run in a fresh interpreter: the rows of every config and split, as `datasets` loads them.
LOAD_COUNTS = textwrap.dedent(
    """
    import json, sys
    import datasets

    folder = sys.argv[1]
    configs = datasets.get_dataset_config_names(folder)
    print(json.dumps({c: {s: len(d) for s, d in datasets.load_dataset(folder, c).items()} for c in configs}))
    """
)


@pytest.mark.slow
def test_two_datasets_in_folders_of_one_name_load_their_own_rows_through_one_cache(tmp_path):
    root = copy_sample(tmp_path)
    build_dataset(root, tmp_path / "a" / "data")
    write(root, "c_test_easy_task1.json", raw("c_test_easy_task1.json")[:5])
    write(root, "c_train.json", dict(list(raw("c_train.json").items())[:50]))
    build_dataset(root, tmp_path / "b" / "data")
    env = {**offline_env(tmp_path), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}  # one cache for both
    loaded = {}
    for name in ("a", "b", "a"):
        folder = tmp_path / name / "data"
        command = [sys.executable, "-c", LOAD_COUNTS, str(folder)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        loaded[name] = json.loads(result.stdout)
        assert loaded[name] == expected_counts(folder), name
    assert (loaded["a"]["dialogues"]["train"], loaded["a"]["response"]["easy_test"]) == (
        len(raw("c_train.json")),
        len(raw("c_test_easy_task1.json")),
    )
    assert (loaded["b"]["dialogues"]["train"], loaded["b"]["response"]["easy_test"]) == (50, 5)
    assert list((tmp_path / "hf" / "datasets").iterdir())  # the cache was used


def test_expected_counts_reads_the_dataset_info_of_a_local_card_only(sample_dataset, tmp_path):
    counts = expected_counts(sample_dataset)
    assert set(counts) == {"dialogues", "memes", "response", "retrieval", "emotion"}
    for config, splits in counts.items():
        assert splits == {split: len(read_parquet(sample_dataset, config, split)) for split in splits}, config
    assert expected_counts("someone/mod") is None  # a hub id: no local card
    (tmp_path / "README.md").write_text("---\nlicense: other\n---\n")
    assert expected_counts(tmp_path) is None  # a card that declares no counts


def test_make_sample_regenerates_the_committed_sample_byte_for_byte(tmp_path):
    made = snapshot(make_sample(tmp_path / "sample"))
    committed = snapshot(SAMPLE_DIR)
    assert sorted(made) == sorted(committed)
    assert [name for name in made if made[name] != committed[name]] == []


def test_the_sample_is_small():
    assert sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file()) <= 1024 * 1024


# Dataset card and stats ------------------------------------------------------------------------------------------------


def card_header(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_declares_every_config_and_split(sample_dataset):
    configs = {c["config_name"]: c for c in card_header(sample_dataset)["configs"]}
    assert set(configs) == {"dialogues", "memes", "response", "retrieval", "emotion"}
    assert [name for name, c in configs.items() if c.get("default")] == ["dialogues"]
    for name, config in configs.items():
        splits = [f["split"] for f in config["data_files"]]
        assert splits == (["train"] if name == "memes" else list(SPLITS)), name
        for data_file in config["data_files"]:
            assert len(list(sample_dataset.glob(data_file["path"]))) == 1, data_file


def test_card_has_licence_citation_statistics_and_release_record(sample_dataset, stats_output):
    header = card_header(sample_dataset)
    assert header["license"] == "other" and header["license_name"]
    card = (sample_dataset / "README.md").read_text(encoding="utf-8")
    assert "## Licence" in card and "research use only" in card
    assert "## Citation" in card and "@article{fei2021towards" in card and "arXiv:2109.01839" in card
    statistics = card.split("## Statistics")[1].split("```")[1].strip()
    release = card.split("## Release")[1].split("```")[1].strip()
    assert stats_output.strip() == f"{statistics}\n\n{release}"
    assert release.splitlines()[1:] == [
        f"  splits built: {', '.join(SPLITS)}; not built: none",
        "  missing files: none",
        "  blank answers (unannotated, null in the task views): none",
    ]


def test_stats_prints_tables_with_the_built_dialogue_counts(stats_output, loaded):
    lines = stats_output.splitlines()
    assert lines[0] == "Table 1: overall" and "Table 2: splits" in lines
    table = lines[lines.index("Table 2: splits") + 2 : lines.index("Release") - 1]
    rows = {line.split()[0]: line.split() for line in table}
    dialogues = {split: len(rows) for split, rows in loaded["splits"].items()}
    assert dialogues["train"] == len(raw("c_train.json")) and dialogues["validation"] == len(raw("c_val.json"))
    assert {split: int(row[1]) for split, row in rows.items()} == dialogues
    assert f"dialogues {sum(dialogues.values())}," in lines[1]
    assert f"memes {len(raw('img2id.json'))}, emotions {len(raw('emotion_dict.json'))}," in lines[2]


# Upload ----------------------------------------------------------------------------------------------------------------


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls, uploads nothing."""

    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return SimpleNamespace(commit_url=f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/0123")


@pytest.fixture
def hub(monkeypatch) -> list:
    monkeypatch.setattr(RecordingHfApi, "calls", [])
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    return RecordingHfApi.calls


def test_push_to_hub_creates_a_dataset_repo_and_uploads_the_built_folder(sample_dataset, hub):
    url = push_to_hub(sample_dataset, "someone/mod")
    assert [(name, repo) for name, repo, _ in hub] == [
        ("create_repo", "someone/mod"),
        ("upload_folder", "someone/mod"),
    ]
    assert hub[0][2]["repo_type"] == "dataset"
    assert hub[1][2]["folder_path"] == str(sample_dataset) and hub[1][2]["repo_type"] == "dataset"
    assert hub[1][2]["delete_patterns"] == ["*.parquet"]  # an earlier upload's files (other digests) are replaced
    assert url == "https://huggingface.co/datasets/someone/mod/commit/0123"


def test_cli_push_to_hub_uploads_what_it_built(tmp_path, hub, capsys):
    assert main(["build", str(SAMPLE_DIR), str(tmp_path / "out"), "--push_to_hub", "someone/mod"]) == 0
    assert hub[1][2]["folder_path"] == str(tmp_path / "out") and hub[1][2]["repo_type"] == "dataset"
    assert "uploaded: https://huggingface.co/datasets/someone/mod/commit/0123" in capsys.readouterr().out


def test_cli_builds_into_an_empty_working_directory_and_uploads_it(tmp_path, hub, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["build", str(SAMPLE_DIR), ".", "--push-to-hub", "someone/mod"]) == 0
    assert hub[1][2]["folder_path"] == str(work)
    assert (work / ".mod_dataset.json").is_file()
    assert expected_counts(work)["memes"] == {"train": len(raw("img2id.json"))}
