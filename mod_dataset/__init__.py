"""Build the MOD dataset (DSTC10 Track 1) as a standard hub dataset: Parquet files and a dataset card.

    python -m mod_dataset build RAW_DIR OUT_DIR [--language zh|en] [--skip-invalid] [--push-to-hub REPO_ID]
    python -m mod_dataset stats OUT_DIR
    python -m mod_dataset make-sample DIR

`datasets.load_dataset(OUT_DIR)` then reads it with no custom code. Configs (splits `train`, `validation`,
`easy_test`, `hard_test`, except `memes`, which has one split, `train`, holding every meme):

- `dialogues` (default): `dialogue_id: str`, `turns: list[{speaker: "speaker1"|"speaker2", text: str|None,
  meme: str|None, emotion: ClassLabel|None}]`;
- `memes`: `meme_id`, `image` (`datasets.Image`, bytes embedded), `file_name`, `seen` (used in train), and
  `feature` (the organisers' vector) when the release has `id2feature.json`;
- `response`: `id`, `history` (turns), `speaker` (who answers), `answer` (text);
- `retrieval`: `id`, `history`, `speaker`, `answer_text` (text of the answering turn, if any), `candidates`
  (meme ids), `answer` (the gold meme id);
- `emotion`: `id`, `history` (its last turn holds the meme), `speaker`, `answer` (ClassLabel).
"""

from pathlib import Path

from .build import SPLITS, build_dataset, push_to_hub
from .card import format_statistics, statistics
from .release import InvalidReleaseError, Problem
from .sample import make_sample

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

__all__ = [
    "SAMPLE_DIR",
    "SPLITS",
    "InvalidReleaseError",
    "Problem",
    "build_dataset",
    "format_statistics",
    "make_sample",
    "push_to_hub",
    "statistics",
]
