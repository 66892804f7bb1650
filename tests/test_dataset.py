"""mod_dataset: the built sample against the raw release files, loading in a fresh process, every kind of bad input
reported at once (or skipped), atomic and deterministic builds, the dataset card, stats, and the hub upload."""

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
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO_ROOT
from PIL import Image

import mod_dataset.build as builder
from mod_dataset import SAMPLE_DIR, SPLITS, InvalidReleaseError, build_dataset, make_sample, push_to_hub
from mod_dataset.__main__ import main

TASKS = ("task1", "task2", "task3")
TASK_FILES = {"validation": "c_val", "easy_test": "c_test_easy", "hard_test": "c_test_hard"}
VIEWS = {"task1": "response", "task2": "retrieval", "task3": "emotion"}

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
    return pq.read_table(folder / config / f"{split}-00000-of-00001.parquet").to_pylist()


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
    for split in ("easy_test", "hard_test"):
        assert rows[split] == sum(len(raw(task_file(split, task))) for task in TASKS), split


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


@pytest.mark.parametrize("split", ["easy_test", "hard_test"])
def test_test_split_rows_are_the_task_instances(loaded, split):
    """One row per instance: its history plus the answer turn (task 3: the history alone, its last turn is the meme)."""
    expected = []
    for task in TASKS:
        for instance in raw(task_file(split, task)):
            answer = {**instance["answer"], "emotion_id": None}
            tail = [] if task == "task3" else [as_turn(answer)]
            expected.append([as_turn(t) for t in instance["history"]] + tail)
    assert [row["turns"] for row in loaded["splits"][split]] == expected


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
            assert row["history"] == [as_turn(t) for t in instance["history"]]
            assert row["speaker"] == instance["answer"]["speaker_id"].strip("[]")
            if task == "task1":
                assert row["answer"] == instance["answer"]["txt"]
            elif task == "task2":
                assert row["candidates"] == instance["candidate"]["set"]
                assert row["answer"] == instance["answer"]["img_id"]
            else:
                assert row["answer"] == instance["answer"]["emotion_id"]


def test_train_task_views_are_cut_from_train_dialogues(loaded):
    dialogues = {row["dialogue_id"]: row["turns"] for row in loaded["splits"]["train"]}
    retrieval = loaded["views"]["retrieval"]["train"]
    assert len(retrieval) == sum(1 for turns in dialogues.values() for t in turns[1:] if t["meme"])
    for row in retrieval:
        assert len(row["candidates"]) == 10 and len(set(row["candidates"])) == 10
        assert row["answer"] in row["candidates"]
        assert any(turns[: len(row["history"])] == row["history"] for turns in dialogues.values())


# Bad input -------------------------------------------------------------------------------------------------------------


def copy_sample(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    shutil.copytree(SAMPLE_DIR, root)
    return root


def write(root: Path, name: str, content) -> None:
    (root / name).write_text(json.dumps(content, ensure_ascii=False, indent=1), encoding="utf-8")


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
    task2 = raw("c_val_task2.json", root)
    outsider = next(m for m in sorted(raw("img2id.json").values()) if m not in task2[2]["candidate"]["set"])
    task2[2]["answer"]["img_id"] = outsider
    write(root, "c_val_task2.json", task2)
    user_of_010 = next(
        i for i, turns in train.items() if isinstance(turns, list) and any(t.get("img_id") == "010" for t in turns)
    )
    return [
        ("c_train.json", "'dialogue 3', turn 0", "turn has no speaker_id"),
        ("c_train.json", "'dialogue 5', turn 0", "img_id '999' is not in img2id.json"),
        ("c_train.json", "'dialogue 7'", "must be a non-empty list of turns"),
        ("meme_set/010.png", "'010'", "image file is missing"),
        ("meme_set/011.png", "'011'", "image cannot be decoded"),
        ("c_train.json", f"'{user_of_010}'", "img_id '010' has no usable image"),
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
    assert skipped["a dialogue must be a non-empty list of turns, got str"] == 1
    assert sum(n for reason, n in skipped.items() if reason.startswith("answer meme")) == 1
    assert skipped["img_id '010' has no usable image"] > 0 and skipped["img_id '011' has no usable image"] > 0

    train = raw("c_train.json", root)
    bad = {"dialogue 3", "dialogue 5", "dialogue 7"}
    uses_broken_meme = {
        i for i, turns in train.items() if i not in bad and {"010", "011"} & {t.get("img_id") for t in turns}
    }
    built = [row["dialogue_id"] for row in read_parquet(tmp_path / "out", "dialogues", "train")]
    assert built == [i for i in train if i not in bad | uses_broken_meme]
    memes = {row["meme_id"] for row in read_parquet(tmp_path / "out", "memes", "train")}
    assert memes == set(raw("img2id.json").values()) - {"010", "011"}
    answers = [row["answer"] for row in read_parquet(tmp_path / "out", "retrieval", "validation")]
    kept = [x for i, x in enumerate(raw("c_val_task2.json", root)) if i != 2]
    kept = [x for x in kept if not {"010", "011"} & {*x["candidate"]["set"], *(t.get("img_id") for t in x["history"])}]
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


# Atomic and deterministic builds --------------------------------------------------------------------------------------


def test_failed_build_leaves_an_existing_folder_and_its_parent_untouched(tmp_path):
    root = copy_sample(tmp_path)
    plant_row_problems(root)
    out = tmp_path / "site" / "data"
    out.mkdir(parents=True)
    (out / "README.md").write_text("the previous build")
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


def test_make_sample_regenerates_the_committed_sample_byte_for_byte(tmp_path):
    made = snapshot(make_sample(tmp_path / "sample"))
    committed = snapshot(SAMPLE_DIR)
    assert sorted(made) == sorted(committed)
    assert [name for name in made if made[name] != committed[name]] == []


def test_the_sample_is_small():
    assert sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file()) <= 2 * 1024 * 1024


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


def test_card_has_licence_citation_and_statistics(sample_dataset, stats_output):
    header = card_header(sample_dataset)
    assert header["license"] == "other" and header["license_name"]
    card = (sample_dataset / "README.md").read_text(encoding="utf-8")
    assert "## Licence" in card and "research use only" in card
    assert "## Citation" in card and "@article{fei2021towards" in card and "arXiv:2109.01839" in card
    statistics = card.split("## Statistics")[1].split("```")[1].strip()
    assert statistics == stats_output.strip()


def test_stats_prints_tables_with_the_raw_dialogue_counts(stats_output):
    lines = stats_output.splitlines()
    assert lines[0] == "Table 1: overall" and "Table 2: splits" in lines
    rows = {line.split()[0]: line.split() for line in lines[lines.index("Table 2: splits") + 2 :]}
    dialogues = {
        "train": len(raw("c_train.json")),
        "validation": len(raw("c_val.json")),
        **{split: sum(len(raw(task_file(split, t))) for t in TASKS) for split in ("easy_test", "hard_test")},
    }
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
    assert url == "https://huggingface.co/datasets/someone/mod/commit/0123"


def test_cli_push_to_hub_uploads_what_it_built(tmp_path, hub, capsys):
    assert main(["build", str(SAMPLE_DIR), str(tmp_path / "out"), "--push-to-hub", "someone/mod"]) == 0
    assert hub[1][2]["folder_path"] == str(tmp_path / "out") and hub[1][2]["repo_type"] == "dataset"
    assert "uploaded: https://huggingface.co/datasets/someone/mod/commit/0123" in capsys.readouterr().out
