"""mod_dataset against any JSON: random values in place of whole files and of single fields of a tiny valid release
either build or raise `InvalidReleaseError` naming the file changed, never any other exception."""

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mod_dataset import InvalidReleaseError, build_dataset, expected_counts

FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True)
MEMES = ["000", "001", "002", "003"]
EMOTIONS = {"happy": 0, "sad": 1, "angry": 2}


def turn(speaker: int, text: str | None = None, meme: str | None = None, emotion: int | None = None) -> dict:
    content = {"txt": text, "img_id": meme, "emotion_id": emotion}
    return {"speaker_id": f"[speaker{speaker}]", **{key: value for key, value in content.items() if value is not None}}


def tiny_release(root: Path) -> Path:
    """Four 8x8 memes, three emotions, train and validation dialogues, validation task files (annotated) and easy
    test task files (blank answers): every part a release may have, small enough to build in a moment."""
    (root / "meme_set").mkdir(parents=True)
    for index, meme in enumerate(MEMES):
        Image.new("RGB", (8, 8), (60 * index, 255 - 60 * index, 90)).save(root / "meme_set" / f"{meme}.png")
    dialogues = {
        "dialogue 0": [turn(1, "hi"), turn(2, "great", "000", 0), turn(1, meme="001")],
        "dialogue 1": [turn(1, "rain again"), turn(2, meme="002", emotion=1), turn(1, "yes")],
        "dialogue 2": [turn(2, "exam"), turn(1, "ugh", "003", 2)],
    }
    history = [turn(1, "hello"), turn(2, "look", "001", 0)]
    tasks = {
        "task1": {"history": history, "answer": {"speaker_id": "[speaker1]", "txt": "nice"}},
        "task2": {
            "history": [*history, turn(1, "me too")],
            "candidate": {"speaker_id": "[speaker1]", "set": list(MEMES)},
            "answer": {"speaker_id": "[speaker1]", "img_id": "002"},
        },
        "task3": {"history": [*history, turn(1, meme="003")], "answer": {"speaker_id": "[speaker1]", "emotion_id": 2}},
    }
    files = {
        "emotion_dict.json": EMOTIONS,
        "img2id.json": {f"{meme}.png": meme for meme in MEMES},
        "id2feature.json": {meme: [0.5 * index, -1.0, 2.0, 0.25] for index, meme in enumerate(MEMES)},
        "c_train.json": {key: dialogues[key] for key in ("dialogue 0", "dialogue 1")},
        "c_val.json": {"dialogue 2": dialogues["dialogue 2"]},
        **{f"c_val_{task}.json": [instance] for task, instance in tasks.items()},
    }
    blank = {"task1": "txt", "task2": "img_id", "task3": "emotion_id"}
    for task, instance in tasks.items():
        answer = {"speaker_id": "[speaker1]", blank[task]: ""}
        files[f"c_test_easy_{task}.json"] = [{**instance, "answer": answer}, {**instance, "answer": answer}]
    for name, content in files.items():
        write(root / name, content)
    return root


def write(path: Path, content) -> None:
    path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tiny_release(tmp_path_factory.mktemp("tiny") / "raw")
    build_dataset(root, root.parent / "out")  # the unchanged release builds
    return root


