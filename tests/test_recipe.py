"""The recipe runner (mod_training/recipe.py): IMFE -> CEM -> MOD -> evaluation in one command, on a tiny fraction of a
paper-profile release, with tiny settings given as overrides (nothing is downloaded)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT
from safetensors.torch import load_file

import evaluate_mod
from mod_dataset.__main__ import main as mod_dataset_main
from mod_dataset.sample import make_profile_release
from mod_training import recipe
from mod_training.run_folder import RUN_MARKER

RECIPE = REPO_ROOT / "recipes" / "mod_gpt"
ACCELERATE_CONFIGS = REPO_ROOT / "recipes" / "accelerate_configs"
# Tiny and offline: a test-sized timm encoder with random weights, a new tiny decoder (no CDial-GPT download), a few
# steps a stage, and an evaluation of 4 instances per view.
TINY = [
    *("--set", "meme_encoder=test_efficientnet", "--set", "init_from=null", "--set", "model_config=tiny"),
    *("--set", "max_steps=4", "--set", "per_device_train_batch_size=4", "--set", "logging_steps=1"),
    *("--set", "eval_steps=0", "--set", "evaluate.limit=4", "--set", "evaluate.max_new_tokens=8"),
]
# The MOD stage of the first run is stopped by SIGTERM once its first checkpoint is saved, long before its last step.
MOD_STEPS = 20
STOPPABLE_MOD = ["--set", f"mod.max_steps={MOD_STEPS}", "--set", "mod.save_steps=2"]


def recipe_command(dataset: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mod_training.recipe", "--recipe", str(RECIPE), "--dataset", str(dataset)] + [
        "--output_dir",
        str(runs),
        *TINY,
        *extra,
    ]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_recipe(dataset: Path, runs: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        recipe_command(dataset, runs, *extra), capture_output=True, text=True, env=ENV, cwd=REPO_ROOT, timeout=600
    )
    return result, time.monotonic() - started


def recipe_lines(stdout: str) -> list[str]:
    """The runner's own lines: what it did with each stage, in order."""
    return [line for line in stdout.splitlines() if line.startswith("[recipe] ") and not line.startswith("[recipe] $")]


def actions(stdout: str) -> list[tuple[str, str]]:
    """(stage, action) in the order the runner took them."""
    found = [re.match(r"\[recipe\] (\w+): (run|resume|restart|skipped)\b", line) for line in recipe_lines(stdout)]
    return [match.groups() for match in found if match]


def commands(stdout: str) -> dict[str, str]:
    """The command line of each stage run, by stage."""
    lines = stdout.splitlines()
    return {
        re.match(r"\[recipe\] (\w+):", lines[i - 1]).group(1): line[len("[recipe] $ ") :]
        for i, line in enumerate(lines)
        if line.startswith("[recipe] $ ")
    }


def arguments(folder: Path) -> dict:
    return json.loads((folder / RUN_MARKER).read_text())["arguments"]


def metric_steps(folder: Path) -> list[int]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if "loss" in line]


@pytest.fixture(scope="module")
def profile_dataset(tmp_path_factory) -> Path:
    """90 dialogues and the paper's 307 memes (0.2% of the release), built by `python -m mod_dataset build`."""
    root = tmp_path_factory.mktemp("profile")
    make_profile_release(root / "release", fraction=0.002, seed=0)
    assert mod_dataset_main(["build", str(root / "release"), str(root / "recipe-data")]) == 0
    return root / "recipe-data"


@pytest.fixture(scope="module")
def runs(profile_dataset, tmp_path_factory) -> dict:
    """
    One recipe run, three commands: the first is stopped by SIGTERM during MOD (after its checkpoint at step 2), the
    second finishes it, the third finds everything done.
    """
    folder = tmp_path_factory.mktemp("recipe") / "runs"
    logs = folder.parent
    checkpoint = folder / "mod" / "checkpoint-2" / "checkpoint_complete.json"
    with open(logs / "stopped.out", "w") as stdout, open(logs / "stopped.err", "w") as stderr:
        process = subprocess.Popen(
            recipe_command(profile_dataset, folder, *STOPPABLE_MOD),
            stdout=stdout,
            stderr=stderr,
            env=ENV,
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + 400
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=120)
    stopped = subprocess.CompletedProcess(
        [], status, (logs / "stopped.out").read_text(), (logs / "stopped.err").read_text()
    )
    mod_marker = (
        json.loads((folder / "mod" / RUN_MARKER).read_text()) if (folder / "mod" / RUN_MARKER).exists() else {}
    )
    was_finished = (folder / "mod" / "config.json").exists()
    resumed, _ = run_recipe(profile_dataset, folder, *STOPPABLE_MOD)
    again, again_seconds = run_recipe(profile_dataset, folder, *STOPPABLE_MOD)
    return {
        "folder": folder,
        "stopped": stopped,
        "mod_marker": mod_marker,
        "finished_when_stopped": was_finished,
        "resumed": resumed,
        "again": again,
        "again_seconds": again_seconds,
    }


