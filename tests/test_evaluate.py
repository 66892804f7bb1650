"""evaluate_mod.py on a model trained on the sample: the paper's tables, their JSON, and the submission files."""

import json
import re
from pathlib import Path

import pytest
from conftest import run_script

from mod_dataset import SAMPLE_DIR
from mod_dataset.release import TASK_SPLITS

TABLE_TITLES = ("Table 4: text response", "Table 5: meme retrieval", "Meme usage", "Table 7: emotion")


@pytest.fixture(scope="module")
def evaluated(sample_dataset, tmp_path_factory) -> tuple[str, dict, Path]:
    folder = tmp_path_factory.mktemp("evaluate")
    model = folder / "model"
    train_args = ["--dataset", str(sample_dataset), "--output_dir", str(model), "--model_config", "tiny"]
    train_args += ["--meme_encoder", "test_efficientnet", "--normalize_meme_features", "--max_steps", "4"]
    trained = run_script("train.py", *train_args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    results, submission = folder / "results.json", folder / "submission"
    evaluation = run_script(
        "evaluate_mod.py",
        *["--model", str(model), "--dataset", str(sample_dataset), "--batch_size", "64", "--max_new_tokens", "8"],
        *["--output", str(results), "--write-submission", str(submission)],
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    return evaluation.stdout, json.loads(results.read_text()), submission


def table_rows(stdout: str, title: str) -> list[list[str]]:
    """The cells of the rows of one printed table (its header excluded)."""
    block = stdout.split(title, 1)[1].strip().split("\n\n")[0].splitlines()
    return [re.split(r"\s{2,}|\s(?=[-\d])", line.strip()) for line in block[2:]]


def test_every_table_is_printed_with_a_number_in_every_cell(evaluated):
    stdout, _, _ = evaluated
    for title in TABLE_TITLES:
        assert title in stdout, title
    names = [row[0] for row in table_rows(stdout, "Table 5: meme retrieval")]
    assert names == ["easy_test", "hard_test (seen)", "hard_test (unseen)"]
    for title in TABLE_TITLES:
        for row in table_rows(stdout, title):
            cells = row[-5:] if title.startswith("Table 4") or title.startswith("Table 5") else row[-2:]
            assert all(re.fullmatch(r"\d+\.\d\d", cell) for cell in cells), (title, row)


def test_results_json_holds_every_figure(evaluated):
    _, results, _ = evaluated
    assert sorted(results) == ["easy_test", "hard_test"]
    for split, result in results.items():
        assert sorted(result["text"]) == ["bleu-2", "bleu-4", "dist-1", "dist-2", "perplexity"]
        assert result["text"]["perplexity"] > 1
        groups = ["seen", "unseen"] if split == "hard_test" else ["seen"]
        for scores in [result["retrieval"], *(result["retrieval"][group] for group in groups)]:
            assert {"R10@1", "R10@2", "R10@5", "RT@5", "MAP"} <= set(scores)
            assert 0 <= scores["R10@1"] <= scores["R10@2"] <= scores["R10@5"] <= 1
        assert {"accuracy", "f1"} <= set(result["usage"])
        assert 0 <= result["emotion"]["accuracy@1"] <= result["emotion"]["accuracy@5"] <= 1
        assert len(result["samples"]) == 3 and all(isinstance(s["reply"], str) for s in result["samples"])


@pytest.mark.parametrize("split", ["easy_test", "hard_test"])
def test_submission_files_follow_the_release_instance_by_instance(evaluated, split):
    _, _, submission = evaluated
    for task in ("task1", "task2", "task3"):
        name = f"c_{TASK_SPLITS[split]}_{task}.json"
        raw = json.loads((SAMPLE_DIR / name).read_text(encoding="utf-8"))
        written = json.loads((submission / name).read_text(encoding="utf-8"))
        assert len(written) == len(raw), name
        for ours, theirs in zip(written, raw):
            assert ours["history"] == theirs["history"], name
            assert ours["answer"]["speaker_id"] == theirs["answer"]["speaker_id"], name
            if task == "task1":
                assert isinstance(ours["answer"]["txt"], str)
            if task == "task2":  # the official candidates, reordered by the model, the first one as the answer
                assert sorted(ours["candidate"]["set"]) == sorted(theirs["candidate"]["set"])
                assert ours["answer"]["img_id"] == ours["candidate"]["set"][0]
            if task == "task3":
                assert len(ours["answer"]["emotion_id"]) == 5