def assert_built_or_reported(release: Path, changed: str, change: Callable[[Path], None], skip_invalid: bool) -> None:
    """Apply `change` to a copy of the release and build it: it builds, with the rows its card declares, or raises
    `InvalidReleaseError` whose problems say where they are and name the file changed."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(shutil.copytree(release, Path(folder) / "raw", symlinks=True))
        change(root)
        out = Path(folder) / "out"
        try:
            result = build_dataset(root, out, skip_invalid=skip_invalid)
        except InvalidReleaseError as error:
            assert error.problems and all(problem.file for problem in error.problems)
            assert changed in str(error), str(error)
            return
        assert expected_counts(out) == result["counts"]
        rows = sum(pq.read_metadata(path).num_rows for path in out.rglob("*.parquet"))
        assert rows == sum(n for splits in result["counts"].values() for n in splits.values())


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
# Values a release holds, so that some changes keep it valid (or nearly) and the build itself runs.
release_values = st.sampled_from(
    [*MEMES, "", "[speaker1]", "[speaker2]", "hello", 0, 1, 2, 3, 2.0, True, None, [], {}, ["000", "001"]]
)
any_value = json_values | release_values

FILES = [
    "emotion_dict.json",
    "img2id.json",
    "id2feature.json",
    "c_train.json",
    "c_val.json",
    "c_val_task1.json",
    "c_val_task2.json",
    "c_val_task3.json",
    "c_test_easy_task2.json",
]
FIELDS = [  # (file, keys to the value replaced)
    ("c_train.json", ("dialogue 0",)),  # turns
    ("c_train.json", ("dialogue 0", 1)),  # a turn
    ("c_train.json", ("dialogue 0", 1, "img_id")),
    ("c_train.json", ("dialogue 0", 1, "emotion_id")),
    ("c_train.json", ("dialogue 1", 1, "emotion_id")),
    ("c_train.json", ("dialogue 0", 0, "txt")),
    ("c_train.json", ("dialogue 0", 0, "speaker_id")),
    ("c_val_task1.json", (0,)),  # an instance
    ("c_val_task1.json", (0, "history")),
    ("c_val_task1.json", (0, "answer")),
    ("c_val_task1.json", (0, "answer", "txt")),
    ("c_val_task2.json", (0, "candidate")),
    ("c_val_task2.json", (0, "candidate", "set")),
    ("c_val_task2.json", (0, "candidate", "set", 0)),
    ("c_val_task2.json", (0, "answer", "img_id")),
    ("c_val_task3.json", (0, "history", -1, "img_id")),
    ("c_val_task3.json", (0, "answer", "emotion_id")),
    ("c_test_easy_task2.json", (1, "answer", "img_id")),
    ("c_test_easy_task3.json", (0, "answer")),
    ("id2feature.json", ("000",)),  # a feature vector
    ("id2feature.json", ("001", 2)),
    ("emotion_dict.json", ("sad",)),
    ("img2id.json", ("002.png",)),
]


def replace_file(name: str, value) -> Callable[[Path], None]:
    return lambda root: write(root / name, value)


def replace_field(name: str, keys: tuple, value) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        content = json.loads((root / name).read_text(encoding="utf-8"))
        target = content
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        write(root / name, content)

    return change


@FUZZ
@given(name=st.sampled_from(FILES), value=any_value, skip_invalid=st.booleans())
def test_a_whole_file_replaced_by_any_json_value(release, name, value, skip_invalid):
    assert_built_or_reported(release, name, replace_file(name, value), skip_invalid)


@FUZZ
@given(field=st.sampled_from(FIELDS), value=any_value, skip_invalid=st.booleans())
def test_a_field_replaced_by_any_json_value(release, field, value, skip_invalid):
    name, keys = field
    assert_built_or_reported(release, name, replace_field(name, keys, value), skip_invalid)


@FUZZ
@given(name=st.sampled_from(FILES), data=st.data())
def test_a_file_cut_short_or_replaced_by_any_bytes(release, name, data):
    """A truncated download, another encoding, binary junk."""
    original = (release / name).read_bytes()
    content = data.draw(st.binary(max_size=64) | st.integers(0, len(original)).map(lambda n: original[:n]))
    assert_built_or_reported(release, name, lambda root: (root / name).write_bytes(content), skip_invalid=False)


file_names = st.text(max_size=12) | st.sampled_from(
    ["000.png", "./001.png", "../000.png", "../../000.png", "/etc/hostname", "a" * 300, "", ".", "x\x00.png"]
)


@FUZZ
@given(
    img2id=st.dictionaries(file_names, st.sampled_from(MEMES) | json_values, max_size=5), skip_invalid=st.booleans()
)
def test_img2id_naming_any_files(release, img2id, skip_invalid):
    assert_built_or_reported(release, "img2id.json", replace_file("img2id.json", img2id), skip_invalid)