@pytest.mark.slow
def test_the_stages_run_in_order_each_from_the_one_before(runs, profile_dataset):
    folder, stopped, resumed = runs["folder"], runs["stopped"], runs["resumed"]
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert actions(stopped.stdout) == [("imfe", "run"), ("cem", "run"), ("mod", "run")]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert actions(resumed.stdout) == [
        ("imfe", "skipped"),
        ("cem", "skipped"),
        ("mod", "resume"),
        ("evaluation", "run"),
    ]

    # Each stage in its folder, given the one before's output; the recipe's settings, the overrides on top.
    imfe, cem, mod = (arguments(folder / name) for name in ("imfe", "cem", "mod"))
    assert [imfe["task"], cem["task"], mod["task"]] == ["imfe", "cem", "mod"]
    assert cem["meme_encoder_checkpoint"] == str(folder / "imfe" / "meme_encoder.safetensors")
    assert mod["init_from"] == str(folder / "cem") and mod["meme_encoder_checkpoint"] is None
    assert cem["init_from"] is None  # the override dropped CDial-GPT (no download in the tests)
    for stage in (cem, mod):
        assert stage["learning_rate"] == 5e-5 and stage["max_length"] == 500 and stage["model_config"] == "tiny"
        assert stage["meme_feature_normalization"] == "none" and stage["dataset"] == str(profile_dataset)
    assert (imfe["max_steps"], cem["max_steps"], mod["max_steps"]) == (4, 4, MOD_STEPS)
    evaluation = commands(resumed.stdout)["evaluation"]
    assert f"--model {folder / 'mod'} " in evaluation and "--limit 4" in evaluation

    # What flowed: IMFE's encoder is CEM's, and MOD (whose encoder is frozen) keeps it and CEM's vocabulary.
    encoder = {
        k: v for k, v in load_file(folder / "imfe" / "meme_encoder.safetensors").items() if "classifier" not in k
    }
    cem_weights, mod_weights = (load_file(folder / name / "model.safetensors") for name in ("cem", "mod"))
    for name, value in encoder.items():
        assert torch.equal(cem_weights[f"meme_encoder.{name}"], value), name
        assert torch.equal(mod_weights[f"meme_encoder.{name}"], value), name
    assert (folder / "mod" / "tokenizer.json").read_text() == (folder / "cem" / "tokenizer.json").read_text()
    assert json.loads((folder / "cem" / "config.json").read_text())["text_loss_weight"] == 0.0
    assert json.loads((folder / "mod" / "config.json").read_text())["text_loss_weight"] == 1.0


@pytest.mark.slow
def test_a_stopped_stage_resumes_from_its_checkpoint(runs):
    folder, stopped = runs["folder"], runs["stopped"]
    assert "mod: stopped by SIGTERM" in stopped.stderr and "Run the same command again" in stopped.stderr
    assert not runs["finished_when_stopped"]  # stopped before its final model
    assert "Resumed from" in runs["resumed"].stderr
    # The same run went on: its marker is the first one, and every step was logged once, in order.
    assert json.loads((folder / "mod" / RUN_MARKER).read_text())["started"] == runs["mod_marker"]["started"]
    assert metric_steps(folder / "mod") == list(range(1, MOD_STEPS + 1))
    assert (folder / "mod" / "config.json").is_file()


