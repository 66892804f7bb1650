"""evaluate_mod.py: the paper's tables, their JSON and the submission files, end to end on a model trained on the
sample, and its parts on rows built here in the dataset's schema."""

import json
import math
import re
import shutil
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import DIALOGUES, run_script
from test_inference import marked_copy
from transformers import GenerationConfig

import evaluate_mod
from mod_dataset import SAMPLE_DIR
from mod_dataset.release import TASK_SPLITS
from mod_metrics import load_metric
from pipeline_mod import forward_dialogues, prompt_lengths

TABLE_TITLES = ("Table 4: text response", "Table 5: meme retrieval", "Meme usage", "Table 7: emotion")
TEXT_SCORES = [
    *(f"bleu-{n}" for n in range(1, 5)),
    *(f"sentence-bleu-{n}" for n in range(1, 5)),
    "sacrebleu-2",
    "sacrebleu-4",
    *(f"dist-{n}" for n in range(1, 5)),
    "perplexity",
]


@pytest.fixture(scope="module")
def trained_model(sample_dataset, tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("evaluate") / "model"
    train_args = ["--dataset", str(sample_dataset), "--output_dir", str(model), "--model_config", "tiny"]
    train_args += ["--meme_encoder", "test_efficientnet", "--normalize_meme_features", "--max_steps", "4"]
    trained = run_script("train.py", *train_args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return model


@pytest.fixture(scope="module")
def evaluated(sample_dataset, trained_model, tmp_path_factory) -> tuple[str, dict, Path]:
    folder = tmp_path_factory.mktemp("evaluated")
    results, submission = folder / "results.json", folder / "submission"
    evaluation = run_script(
        "evaluate_mod.py",
        *["--model", str(trained_model), "--dataset", str(sample_dataset), "--batch_size", "64"],
        *["--max_new_tokens", "8", "--output", str(results), "--write_submission", str(submission)],
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    return evaluation.stdout, json.loads(results.read_text()), submission


def table_rows(stdout: str, title: str) -> list[list[str]]:
    """The cells of the rows of one printed table (its header excluded)."""
    block = stdout.split(title, 1)[1].strip().split("\n\n")[0].splitlines()
    return [re.split(r"\s{2,}|\s(?=[-\d])", line.strip()) for line in block[2:]]


def table_header(stdout: str, title: str) -> list[str]:
    return stdout.split(title, 1)[1].strip().splitlines()[1].split()


# End to end on the sample -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_table_is_printed_with_a_number_in_every_cell(evaluated):
    stdout, results, _ = evaluated
    for title in TABLE_TITLES:
        assert title in stdout, title
    names = [row[0] for row in table_rows(stdout, "Table 5: meme retrieval")]
    assert names == ["easy_test", "hard_test (seen)", "hard_test (unseen)"]
    for title in ("Table 4", "Table 5"):
        for row in table_rows(stdout, title):
            assert all(re.fullmatch(r"\d+\.\d\d", cell) for cell in row[-5:]), (title, row)
    for row in table_rows(stdout, "Table 7: emotion"):
        assert all(re.fullmatch(r"\d+\.\d\d", cell) for cell in row[-2:]), row
    assert table_header(stdout, "Table 7: emotion") == ["split", "top-1", "top-5"]
    for split, accuracy, f1, count in table_rows(stdout, "Meme usage"):
        assert re.fullmatch(r"\d+\.\d\d", accuracy) and re.fullmatch(r"\d+\.\d\d", f1)
        assert int(count) == results[split]["usage"]["count"]


@pytest.mark.slow
def test_table_4_shows_the_official_corpus_bleu(evaluated):
    stdout, results, _ = evaluated
    assert "the organisers' nltk corpus BLEU" in stdout
    assert table_header(stdout, "Table 4: text response")[1:] == ["PPL", "BLEU-2", "BLEU-4", "Dist-1", "Dist-2"]
    for split, *cells in table_rows(stdout, "Table 4: text response"):
        text = results[split]["text"]
        assert [float(cell) for cell in cells] == [
            round(text[name], 2) for name in ("perplexity", "bleu-2", "bleu-4", "dist-1", "dist-2")
        ]


@pytest.mark.slow
def test_results_json_holds_every_figure(evaluated, sample_dataset):
    _, results, _ = evaluated
    assert sorted(results) == ["easy_test", "hard_test"]  # the dataset's test splits, by default
    for split, result in results.items():
        assert result["annotated"] is True
        assert sorted(result["text"]) == sorted(TEXT_SCORES)
        assert result["text"]["perplexity"] > 1
        groups = ["seen", "unseen"] if split == "hard_test" else ["seen"]
        for scores in [result["retrieval"], *(result["retrieval"][group] for group in groups)]:
            assert {"R10@1", "R10@2", "R10@5", "RT@5", "MAP"} <= set(scores)
            assert 0 <= scores["R10@1"] <= scores["R10@2"] <= scores["R10@5"] <= 1
        dialogues = datasets.load_dataset(str(sample_dataset), "dialogues", split=split)
        assert result["usage"]["count"] == sum(len(row["turns"]) - 1 for row in dialogues)
        assert {"accuracy", "f1"} <= set(result["usage"])
        assert result["emotion"]["ks"] == [1, 5]
        assert 0 <= result["emotion"]["accuracy@1"] <= result["emotion"]["accuracy@5"] <= 1
        assert len(result["samples"]) == 3 and all(isinstance(s["reply"], str) for s in result["samples"])


@pytest.mark.slow
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
            if task == "task2":  # the official candidates as given, and ranked by the model in the answer
                assert ours["candidate"] == theirs["candidate"]
                assert sorted(ours["answer"]["img_id"]) == sorted(theirs["candidate"]["set"])
            if task == "task3":
                assert len(set(ours["answer"]["emotion_id"])) == 5


# Datasets with blank or missing splits ------------------------------------------------------------------------------


def copy_dataset(source: Path, folder: Path) -> Path:
    # A basename of its own: a local dataset's cache is keyed by the folder's basename.
    return Path(shutil.copytree(source, folder / f"{folder.name}_data"))


def rewrite_view(dataset: Path, view: str, split: str, rewrite) -> None:
    """Apply `rewrite` to the Arrow table of one view's split, in place."""
    for path in (dataset / view).glob(f"{split}-*.parquet"):
        pq.write_table(rewrite(pq.read_table(path)), path)


def edit_card(dataset: Path, edit) -> None:
    """Apply `edit` to the YAML metadata of the dataset card, in place."""
    card = dataset / "README.md"
    _, header, body = card.read_text(encoding="utf-8").split("---\n", 2)
    metadata = yaml.safe_load(header)
    edit(metadata)
    header = yaml.safe_dump(metadata, allow_unicode=True, sort_keys=False)
    card.write_text(f"---\n{header}---\n{body}", encoding="utf-8")


def drop_splits(dataset: Path, splits: set[str], configs: set[str] | None = None) -> None:
    """Remove splits from the dataset card's configs (all of them, or those named), as if the release lacked them."""

    def edit(metadata: dict) -> None:
        for config in metadata["configs"]:
            if configs is None or config["config_name"] in configs:
                config["data_files"] = [files for files in config["data_files"] if files["split"] not in splits]
        for info in metadata["dataset_info"]:  # the rows the card declares, which `datasets` checks on loading
            if configs is None or info["config_name"] in configs:
                info["splits"] = [split for split in info["splits"] if split["name"] not in splits]

    edit_card(dataset, edit)


def blank_answers(keep_first: int = 0):
    def rewrite(table: pa.Table) -> pa.Table:
        field = table.schema.field("answer")
        answers = table.column("answer").to_pylist()[:keep_first] + [None] * (len(table) - keep_first)
        return table.set_column(table.schema.get_field_index("answer"), field, pa.array(answers, type=field.type))

    return rewrite


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if evaluate_mod loads model weights (the start-up checks must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the start-up checks")

    monkeypatch.setattr(evaluate_mod, "load_mod_gpt", refuse)


def start_up_error(argv: list[str], capsys) -> str:
    """The message evaluate_mod.py stops with: exit status 2, `evaluate_mod.py: error: ...` and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        evaluate_mod.main(argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("evaluate_mod.py: error: ") and "Traceback" not in stderr, stderr
    return stderr


@pytest.mark.slow
def test_a_blank_split_is_not_scored_and_its_submission_is_written(trained_model, sample_dataset, tmp_path):
    dataset = copy_dataset(sample_dataset, tmp_path)
    for view in evaluate_mod.VIEWS:
        rewrite_view(dataset, view, "easy_test", blank_answers())
    results, submission = tmp_path / "results.json", tmp_path / "submission"
    evaluation = run_script(
        "evaluate_mod.py",
        *["--model", str(trained_model), "--dataset", str(dataset), "--limit", "6", "--max_new_tokens", "4"],
        *["--output", str(results), "--write-submission", str(submission)],  # the former spelling, still taken
        env={"HF_DATASETS_CACHE": str(tmp_path / "cache")},
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "easy_test: no gold answers" in evaluation.stdout
    results = json.loads(results.read_text())
    assert results["easy_test"] == {"annotated": False, "submission": str(submission)}
    assert results["hard_test"]["annotated"] is True and "text" in results["hard_test"]
    assert [row[0] for row in table_rows(evaluation.stdout, "Table 4: text response")] == ["hard_test"]
    for task in ("task1", "task2", "task3"):
        written = json.loads((submission / f"c_test_easy_{task}.json").read_text(encoding="utf-8"))
        assert len(written) == 6 and all(instance["answer"] for instance in written)


def test_a_view_with_answered_and_blank_rows_is_an_error(
    sample_dataset, tmp_path, fresh_cache, no_model_loading, capsys
):
    dataset = copy_dataset(sample_dataset, tmp_path)
    rewrite_view(dataset, "retrieval", "easy_test", blank_answers(keep_first=3))
    message = start_up_error(["--model", "unused", "--dataset", str(dataset)], capsys)
    assert re.search(r"split 'easy_test', view 'retrieval': \d+ of \d+ rows have no answer", message)


def test_a_split_missing_from_one_view_is_an_error(sample_dataset, tmp_path, fresh_cache, no_model_loading, capsys):
    dataset = copy_dataset(sample_dataset, tmp_path)
    drop_splits(dataset, {"easy_test"}, configs={"emotion"})
    message = start_up_error(["--model", "unused", "--dataset", str(dataset)], capsys)
    assert "split 'easy_test' has no instances in the 'emotion' view" in message


def test_a_missing_split_is_named_with_the_splits_the_dataset_has(sample_dataset, no_model_loading, capsys):
    message = start_up_error(["--model", "unused", "--dataset", str(sample_dataset), "--split", "test"], capsys)
    assert re.search(r"\['test'\] are not in the dataset .*\['train', 'validation', 'easy_test'", message)


def test_without_test_splits_the_default_is_validation(sample_dataset, tmp_path, fresh_cache, capsys):
    dataset = copy_dataset(sample_dataset, tmp_path)
    drop_splits(dataset, {"easy_test", "hard_test"})  # a train/validation release
    configs = evaluate_mod.load_configs(str(dataset))
    assert evaluate_mod.choose_splits(None, configs, str(dataset)) == ["validation"]
    assert "has no test split: evaluating its 'validation' split" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"\['easy_test'\] are not in the dataset .* \['train', 'validation'\]"):
        evaluate_mod.choose_splits(["easy_test"], configs, str(dataset))


def test_a_model_with_other_emotions_is_refused_before_any_work(
    model, sample_dataset, tmp_path, no_model_loading, capsys
):
    model.config.save_pretrained(tmp_path / "model")
    dataset_emotions = datasets.load_dataset(str(sample_dataset), "emotion", split="easy_test").features["answer"]
    message = start_up_error(["--model", str(tmp_path / "model"), "--dataset", str(sample_dataset)], capsys)
    assert "emotions" in message
    assert str(model.config.emotion_names) in message and str(dataset_emotions.names) in message


@pytest.mark.parametrize("argument", ["--batch_size", "--limit", "--max_new_tokens"])
def test_counts_below_one_are_refused_before_loading_anything(argument, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_mod.main(["--model", "nowhere", "--dataset", "nowhere", argument, "0"])
    assert exit_info.value.code == 2
    assert f"{argument}: must be an integer >= 1, got 0" in capsys.readouterr().err


# The parts, on rows in the dataset's schema -------------------------------------------------------------------------


def retrieval_row(history: list[dict], speaker: str, text: str | None, meme: str, others: list[str]) -> dict:
    return {"id": "r", "history": history, "speaker": speaker, "answer_text": text, "candidates": [meme, *others]}


RETRIEVAL_ROWS = [
    {
        **retrieval_row(DIALOGUES[0][:3], "speaker2", "别难过，明天会更好", "006", ["001", "002", "003"]),
        "answer": "006",
    },
    {**retrieval_row(DIALOGUES[1][:1], "speaker1", None, "002", ["000", "004", "007"]), "answer": "002"},
    {**retrieval_row(DIALOGUES[2][:2], "speaker1", "我们去公园吧", "004", ["005", "006", "001"]), "answer": "004"},
]


def training_meme_prediction(model, processor, row: dict) -> torch.Tensor:
    """The meme head's output where training regresses the reply's meme: the dialogue with its reply, as trained."""
    reply = {"speaker": row["speaker"], "text": row["answer_text"], "meme": row["answer"], "emotion": None}
    inputs = processor([row["history"] + [reply]], label_turns="all")
    meme_features = model.meme_bank.lookup(inputs.pop("meme_ids"))
    outputs = model(**inputs, meme_features=meme_features)
    input_ids = inputs["input_ids"][0]
    image = (input_ids == model.config.image_token_id).nonzero()[-1].item()
    assert input_ids[image - 1] == model.config.tag_token_id and inputs["usage_labels"][0, image - 1] == 1
    return outputs.meme_predictions[(input_ids[:image] == model.config.tag_token_id).sum() - 1]


def test_the_meme_is_read_at_the_tag_that_training_regresses(model, processor):
    predictions = evaluate_mod.reply_meme_predictions(model, processor, RETRIEVAL_ROWS, batch_size=2)
    trained = torch.stack([training_meme_prediction(model, processor, row) for row in RETRIEVAL_ROWS])
    torch.testing.assert_close(predictions, trained, atol=1e-5, rtol=1e-5)
    ranked, nearest = evaluate_mod.rank_memes(model, processor, RETRIEVAL_ROWS, batch_size=2)
    candidates = [row["candidates"] for row in RETRIEVAL_ROWS]
    assert ranked == [r.meme_ids for r in model.meme_bank.rank(trained, candidates)]
    assert nearest == [r.meme_ids for r in model.meme_bank.rank(trained, top_k=evaluate_mod.RT_CUTOFF)]


def test_task_2_is_written_back_in_the_release_layout(tmp_path):
    response = [{"id": "a", "history": DIALOGUES[1][:1], "speaker": "speaker1", "answer": None}]
    emotion = [{"id": "c", "history": DIALOGUES[1], "speaker": "speaker1", "answer": None}]
    views = {"response": response, "retrieval": RETRIEVAL_ROWS[:2], "emotion": emotion}
    ranked = [["003", "006", "001", "002"], ["002", "007", "000", "004"]]
    predicted = {"replies": ["好的呀"], "ranked": ranked, "emotions": [[2, 0, 3, 1]]}
    evaluate_mod.write_submission(tmp_path, "easy_test", views, predicted, prefix="c")
    names = ["c_test_easy_task1.json", "c_test_easy_task2.json", "c_test_easy_task3.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [evaluate_mod.SUBMISSION_MARKER, *names]
    task1, task2, task3 = (json.loads((tmp_path / name).read_text(encoding="utf-8")) for name in names)

    assert task1 == [
        {
            "history": [{"speaker_id": "[speaker2]", "txt": "你在做什么呢？"}],
            "answer": {"speaker_id": "[speaker1]", "txt": "好的呀"},
        }
    ]
    with_text, meme_only = task2
    # The reply's text is the last history turn, as the release has it; a meme-only reply adds no turn.
    assert len(with_text["history"]) == len(RETRIEVAL_ROWS[0]["history"]) + 1
    assert with_text["history"][-1] == {"speaker_id": "[speaker2]", "txt": "别难过，明天会更好"}
    assert with_text["history"][2] == {"speaker_id": "[speaker1]", "img_id": "003", "emotion_id": "sad"}
    assert meme_only["history"] == [{"speaker_id": "[speaker2]", "txt": "你在做什么呢？"}]
    for instance, row, ranking, speaker in zip(task2, RETRIEVAL_ROWS, ranked, ["[speaker2]", "[speaker1]"]):
        assert instance["candidate"] == {"speaker_id": speaker, "set": row["candidates"]}
        assert instance["answer"] == {"speaker_id": speaker, "img_id": ranking}
    assert task3[0]["answer"] == {"speaker_id": "[speaker1]", "emotion_id": [2, 0, 3, 1]}
    assert task3[0]["history"][-1] == {
        "speaker_id": "[speaker1]",
        "txt": "我生气了",
        "img_id": "002",
        "emotion_id": "angry",
    }


def test_usage_is_scored_at_every_stated_turn_and_counted(model, processor):
    scores = evaluate_mod.usage_scores(model, processor, DIALOGUES, batch_size=2)
    predictions, references = [], []
    for dialogue in DIALOGUES:  # each response alone: the dialogue cut after it, its [TAG] last
        for index in range(1, len(dialogue)):
            _, outputs = forward_dialogues(model, processor, [dialogue[: index + 1]])
            predictions.append(outputs.usage_logits[-1].argmax().item())
            references.append(int(dialogue[index]["meme"] is not None))
    assert scores == load_metric("mod_usage").compute(predictions=predictions, references=references)
    assert scores["count"] == sum(len(dialogue) - 1 for dialogue in DIALOGUES)


def test_emotions_are_ranked_over_fewer_than_five_emotions(model, processor):
    assert model.config.num_emotions == 4
    rows = [
        {"id": "a", "history": DIALOGUES[0][:2], "speaker": "speaker2", "answer": 0},
        {"id": "b", "history": DIALOGUES[1], "speaker": "speaker1", "answer": 2},
        {"id": "c", "history": DIALOGUES[2][:1], "speaker": "speaker1", "answer": 3},
    ]
    ranked = evaluate_mod.rank_emotions(model, processor, rows, batch_size=2)
    for row, ranking in zip(rows, ranked):
        _, outputs = forward_dialogues(model, processor, [row["history"]])
        assert ranking == outputs.emotion_logits[-1].argsort(descending=True).tolist()
    ks = evaluate_mod.emotion_ks(model.config.num_emotions)
    assert ks == [1, 4]
    scores = evaluate_mod.emotion_scores(rows, ranked, ks)
    assert scores["ks"] == [1, 4] and scores["accuracy@4"] == 1.0
    assert scores["accuracy@1"] == sum(r[0] == row["answer"] for r, row in zip(ranked, rows)) / 3


# Start-up: model folder, stale data, release language ---------------------------------------------------------------


def declare_rows(config: str, split: str, offset: int):
    def edit(metadata: dict) -> None:
        info = next(info for info in metadata["dataset_info"] if info["config_name"] == config)
        next(entry for entry in info["splits"] if entry["name"] == split)["num_examples"] += offset

    return edit


def test_rows_that_differ_from_the_card_stop_with_config_split_and_counts(
    sample_dataset, tmp_path, fresh_cache, no_model_loading, capsys
):
    dataset = copy_dataset(sample_dataset, tmp_path)
    loaded = len(datasets.load_dataset(str(sample_dataset), "retrieval", split="hard_test"))
    edit_card(dataset, declare_rows("retrieval", "hard_test", offset=2))
    message = start_up_error(["--model", "unused", "--dataset", str(dataset)], capsys)
    assert (
        f"config 'retrieval', split 'hard_test' loaded {loaded} rows but the dataset card declares {loaded + 2}"
        in message
    )
    assert message.count("config '") == 1  # the other configs and splits agree with the card


@pytest.mark.parametrize(
    "output, problem",
    [
        ("same", "is also the --write_submission folder"),
        ("folder", "is a folder"),
        ("nowhere/results.json", "which is not a folder"),
        ("notes.json", "exists and is not a results file of evaluate_mod.py"),
    ],
)
def test_a_bad_output_file_is_refused_before_any_work(
    sample_dataset, tmp_path, no_model_loading, capsys, output, problem
):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    argv = ["--model", "unused", "--dataset", str(sample_dataset), "--output", str(tmp_path / output)]
    argv += ["--write_submission", str(tmp_path / "same")]
    message = start_up_error(argv, capsys)
    assert f"--output {str(tmp_path / output)!r} " in message and problem in message
    assert not (tmp_path / "same").exists() and (tmp_path / "notes.json").read_text() == '{"mine": 1}'


@pytest.mark.slow
def test_max_new_tokens_that_leave_no_room_for_a_prompt_stop_before_evaluating(
    trained_model, sample_dataset, tmp_path, capsys
):
    argv = ["--model", str(trained_model), "--dataset", str(sample_dataset), "--max_new_tokens", "600"]
    with pytest.raises(SystemExit) as exit_info:
        evaluate_mod.main([*argv, "--output", str(tmp_path / "results.json")])
    stderr = capsys.readouterr().err  # after the weights' loading bar
    assert exit_info.value.code == 2 and "Traceback" not in stderr
    assert "evaluate_mod.py: error: max_new_tokens=600 leaves no room for a prompt" in stderr
    assert not (tmp_path / "results.json").exists()


def test_a_missing_model_folder_stops_before_any_work(sample_dataset, tmp_path, no_model_loading, capsys):
    missing = str(tmp_path / "runs" / "mod-gpt")
    message = start_up_error(["--model", missing, "--dataset", str(sample_dataset)], capsys)
    assert f"model folder {missing!r} does not exist" in message


@pytest.mark.slow
def test_evaluation_runs_no_code_from_the_model_folder_unless_asked(trained_model, sample_dataset, tmp_path):
    model, marker = marked_copy(trained_model, tmp_path)
    argv = ["--model", str(model), "--dataset", str(sample_dataset), "--split", "easy_test", "--limit", "2"]
    argv += ["--max_new_tokens", "2", "--output", str(tmp_path / "results.json")]
    assert evaluate_mod.main(argv) == 0
    assert not marker.exists()
    assert evaluate_mod.main([*argv, "--trust_remote_code"]) == 0
    assert {"modeling_mod_gpt.py", "processing_mod.py"} <= set(marker.read_text().split())


@pytest.mark.parametrize("language, prefix", [(["zh"], "c"), (["en"], "e"), ("en", "e"), (["fr"], "c"), (None, "c")])
def test_the_release_prefix_follows_the_card_language(sample_dataset, tmp_path, language, prefix):
    dataset = copy_dataset(sample_dataset, tmp_path)
    edit_card(dataset, lambda metadata: metadata.update(language=language))
    assert evaluate_mod.release_prefix(str(dataset)) == prefix
    assert evaluate_mod.release_prefix(str(tmp_path / "no_card")) == "c"


@pytest.mark.slow
def test_an_english_dataset_gets_english_submission_files(trained_model, sample_dataset, tmp_path, fresh_cache):
    dataset = copy_dataset(sample_dataset, tmp_path)
    edit_card(dataset, lambda metadata: metadata.update(language=["en"]))
    submission = tmp_path / "submission"
    argv = ["--model", str(trained_model), "--dataset", str(dataset), "--split", "hard_test", "--limit", "2"]
    assert evaluate_mod.main([*argv, "--max_new_tokens", "2", "--write_submission", str(submission)]) == 0
    names = sorted(path.name for path in submission.iterdir())
    assert names == [evaluate_mod.SUBMISSION_MARKER, *(f"e_test_hard_task{task}.json" for task in (1, 2, 3))]


SUBMISSION_VIEWS = {
    "response": [{"id": "a", "history": DIALOGUES[1][:1], "speaker": "speaker1", "answer": None}],
    "retrieval": RETRIEVAL_ROWS[:1],
    "emotion": [{"id": "c", "history": DIALOGUES[1], "speaker": "speaker1", "answer": None}],
}
SUBMISSION_PREDICTIONS = {"replies": ["好的呀"], "ranked": [["003", "006", "001", "002"]], "emotions": [[2, 0, 3, 1]]}


def test_submission_files_go_only_where_this_script_wrote_before(tmp_path):
    written = tmp_path / "submission"
    for _ in range(2):  # a folder written before takes the files again
        evaluate_mod.write_submission(written, "easy_test", SUBMISSION_VIEWS, SUBMISSION_PREDICTIONS, prefix="c")
    assert len(json.loads((written / "c_test_easy_task1.json").read_text(encoding="utf-8"))) == 1

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "c_test_easy_task1.json").write_text("my own file")
    with pytest.raises(ValueError, match="is not empty and was not written by evaluate_mod.py"):
        evaluate_mod.write_submission(foreign, "easy_test", SUBMISSION_VIEWS, SUBMISSION_PREDICTIONS, prefix="c")
    assert [path.name for path in foreign.iterdir()] == ["c_test_easy_task1.json"]
    assert (foreign / "c_test_easy_task1.json").read_text() == "my own file"


@pytest.mark.parametrize("spelling", ["--write_submission", "--write-submission"])
def test_a_submission_folder_of_other_files_is_refused_before_any_work(
    sample_dataset, tmp_path, no_model_loading, capsys, spelling
):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "c_test_easy_task2.json").write_text("[]")
    message = start_up_error(["--model", "unused", "--dataset", str(sample_dataset), spelling, str(folder)], capsys)
    assert f"--write_submission {str(folder)!r} is not empty and was not written by evaluate_mod.py" in message
    assert "c_test_easy_task2.json" in message
    assert (folder / "c_test_easy_task2.json").read_text() == "[]" and len(list(folder.iterdir())) == 1
    (tmp_path / "file").write_text("")
    message = start_up_error(
        ["--model", "unused", "--dataset", str(sample_dataset), spelling, str(tmp_path / "file")], capsys
    )
    assert "is a file, not a folder" in message


# Replies keyed by instance; several processes; device and dtype ------------------------------------------------------


def submission_files(folder: Path) -> dict[str, list]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))}


def figures(results: dict, path: tuple = ()) -> dict[tuple, object]:
    """Every figure of a results.json (samples included) by its path of keys, the submission folder's name left out."""
    if not isinstance(results, dict):
        return {path: results}
    return {
        key_path: value
        for key, item in results.items()
        if key != "submission"
        for key_path, value in figures(item, (*path, key)).items()
    }


def assert_same_figures(first: dict, second: dict) -> None:
    first, second = figures(first), figures(second)
    assert first.keys() == second.keys()
    for path, value in first.items():
        if path[-1] == "perplexity":  # the gold log-likelihoods of differently padded batches: float rounding only
            assert second[path] == pytest.approx(value, rel=1e-6), path
        else:
            assert second[path] == value, path


SMALL_RUN = ["--limit", "10", "--max_new_tokens", "8"]


def run_in_process(argv: list[str], folder: Path) -> tuple[dict, dict[str, list]]:
    """evaluate_mod.main in this process: results.json and the submission files it wrote into `folder`."""
    folder.mkdir()
    argv = [*argv, "--output", str(folder / "results.json"), "--write_submission", str(folder / "submission")]
    assert evaluate_mod.main(argv) == 0
    return json.loads((folder / "results.json").read_text()), submission_files(folder / "submission")


@pytest.fixture(scope="module")
def batch_of_16(trained_model, sample_dataset, tmp_path_factory) -> tuple[dict, dict[str, list]]:
    argv = ["--model", str(trained_model), "--dataset", str(sample_dataset), "--batch_size", "16", *SMALL_RUN]
    return run_in_process(argv, tmp_path_factory.mktemp("batch_16") / "run")


def test_sampled_replies_do_not_depend_on_the_batch_size(batch_of_16, trained_model, sample_dataset, tmp_path):
    argv = ["--model", str(trained_model), "--dataset", str(sample_dataset), "--batch_size", "4", *SMALL_RUN]
    results, submission = run_in_process(argv, tmp_path / "batch_4")
    assert_same_figures(batch_of_16[0], results)
    assert submission == batch_of_16[1] and len(submission) == 7  # 2 splits x 3 tasks, and the marker
    replies = [instance["answer"]["txt"] for instance in submission["c_test_easy_task1.json"]]
    assert len(replies) == 10 and len(set(replies)) > 1  # sampled, not one reply for all


@pytest.mark.slow
def test_two_processes_give_the_figures_and_files_of_one(batch_of_16, trained_model, sample_dataset, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    evaluation = run_script(
        "evaluate_mod.py",
        *["--model", str(trained_model), "--dataset", str(sample_dataset), "--batch_size", "4", *SMALL_RUN],
        *["--output", str(tmp_path / "results.json"), "--write_submission", str(tmp_path / "submission")],
        launcher=torchrun,
        env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"},
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert evaluation.stdout.count("Table 4: text response") == 1  # the main process alone prints
    assert_same_figures(batch_of_16[0], json.loads((tmp_path / "results.json").read_text()))
    assert submission_files(tmp_path / "submission") == batch_of_16[1]


def test_instance_noise_samples_the_warped_distribution_whatever_the_batch():
    warpers = evaluate_mod.sampling_warpers(GenerationConfig(temperature=0.7, top_p=0.9))
    scores = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    expected = warpers(None, scores.clone()).softmax(-1)[0]
    assert expected[-1] == 0  # cut by top-p

    def pick(instances: list[str], step: int = 0) -> list[int]:
        sampler = evaluate_mod.InstanceSampler(warpers, 0, instances)
        sampler(torch.zeros(len(instances), 3, dtype=torch.long), scores.expand(len(instances), -1).clone())  # step 0
        input_ids = torch.zeros(len(instances), 3 + step, dtype=torch.long)
        return sampler(input_ids, scores.expand(len(instances), -1).clone()).argmax(-1).tolist()

    picks = torch.tensor(pick([f"instance {n}" for n in range(4000)]))
    frequencies = torch.bincount(picks, minlength=len(expected)) / len(picks)
    torch.testing.assert_close(frequencies, expected, atol=0.03, rtol=0)
    assert pick(["b", "a", "c"]) == [*pick(["b"]), *pick(["x", "a"])[1:], *pick(["c"])]
    assert [pick(["a"], step) for step in range(20)] != [pick(["a"])] * 20  # each step draws afresh


def test_bfloat16_on_cpu_runs_with_finite_figures(trained_model, sample_dataset, tmp_path):
    argv = ["--model", str(trained_model), "--dataset", str(sample_dataset), "--split", "easy_test"]
    argv += ["--limit", "4", "--max_new_tokens", "4", "--dtype", "bfloat16", "--device", "cpu"]
    results, _ = run_in_process(argv, tmp_path / "bfloat16")
    numbers = [value for value in figures(results).values() if isinstance(value, float)]
    assert numbers and all(math.isfinite(value) for value in numbers)
    assert results["easy_test"]["text"]["perplexity"] > 1


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--dtype", "float64", "invalid choice: 'float64'"),
        ("--device", "gpu0", "'gpu0' is not a device"),
        ("--device", "cpu:x", "'cpu:x' is not a device"),
    ],
)
def test_a_bad_device_or_dtype_is_refused_before_loading_anything(flag, value, message, no_model_loading, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_mod.main(["--model", "nowhere", "--dataset", "nowhere", flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}: " in error and message in error, error


def reply_rows() -> list[dict]:
    """Response rows with histories of different lengths, in no order of length."""
    histories = [dialogue[:end] for dialogue in DIALOGUES for end in range(len(dialogue), 0, -1)]
    speakers = ["speaker1", "speaker2"]
    return [
        {"id": f"row {index}", "history": history, "speaker": speakers[len(history) % 2], "answer": None}
        for index, history in enumerate(histories)
    ]


@pytest.mark.parametrize("max_batch_tokens", [1, 60, None])
def test_length_batched_replies_come_back_in_order_equal_to_one_row_at_a_time(model, processor, max_batch_tokens):
    model.generation_config.update(do_sample=True, temperature=0.7, top_p=0.9, top_k=None)
    rows = reply_rows()
    lengths = prompt_lengths(model, processor, [row["history"] for row in rows], max_new_tokens=6)
    assert lengths != sorted(lengths) and len(set(lengths)) > 3
    alone = [evaluate_mod.generate_replies(model, processor, [row], 1, 6, seed=3)[0] for row in rows]
    batched = evaluate_mod.generate_replies(model, processor, rows, 4, 6, seed=3, max_batch_tokens=max_batch_tokens)
    assert batched == alone and len(set(alone)) > 1


def test_generate_runs_the_lm_head_on_the_last_prompt_position_only(model, processor):
    widths = []
    hook = model.lm_head.register_forward_hook(lambda module, inputs, output: widths.append(inputs[0].shape[1]))
    try:
        evaluate_mod.generate_replies(model, processor, reply_rows()[:4], 4, 3, seed=0)
    finally:
        hook.remove()
    assert widths == [1, 1, 1]  # the prompt pass and two cached steps
