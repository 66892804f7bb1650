"""Build the MOD dataset (DSTC10 Track 1) as a standard hub dataset: Parquet files and a dataset card.

    python -m mod_dataset build RAW_DIR OUT_DIR [--language zh|en] [--skip_invalid] [--push_to_hub REPO_ID]
    python -m mod_dataset stats OUT_DIR
    python -m mod_dataset make-sample DIR

`datasets.load_dataset(OUT_DIR)` then reads it with no custom code. A split (`train`, `validation`, `easy_test`,
`hard_test`) is built when the release has its files: the train/validation release, the challenge's test release
(blank answers), and the full release all build. A split with only some of its three task files, a task file that
mixes blank and annotated answers, and a release with no split at all are errors. Configs (`memes` has one split,
`train`, holding every meme):

- `dialogues` (default): `dialogue_id: str`, `turns: list[{speaker: "speaker1"|"speaker2", text: str|None,
  meme: str|None, emotion: ClassLabel|None}]` (`emotion` is None for a meme turn without `emotion_id`);
- `memes`: `meme_id`, `image` (`datasets.Image`, bytes embedded), `file_name`, `seen` (used in train; None when
  the release has no train dialogues), and `feature` (the organisers' vector) when the release has `id2feature.json`;
- `response`: `id`, `history` (turns), `speaker` (who answers), `answer` (text);
- `retrieval`: `id`, `history` (the turns before the reply), `speaker`, `answer_text` (the reply's text, which the
  release puts as the last history turn; None for a meme-only reply), `candidates` (meme ids, as given),
  `answer` (the gold meme id);
- `emotion`: `id`, `history` (its last turn holds the meme, its emotion None), `speaker`, `answer` (ClassLabel).

Task views come from the task files where the release has them, else they are cut from the split's dialogues. An
answer the release leaves blank is None. A split with task files only (the tests) has no whole dialogues: its
`dialogues` are built from the task instances so that every turn's meme use is stated. Task 1 gives its history
(whether its answer came with a meme is not said), task 2 its history with the reply as one turn (text and gold
meme), task 3 its history with the gold emotion on the last turn; blank answers are left out. A path that is the
start of another (speaker, text and meme alike) is dropped; `dialogue_id` names the instance kept, e.g.
`easy_test task2 17`. The card's YAML key `mod_release` records the splits built, the missing dialogue and task
files, and by split the task views whose answers are blank (`unannotated`). Its `dataset_info` declares the rows
of every config and split: `expected_counts(OUT_DIR)` returns them (None for a hub id), for code that checks what it
loaded.

Every problem of the release is listed with its file and place (dialogue id or instance, turn, field), never raised
from deep inside: missing or malformed files, and valid JSON of the wrong kind. Meme ids are strings everywhere (the
official ids are zero-padded: "042"; a number such as 42 could mean "042" or "42" and is reported), emotion ids are
integers (2.7, 2.0 and true are reported). An image must lie inside the release: an `img2id.json` name with `..` or
an absolute path, or a link out of the release folder, is reported; images are always embedded as bytes, stored
under their bare file name.

`OUT_DIR` may be new, empty, or a folder built here before (recognised by the marker file `.mod_dataset.json`),
which is replaced whole; any other existing path, the release folder, a folder holding it and a folder inside it
are refused (`OutputFolderError`) before any work, and nothing is deleted.
"""

from pathlib import Path

from .build import SPLITS, OutputFolderError, build_dataset, push_to_hub
from .card import check_row_counts, expected_counts, format_statistics, statistics
from .release import InvalidReleaseError, Problem
from .sample import make_sample

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

__all__ = [
    "SAMPLE_DIR",
    "SPLITS",
    "InvalidReleaseError",
    "OutputFolderError",
    "Problem",
    "build_dataset",
    "check_row_counts",
    "expected_counts",
    "format_statistics",
    "make_sample",
    "push_to_hub",
    "statistics",
]