@pytest.mark.slow
def test_the_tables_print_the_papers_rows_beside_ours(runs):
    folder, stdout = runs["folder"], runs["resumed"].stdout
    results = json.loads((folder / "evaluation" / "results.json").read_text())
    tables = stdout[stdout.index("The paper's rows") :]
    for title in ("Table 4: text response", "Table 5: meme retrieval", "Meme usage", "Table 7: emotion"):
        assert title in tables, title
    text, usage = results["easy_test"]["text"], results["easy_test"]["usage"]
    ours = " ".join(f"{text[key]:.2f}" for key in ("perplexity", "bleu-2", "bleu-4", "dist-1", "dist-2"))
    assert re.search(r"easy_test +paper +19\.18 +6\.06 +1\.88 +1\.61 +19\.25\n", tables)
    assert re.search(rf"easy_test +ours +{' +'.join(map(re.escape, ours.split()))}\n", tables)
    assert re.search(r"easy_test +paper +52\.3 +64\.3 +83\.6 +32\.3\n", tables)
    assert re.search(r"hard_test \(unseen\) +paper +45\.4 +- +- +-\n", tables)
    assert re.search(
        rf"hard_test \(unseen\) +ours +{100 * results['hard_test']['retrieval']['unseen']['R10@1']:.2f} ", tables
    )
    assert re.search(rf"easy_test +paper +89\.5 +-\neasy_test +ours +{100 * usage['accuracy']:.2f} ", tables)
    assert re.search(r"easy_test +paper +- +75\.8\n", tables)


