"""The paper-profile release generator: the paper's Table 2 numbers, the long tail, seen and unseen memes, a release
that builds, and the same bytes from the same seed."""

import random

import pyarrow.parquet as pq
import pytest

from mod_dataset import build_dataset
from mod_dataset.build import to_turn
from mod_dataset.sample import (
    PAPER_PROFILE,
    PROFILE_EMOTIONS,
    ReleaseProfile,
    make_profile_release,
    profile_dialogues,
)

FRACTION = 0.05  # 2,259 dialogues: enough for the averages to settle within a few percent
DECODER_POSITIONS = 513


@pytest.fixture(scope="module")
def splits() -> dict[str, list[list[dict]]]:
    return profile_dialogues(random.Random(0), PAPER_PROFILE, FRACTION)


def encoded_length(turns: list[dict]) -> int:
    """Tokens of a dialogue as the processor lays it out: `[speakerK] [BOS] text [EOS] [TAG] ([IMG])` per turn."""
    return sum(len(turn.get("txt", "")) + 4 + ("img_id" in turn) for turn in turns)


def test_split_sizes_add_up_to_the_paper_and_scale_with_the_fraction():
    full = PAPER_PROFILE.split_sizes()
    assert sum(full.values()) == 45_174
    eighth = PAPER_PROFILE.split_sizes(1 / 8)
    assert all(abs(eighth[split] - full[split] / 8) <= 1 for split in full)
    with pytest.raises(ValueError, match="fraction"):
        PAPER_PROFILE.split_sizes(0)


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"emotions": 53}, "emotions"), ({"seen_memes": 307}, "seen_memes"), ({"turns_per_dialogue": 2}, "turns")],
)
def test_a_profile_that_cannot_be_generated_is_refused(changes, field):
    with pytest.raises(ValueError, match=field):
        ReleaseProfile(**changes)


def test_averages_match_the_paper(splits):
    dialogues = [turns for rows in splits.values() for turns in rows]
    turns = [turn for dialogue in dialogues for turn in dialogue]
    texts = [turn["txt"] for turn in turns if "txt" in turn]
    memes = [turn for turn in turns if "img_id" in turn]
    assert len(dialogues) == sum(PAPER_PROFILE.split_sizes(FRACTION).values())
    assert len(turns) / len(dialogues) == pytest.approx(13.42, rel=0.03)
    assert sum(map(len, texts)) / len(texts) == pytest.approx(11.46, rel=0.03)
    assert len(memes) / len(dialogues) == pytest.approx(4.06, rel=0.05)
    assert all(len(dialogue) >= 2 for dialogue in dialogues)


def test_long_tail_passes_the_decoder_positions(splits):
    lengths = [encoded_length(turns) for rows in splits.values() for turns in rows]
    past = sum(length > DECODER_POSITIONS for length in lengths) / len(lengths)
    assert 0.005 <= past <= 0.05


def test_unseen_memes_appear_only_in_the_hard_test(splits):
    def memes(split: str) -> set[int]:
        return {int(turn["img_id"]) for turns in splits[split] for turn in turns if "img_id" in turn}

    seen = PAPER_PROFILE.seen_memes
    for split in ("train", "val", "test_easy"):
        assert max(memes(split)) < seen
    hard = memes("test_hard")
    assert any(meme >= seen for meme in hard) and any(meme < seen for meme in hard)
    assert max(hard) < PAPER_PROFILE.memes
    emotions = {turn.get("emotion_id") for turns in splits["train"] for turn in turns if "img_id" in turn}
    assert None in emotions and max(e for e in emotions if e is not None) < PAPER_PROFILE.emotions


def test_turns_are_valid_dataset_turns(splits):
    for turns in splits["train"][:50]:
        for index, turn in enumerate(map(to_turn, turns)):
            assert turn["speaker"] == ("speaker1", "speaker2")[index % 2]
            assert turn["text"] or turn["meme"]


def test_same_seed_same_dialogues_other_seed_others():
    first = profile_dialogues(random.Random(3), PAPER_PROFILE, 0.002)
    assert first == profile_dialogues(random.Random(3), PAPER_PROFILE, 0.002)
    assert first != profile_dialogues(random.Random(4), PAPER_PROFILE, 0.002)


def snapshot(folder) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_release_builds_with_the_paper_memes_and_emotions(tmp_path):
    raw = make_profile_release(tmp_path / "raw", fraction=0.004, seed=1)
    assert snapshot(raw) == snapshot(make_profile_release(tmp_path / "again", fraction=0.004, seed=1))
    result = build_dataset(raw, tmp_path / "built")
    sizes = PAPER_PROFILE.split_sizes(0.004)
    counts = result["counts"]
    assert counts["memes"]["train"] == PAPER_PROFILE.memes
    assert counts["dialogues"]["train"] == sizes["train"]
    assert counts["dialogues"]["validation"] == sizes["val"]
    assert counts["response"]["easy_test"] == sizes["test_easy"]  # one task-1 instance per test dialogue
    assert len(list((raw / "meme_set").iterdir())) == PAPER_PROFILE.memes
    (memes_file,) = (tmp_path / "built" / "memes").glob("train-*.parquet")
    seen = [
        int(row["meme_id"])
        for row in pq.read_table(memes_file, columns=["meme_id", "seen"]).to_pylist()
        if row["seen"]
    ]
    assert seen and max(seen) < PAPER_PROFILE.seen_memes
    assert (raw / "emotion_dict.json").read_text(encoding="utf-8").count(":") == len(PROFILE_EMOTIONS) == 52