@pytest.mark.slow
def test_a_rerun_skips_every_finished_stage(runs):
    again = runs["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert actions(again.stdout) == [(name, "skipped") for name in ("imfe", "cem", "mod", "evaluation")]
    assert not commands(again.stdout)
    assert "easy_test  paper" in again.stdout  # the tables all the same
    assert runs["again_seconds"] < 60


@pytest.fixture(scope="module")
def two_processes(runs, profile_dataset, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """
    IMFE copied from the first run (a run folder moved as a whole keeps its finished stages), then CEM, MOD and the
    evaluation with two CPU processes a training stage (torchrun, gloo).
    """
    folder = tmp_path_factory.mktemp("two") / "runs"
    folder.mkdir()
    shutil.copytree(runs["folder"] / "imfe", folder / "imfe", symlinks=True)
    shutil.copy(runs["folder"] / recipe.ROOT_MARKER, folder / recipe.ROOT_MARKER)
    checkpoints = ["--set", "cem.save_steps=2", "--set", "mod.save_steps=2"]
    result, _ = run_recipe(profile_dataset, folder, "--num_processes", "2", *checkpoints)
    return folder, result


def assert_trained_by_two_processes(folder: Path) -> None:
    # Each process saves its own random state in a checkpoint.
    states = {p.name for p in (folder / "checkpoint-4").glob("random_states_*")}
    assert states == {"random_states_0.pkl", "random_states_1.pkl"}
    assert metric_steps(folder) == [1, 2, 3, 4] and (folder / "config.json").is_file()


@pytest.mark.slow
def test_two_cpu_processes_train_a_stage(two_processes):
    folder, result = two_processes
    assert actions(result.stdout)[:3] == [("imfe", "skipped"), ("cem", "run"), ("mod", "run")]
    for stage in ("cem", "mod"):
        assert "torch.distributed.run --standalone --nproc_per_node 2 " in commands(result.stdout)[stage]
    assert_trained_by_two_processes(folder / "cem")
    assert arguments(folder / "cem")["meme_encoder_checkpoint"] == str(folder / "imfe" / "meme_encoder.safetensors")


@pytest.mark.slow
def test_two_cpu_processes_run_the_whole_recipe(two_processes):
    folder, result = two_processes
    assert result.returncode == 0, result.stderr[-3000:]
    assert_trained_by_two_processes(folder / "mod")
    assert actions(result.stdout)[3] == ("evaluation", "run") and "Table 7: emotion" in result.stdout


# Checks before any work: no process starts, nothing is written ------------------------------------------------------


def recipe_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "recipe"
    shutil.copytree(RECIPE, copy)
    return copy


def refused(capsys, dataset: Path, runs: Path, *args: str, recipe_folder: Path = RECIPE) -> str:
    existed = runs.exists()
    status = recipe.main(["--recipe", str(recipe_folder), "--dataset", str(dataset), "--output_dir", str(runs), *args])
    error = capsys.readouterr().err
    assert status == 2, error
    assert error.startswith("python -m mod_training.recipe: error: ") and "Traceback" not in error
    assert runs.exists() == existed
    return error


@pytest.fixture
def no_processes(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a stage was started")

    monkeypatch.setattr(subprocess, "Popen", refuse)


def test_the_recipe_holds_the_papers_settings(model, sample_dataset, tmp_path, capsys, no_processes):
    configs = {stage: yaml.safe_load((RECIPE / stage / "config.yaml").read_text()) for stage in ("imfe", "cem", "mod")}
    assert {configs[stage]["meme_encoder"] for stage in configs} == {"timm/efficientnet_b0.ra_in1k"}
    assert configs["cem"]["init_from"] == "thu-coai/CDial-GPT_LCCC-base" and "init_from" not in configs["mod"]
    for stage in ("cem", "mod"):
        assert configs[stage]["learning_rate"] == 5e-5 and configs[stage]["max_length"] == 500
        assert configs[stage]["meme_loss"] == "l2"
    evaluation = yaml.safe_load((RECIPE / "evaluate" / "config.yaml").read_text())
    assert (evaluation["top_p"], evaluation["temperature"]) == (0.9, 0.7)
    # ... which is how evaluate_mod.py samples a model's replies (from its generation config; it has no flag for them).
    warpers = evaluate_mod.sampling_warpers(model.generation_config)
    assert [(type(w).__name__, getattr(w, "temperature", None) or w.top_p) for w in warpers] == [
        ("TemperatureLogitsWarper", 0.7),
        ("TopPLogitsWarper", 0.9),
    ]
    paper = yaml.safe_load((RECIPE / "paper_results.yaml").read_text())
    assert paper["table_4"]["easy_test"] == {
        "PPL": 19.18,
        "BLEU-2": 6.06,
        "BLEU-4": 1.88,
        "Dist-1": 1.61,
        "Dist-2": 19.25,
    }
    assert paper["table_5"] == {
        "easy_test": {"R10@1": 52.3, "R10@2": 64.3, "R10@5": 83.6, "RT@5": 32.3},
        "hard_test (unseen)": {"R10@1": 45.4},
    }
    assert paper["usage"] == {"easy_test": {"accuracy": 89.5}} and paper["table_7"] == {"easy_test": {"top-5": 75.8}}

    # The plan: the recipe's own arguments reach train.py (only the meme encoder is local: no hub here).
    runs = tmp_path / "runs"
    args = ["--recipe", str(RECIPE), "--dataset", str(sample_dataset), "--output_dir", str(runs), "--dry_run"]
    assert recipe.main([*args, "--set", "meme_encoder=test_efficientnet"]) == 0
    plan = capsys.readouterr().out
    cem, mod = (re.search(rf"\[recipe\] \$ .* --task={stage}\b.*", plan).group(0) for stage in ("cem", "mod"))
    assert "--init_from=thu-coai/CDial-GPT_LCCC-base" in cem and "--model_config=base" in cem
    assert f"--meme_encoder_checkpoint={runs / 'imfe' / 'meme_encoder.safetensors'}" in cem
    assert f"--init_from={runs / 'cem'}" in mod and "--meme_encoder_checkpoint" not in mod
    for command in (cem, mod):
        assert "--learning_rate=5e-05" in command and "--max_length=500" in command
    assert not runs.exists()


def test_accelerate_configs_are_what_accelerate_launch_reads():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {
        path.name: load_config_from_file(str(path)).distributed_type.value for path in ACCELERATE_CONFIGS.iterdir()
    }
    assert kinds == {
        "single_gpu.yaml": "NO",
        "multi_gpu.yaml": "MULTI_GPU",
        "fsdp.yaml": "FSDP",
        "deepspeed_zero2.yaml": "DEEPSPEED",
    }
    assert (
        yaml.safe_load((ACCELERATE_CONFIGS / "deepspeed_zero2.yaml").read_text())["deepspeed_config"]["zero_stage"]
        == 2
    )


def test_bad_arguments_are_reported_before_any_work(sample_dataset, tmp_path, capsys, no_processes):
    runs = tmp_path / "runs"

    def error(*args: str, **kwargs) -> str:
        return refused(capsys, sample_dataset, runs, *args, **kwargs)

    assert "no stage 'eval'" in error("--set", "eval.limit=3")
    assert "(an evaluation option: --set evaluate.limit=...)" in error("--set", "limit=3")
    assert "did you mean 'max_steps'" in error("--set", "max_step=3")
    assert "the runner sets init_from of stage mod (the CEM model)" in error("--set", "mod.init_from=/x")
    assert "the runner sets dataset" in error("--set", "dataset=/x")
    assert "samples replies with the paper's top_p 0.9" in error("--set", "evaluate.top_p=0.95")
    assert "limit must be an integer >= 1" in error("--set", "evaluate.limit=0")
    message = error("--set", "meme_encoder=test_efficientnet", "--set", "max_steps=many")
    assert "stage imfe" in message and "max_steps" in message and "many" in message
    assert "--dataset" in refused(capsys, tmp_path / "nowhere", runs)

    broken = recipe_copy(tmp_path)
    config = broken / "cem" / "config.yaml"
    config.write_text(config.read_text() + "learning_rte: 1.0e-4\n")
    assert f"{config}: unknown argument 'learning_rte' (did you mean 'learning_rate'?)" in error(recipe_folder=broken)
    config.write_text(config.read_text().replace("learning_rte: 1.0e-4\n", "output_dir: /tmp/x\n"))
    assert f"{config}: output_dir is set by the runner" in error(recipe_folder=broken)
    shutil.copy(RECIPE / "cem" / "config.yaml", config)
    paper = broken / "paper_results.yaml"
    paper.write_text(paper.read_text().replace("BLEU-4:", "BLEU-3:"))
    meme = ["--set", "meme_encoder=test_efficientnet"]
    assert f"{paper}: table_4, easy_test: unknown column 'BLEU-3'" in error(*meme, recipe_folder=broken)

    bad_config = tmp_path / "accelerate.yaml"
    bad_config.write_text((ACCELERATE_CONFIGS / "multi_gpu.yaml").read_text() + "num_gpus: 8\n")
    assert f"--accelerate_config {str(bad_config)!r}: not an accelerate config" in error(
        "--accelerate_config", str(bad_config)
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_gpu_configs_are_refused_where_there_is_no_gpu(sample_dataset, tmp_path, capsys, no_processes):
    """accelerate runs FSDP and DeepSpeed on GPUs only; without one, its processes would each train alone."""
    runs = tmp_path / "runs"
    for name in ("fsdp.yaml", "multi_gpu.yaml"):
        message = refused(capsys, sample_dataset, runs, "--accelerate_config", str(ACCELERATE_CONFIGS / name))
        assert "torch sees none here" in message and "--num_processes N without --accelerate_config" in message
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text((ACCELERATE_CONFIGS / "multi_gpu.yaml").read_text().replace("use_cpu: false", "use_cpu: true"))
    message = refused(capsys, sample_dataset, runs, "--accelerate_config", str(cpu), "--num_processes", "2")
    assert "starts only one on CPUs" in message


def fake_stage(folder: Path, arguments: dict, final: str | None = None, checkpoint: int | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / RUN_MARKER).write_text(json.dumps({"arguments": arguments, "started": "then"}))
    if final:
        (folder / final).write_text("{}")
    if checkpoint is not None:
        (folder / f"checkpoint-{checkpoint}").mkdir()
        (folder / f"checkpoint-{checkpoint}" / "checkpoint_complete.json").write_text("{}")


def test_what_each_stage_folder_means(tmp_path):
    assert recipe.stage_state("cem", tmp_path / "new") == ("run", "new")
    fake_stage(tmp_path / "done", {}, final="config.json", checkpoint=4)
    assert recipe.stage_state("mod", tmp_path / "done")[0] == "skip"
    fake_stage(tmp_path / "stopped", {}, checkpoint=2)
    (tmp_path / "stopped" / "checkpoint-3").mkdir()  # not complete: never resumed from
    action, reason = recipe.stage_state("mod", tmp_path / "stopped")
    assert action == "resume" and "checkpoint-2" in reason
    fake_stage(tmp_path / "imfe", {}, checkpoint=2)
    assert recipe.stage_state("imfe", tmp_path / "imfe")[0] == "restart"  # IMFE saves only its final encoder
    fake_stage(tmp_path / "early", {})
    assert recipe.stage_state("cem", tmp_path / "early")[0] == "restart"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(recipe.ArgumentError, match="not a training run's folder"):
        recipe.stage_state("cem", tmp_path / "other")


def test_folders_that_do_not_fit_the_recipe_are_refused(sample_dataset, tmp_path, capsys, no_processes):
    meme = ["--set", "meme_encoder=test_efficientnet"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "is not empty and was not written by the recipe runner (it has no recipe_run.json" in refused(
        capsys, sample_dataset, foreign, *meme
    )
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1

    # A finished CEM without a finished IMFE before it was trained from something else.
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / recipe.ROOT_MARKER).write_text("{}")
    fake_stage(runs / "cem", {"output_dir": str(runs / "cem")}, final="config.json")
    message = refused(capsys, sample_dataset, runs, *meme)
    assert f"{runs / 'cem'} holds a run of stage cem, but stage imfe before it is not finished" in message

    # A finished stage trained with other arguments is not skipped.
    arguments = {"output_dir": str(runs / "imfe"), "dataset": str(sample_dataset), "max_steps": 7, "task": "imfe"}
    fake_stage(runs / "imfe", arguments, final="meme_encoder.safetensors")
    message = refused(capsys, sample_dataset, runs, *meme)
    assert "stage imfe" in message and "max_steps: 7 then, -1 now" in message


def test_tables_line_up_our_results_with_the_papers(capsys):
    results = {
        "easy_test": {
            "annotated": True,
            "text": {"perplexity": 25.0, "bleu-2": 5.5, "bleu-4": 1.25, "dist-1": 2.0, "dist-2": 20.0},
            "retrieval": {"R10@1": 0.5, "R10@2": 0.625, "R10@5": 0.875, "RT@5": 0.25},
            "usage": {"accuracy": 0.9, "f1": 0.8, "count": 10},
            "emotion": {"accuracy@1": 0.5, "accuracy@5": 0.75, "ks": [1, 5]},
        },
        "hard_test": {
            "annotated": True,
            "text": {"perplexity": 30.0, "bleu-2": 4.0, "bleu-4": 1.0, "dist-1": 2.5, "dist-2": 22.0},
            "retrieval": {"R10@1": 0.4, "seen": {"R10@1": 0.6, "R10@2": 0.7}, "unseen": {"R10@1": 0.3, "RT@5": 0.1}},
            "usage": {"accuracy": 0.8, "f1": 0.7, "count": 8},
            "emotion": {"accuracy@1": 0.25, "accuracy@5": 0.5, "ks": [1, 5]},
        },
    }
    recipe.print_paper_tables(results, recipe.load_paper_results(RECIPE))
    lines = capsys.readouterr().out.splitlines()

    def table(title: str, rows: int) -> list[list[str]]:
        start = next(i for i, line in enumerate(lines) if line.startswith(title))
        return [line.split() for line in lines[start + 1 : start + 2 + rows]]

    assert table("Table 4", 4) == [
        ["split", "PPL", "BLEU-2", "BLEU-4", "Dist-1", "Dist-2"],
        ["easy_test", "paper", "19.18", "6.06", "1.88", "1.61", "19.25"],
        ["easy_test", "ours", "25.00", "5.50", "1.25", "2.00", "20.00"],
        ["hard_test", "paper", "-", "-", "-", "-", "-"],
        ["hard_test", "ours", "30.00", "4.00", "1.00", "2.50", "22.00"],
    ]
    assert table("Table 5", 6) == [
        ["split", "R10@1", "R10@2", "R10@5", "RT@5"],
        ["easy_test", "paper", "52.3", "64.3", "83.6", "32.3"],
        ["easy_test", "ours", "50.00", "62.50", "87.50", "25.00"],
        ["hard_test", "(seen)", "paper", "-", "-", "-", "-"],
        ["hard_test", "(seen)", "ours", "60.00", "70.00", "-", "-"],
        ["hard_test", "(unseen)", "paper", "45.4", "-", "-", "-"],
        ["hard_test", "(unseen)", "ours", "30.00", "-", "-", "10.00"],
    ]
    assert table("Meme usage", 2)[1:] == [["easy_test", "paper", "89.5", "-"], ["easy_test", "ours", "90.00", "80.00"]]
    assert table("Table 7", 2)[1:] == [["easy_test", "paper", "-", "75.8"], ["easy_test", "ours", "50.00", "75.00"]]
