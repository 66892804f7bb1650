"""
train.py in hostile but honest hands: output folders it must not mix or destroy, arguments checked before any work,
non-finite losses, exact mid-epoch resume, damaged checkpoints, SIGTERM, interrupted model saves, hub uploads, the
code of --init_from folders, meme encoder files, and rows that disagree with the dataset card.
"""

import copy
import dataclasses
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import pyarrow.parquet as pq
import pytest
import timm
import torch
from conftest import REPO_ROOT, run_script
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file, save_file

import train
from mod_training import ArgumentError, TrainingError
from mod_training.arguments import TrainArguments, parse_arguments
from mod_training.checkpoints import (
    checkpoint_step,
    complete_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    save_model,
)
from mod_training.data import emotion_names
from mod_training.model_setup import build_processor, load_meme_encoder_weights, load_or_create_model
from modeling_mod_gpt import MODGPTForMemeDialogue
from processing_mod import MODProcessor

# GPT-2's default dropout (0.1) stays on: a resumed run must draw the same dropout masks.
SMALL_WITH_DROPOUT = {
    "model_type": "mod_gpt",
    "head_hidden_size": 32,
    "text_config": {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 512},
}
RUN_FILES = ("metrics.jsonl", "training_run.json")


def run_train(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_script("train.py", *args, **kwargs)


class Hung(BaseException):
    """Raised in a run that went on too long (not an `Exception`: library code that suppresses those must not)."""


def run_main(capsys, *argv: str, timeout: int = 120) -> tuple[int, str]:
    """`train.main` in this process (no interpreter start-up), its exit status and stderr; a hang fails the test."""

    def hang(signum, frame):
        raise Hung(f"train.py {' '.join(argv)} still runs after {timeout} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(timeout)
    try:
        status = train.main(list(argv))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return status, capsys.readouterr().err


def records(output_dir: Path) -> list[dict]:
    """metrics.jsonl, read as strict JSON (a bare NaN or Infinity fails), without the timings."""

    def reject(constant: str):
        raise ValueError(f"metrics.jsonl holds a bare {constant}")

    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line, parse_constant=reject).items() if k != "steps_per_second"} for line in lines
    ]


def assert_same_weights(actual: Path, expected: Path) -> None:
    actual, expected = load_file(actual), load_file(expected)
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder` with its link target, size and modification time."""
    entries = {}
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            status = path.lstat()
            link = os.readlink(path) if path.is_symlink() else None
            entries[str(path.relative_to(folder))] = (link, status.st_size, status.st_mtime_ns)
    return entries


@pytest.fixture(scope="module")
def run_args(sample_dataset, tmp_path_factory) -> list[str]:
    """A small model with dropout; batches of 16 make an epoch 20 steps; 24 steps with a checkpoint every 8."""
    config = tmp_path_factory.mktemp("config") / "small.json"
    config.write_text(json.dumps(SMALL_WITH_DROPOUT))
    return [
        *("--dataset", str(sample_dataset), "--model_config", str(config), "--meme_encoder", "test_efficientnet"),
        *("--normalize_meme_features", "--learning_rate", "1e-3", "--logging_steps", "3"),
        *("--per_device_train_batch_size", "16", "--max_steps", "24", "--save_steps", "8"),
    ]


@pytest.fixture(scope="module")
def baseline(run_args, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    output_dir = tmp_path_factory.mktemp("baseline") / "run"
    result = run_train(*run_args, "--output_dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


# Output folder --------------------------------------------------------------------------------------------------


def refusal(capsys, sample_dataset, output_dir: Path, *extra: str) -> str:
    status, stderr = run_main(capsys, "--dataset", str(sample_dataset), "--output_dir", str(output_dir), *extra)
    assert status == 2, stderr[-3000:]
    assert "train.py: error:" in stderr and "nothing was written" in stderr
    return stderr


@pytest.mark.parametrize("overwrite", [[], ["--overwrite_output_dir"]])
def test_the_dataset_folder_is_never_an_output_folder(capsys, sample_dataset, overwrite):
    before = snapshot(sample_dataset)
    for output_dir in (sample_dataset, sample_dataset / "model"):
        stderr = refusal(capsys, sample_dataset, output_dir, "--max_steps", "1", *overwrite)
        assert "is, or lies inside, the dataset folder" in stderr
    assert snapshot(sample_dataset) == before
    datasets.load_dataset(str(sample_dataset), "dialogues")


@pytest.mark.slow
def test_an_earlier_run_is_kept_unless_replacing_it_is_asked(capsys, sample_dataset, baseline):
    before = snapshot(baseline)
    stderr = refusal(capsys, sample_dataset, baseline, "--max_steps", "1", "--save_total_limit", "2")
    assert "holds an earlier training run" in stderr and "--overwrite_output_dir" in stderr
    assert snapshot(baseline) == before


def test_an_output_dir_that_is_a_file_is_refused_and_kept(capsys, sample_dataset, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for overwrite in ([], ["--overwrite_output_dir"]):
        stderr = refusal(capsys, sample_dataset, notes, "--max_steps", "1", *overwrite)
        assert f"--output_dir {str(notes)!r} is a file, not a folder" in stderr
    assert notes.read_text() == "mine"


def test_overwriting_never_deletes_a_folder_that_is_not_a_run(capsys, sample_dataset, tmp_path):
    other_dataset = tmp_path / "other_data"
    shutil.copytree(sample_dataset, other_dataset)
    before = snapshot(other_dataset)
    stderr = refusal(capsys, sample_dataset, other_dataset, "--max_steps", "1", "--overwrite_output_dir")
    assert "has no training_run.json" in stderr and "README.md" in stderr
    assert snapshot(other_dataset) == before


def test_overwriting_never_deletes_the_inputs_of_the_run(capsys, sample_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_run.json").write_text(json.dumps({"arguments": {}}))
    shutil.copytree(sample_dataset, run / "data")
    before = snapshot(run)
    stderr = refusal(capsys, run / "data", run, "--max_steps", "1", "--overwrite_output_dir")
    assert "would delete --dataset" in stderr
    assert snapshot(run) == before


def test_an_output_path_that_is_a_file_is_refused(capsys, sample_dataset, tmp_path):
    (tmp_path / "model").write_text("a file")
    status, stderr = run_main(capsys, "--dataset", str(sample_dataset), "--output_dir", str(tmp_path / "model"))
    assert status == 2 and f"--output_dir '{tmp_path / 'model'}' is a file" in stderr
    assert (tmp_path / "model").read_text() == "a file"


@pytest.fixture(scope="module")
def diverging(baseline, run_args, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A run whose learning rate of 1e6 makes the loss NaN, replacing a copy of the baseline run."""
    output_dir = tmp_path_factory.mktemp("diverging") / "run"
    shutil.copytree(baseline, output_dir, symlinks=True)
    result = run_train(
        *run_args,
        *("--output_dir", str(output_dir), "--overwrite_output_dir", "--learning_rate", "1e6"),
        *("--save_steps", "1", "--logging_steps", "1"),
    )
    return output_dir, result


@pytest.mark.slow
def test_overwriting_an_earlier_run_leaves_nothing_of_it(diverging, baseline):
    output_dir, result = diverging
    assert result.returncode == 1, result.stderr[-3000:]
    marker = json.loads((output_dir / "training_run.json").read_text())
    assert marker["arguments"]["learning_rate"] == 1e6
    steps = [checkpoint_step(checkpoint) for checkpoint in complete_checkpoints(output_dir)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 8  # its own checkpoints, none of the old run's
    assert all(record["step"] <= len(steps) for record in records(output_dir))
    assert not (output_dir / "config.json").exists()  # the old run's final model is gone; this run saved none


# Non-finite loss ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_diverging_run_skips_nonfinite_steps_stops_and_never_saves_them(diverging):
    output_dir, result = diverging
    assert result.returncode == 1, result.stderr[-3000:]
    assert "train.py: error: stopped at step" in result.stderr and "not finite" in result.stderr
    assert "Traceback" not in result.stderr
    logged = records(output_dir)  # strict JSON
    assert any(record.get("nonfinite_steps") for record in logged)
    saved = [checkpoint / "model.safetensors" for checkpoint in complete_checkpoints(output_dir)]
    assert len(saved) >= 2 and not (output_dir / "config.json").exists()
    for weights_file in saved:
        for name, tensor in load_file(weights_file).items():
            assert torch.isfinite(tensor).all(), f"{weights_file}: {name}"


def test_weights_that_are_not_finite_are_never_saved(model, processor, tmp_path):
    with torch.no_grad():
        model.model.segment_embeddings.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="refusing to save .*checkpoint-3: 1 weights are not finite"):
        save_checkpoint(None, tmp_path, {"global_step": 3}, model)
    accelerator = SimpleNamespace(is_main_process=True, unwrap_model=lambda m: m)
    args = TrainArguments(dataset="data", output_dir=str(tmp_path))
    with pytest.raises(TrainingError, match="refusing to save .*best_model: 1 weights are not finite"):
        save_model(accelerator, model, processor, tmp_path / "best_model", args, {"eval_loss": 1.0})
    assert list(tmp_path.iterdir()) == []


# Arguments --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "/no/such/folder"], "--dataset '/no/such/folder': no such folder"),
        (["--model_config", "huge"], "--model_config 'huge': not a preset"),
        (["--resume_from_checkpoint", "/no/such"], "--resume_from_checkpoint '/no/such': not a complete checkpoint"),
        (["--resume_from_checkpoint", "latest"], "--resume_from_checkpoint latest: no complete checkpoint"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--per_device_train_batch_size", "-8"], "--per_device_train_batch_size must be at least 1, got -8"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1, got 0"),
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size must be at least 1, got 0"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1, got 0"),
        (["--logging_steps", "0"], "--logging_steps must be at least 1, got 0"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number >= 0, got nan"),
        (["--max_grad_norm", "0"], "--max_grad_norm must be a finite number > 0, got 0.0"),
        (["--max_steps", "0"], "--max_steps must be positive, or -1"),
        (["--per_device_train_batch_size", "eight"], "--per-device-train-batch-size: invalid int value: 'eight'"),
        (["--init_from", "/no/such/model"], "--init_from '/no/such/model': no such folder"),
        (["--meme_encoder_checkpoint", "/no/such.safetensors"], "--meme_encoder_checkpoint '/no/such.safetensors'"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(capsys, sample_dataset, tmp_path, args, message):
    output_dir = tmp_path / "out"
    status, stderr = run_main(capsys, "--dataset", str(sample_dataset), "--output_dir", str(output_dir), *args)
    assert status == 2, stderr[-3000:]
    assert "train.py: error: " in stderr and message in stderr, stderr[-3000:]
    assert not output_dir.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"model_type": "mod_gpt", "text_config": ', "not valid JSON"),
        ("[4, 128]", "expected a JSON object, got list"),
        ('{"model_type": "mod_gpt"}', "a MOD-GPT config needs a `text_config` object"),
    ],
)
def test_a_bad_model_config_file_is_refused_before_any_work(capsys, sample_dataset, tmp_path, content, message):
    config = tmp_path / "config.json"
    config.write_text(content)
    status, stderr = run_main(
        capsys, "--dataset", str(sample_dataset), "--output_dir", str(tmp_path / "out"), "--model_config", str(config)
    )
    assert status == 2 and f"--model_config '{config}': {message}" in stderr, stderr[-3000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("args.yaml", "dataset: data\noutput_dir: out\nlearning_rat: 0.1\n", "unknown argument 'learning_rat'"),
        ("args.json", '{"dataset": "data", "output_dir": "out", "seeed": 1}', "unknown argument 'seeed'"),
        ("args.yaml", "dataset: [data\n", "not a valid YAML file"),
        ("args.json", '{"dataset": "data",', "not a valid JSON file"),
        ("args.yaml", "- dataset\n", "expected a mapping of argument names to values, got list"),
    ],
)
def test_a_bad_arguments_file_is_named(capsys, tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    status, stderr = run_main(capsys, str(tmp_path / name))
    assert status == 2 and f"train.py: error: {tmp_path / name}: {message}" in stderr, stderr[-3000:]


def test_an_arguments_file_is_typed_like_the_command_line_and_overridable(sample_dataset, tmp_path):
    arguments = tmp_path / "args.yaml"
    arguments.write_text(
        f"dataset: {sample_dataset}\noutput_dir: {tmp_path / 'out'}\nmax_steps: 5\npush_to_hub: false\n"
        "per_device_train_batch_size: '4'\nhub_model_id: null\nlogging_steps: 1\nlearning_rate: 1.0e-3\n"
    )
    args = parse_arguments([str(arguments), "--max_steps", "7"])
    assert (args.max_steps, args.per_device_train_batch_size, args.push_to_hub) == (7, 4, False)
    assert (args.logging_steps, args.learning_rate, args.hub_model_id) == (1, 1e-3, None)
    arguments.write_text(f"dataset: {sample_dataset}\noutput_dir: out\nper_device_train_batch_size: eight\n")
    with pytest.raises(ArgumentError, match="--per_device_train_batch_size.*: invalid int value: 'eight'"):
        parse_arguments([str(arguments)])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--per_device_train_batch_size", "400"], "too few for one optimizer step of 400 examples"),
        (["--gradient_accumulation_steps", "50"], "too few for one optimizer step of 400 examples"),
    ],
)
def test_too_few_dialogues_for_one_step_are_reported_before_training(capsys, sample_dataset, tmp_path, args, message):
    output_dir = tmp_path / "out"
    status, stderr = run_main(capsys, "--dataset", str(sample_dataset), "--output_dir", str(output_dir), *args)
    assert status == 2, stderr[-3000:]
    assert "the train split gives 320 training examples (320 dialogues)" in stderr and message in stderr
    assert not output_dir.exists()


def test_max_length_beyond_the_decoder_is_refused(capsys, sample_dataset, tmp_path):
    status, stderr = run_main(
        capsys, "--dataset", str(sample_dataset), "--output_dir", str(tmp_path / "out"), "--max_length", "600"
    )
    assert status == 2 and "--max_length 600 is more than the 512 positions" in stderr


# Exact resume and SIGTERM ----------------------------------------------------------------------------------------


def run_until_first_log_then_sigterm(args: list[str], output_dir: Path, log: Path) -> int:
    """Start a run, send it SIGTERM once it logs its first step, and return its exit status."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "train.py"), *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=environment,
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + 300
        while not (output_dir / "metrics.jsonl").exists():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=300)


@pytest.fixture(scope="module")
def resumed(baseline, run_args, tmp_path_factory) -> SimpleNamespace:
    """
    The baseline run resumed from checkpoint-16, 16 steps into a 20-step epoch (beside a checkpoint-24 that never
    finished saving), stopped by SIGTERM once it logs step 18, then resumed from what it saved, across the epoch's
    end, to step 24.
    """
    folder = tmp_path_factory.mktemp("resumed")
    output_dir = folder / "run"
    output_dir.mkdir()
    shutil.copytree(baseline / "checkpoint-16", output_dir / "checkpoint-16")
    (output_dir / "checkpoint-24").mkdir()
    (output_dir / "checkpoint-24" / "model.safetensors").write_bytes(b"truncated")
    resume = [*run_args, "--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"]
    status = run_until_first_log_then_sigterm(resume, output_dir, folder / "stderr.txt")
    stopped = complete_checkpoints(output_dir)[-1]
    final_model_after_stop = (output_dir / "config.json").exists()
    result = run_train(*resume)
    return SimpleNamespace(
        output_dir=output_dir,
        sigterm_status=status,
        sigterm_stderr=(folder / "stderr.txt").read_text(),
        stopped=stopped,
        final_model_after_stop=final_model_after_stop,
        result=result,
    )


@pytest.mark.slow
def test_resuming_mid_epoch_ends_bitwise_where_the_uninterrupted_run_ends(resumed, baseline):
    assert resumed.result.returncode == 0, resumed.result.stderr[-3000:]
    assert_same_weights(resumed.output_dir / "model.safetensors", baseline / "model.safetensors")
    # Each loss logged averages the steps since the last log line, across checkpoints.
    assert records(resumed.output_dir) == [record for record in records(baseline) if record["step"] > 16]


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_a_checkpoint_and_exits_143(resumed):
    assert resumed.sigterm_status == 143, resumed.sigterm_stderr[-3000:]
    step = checkpoint_step(resumed.stopped)
    assert 18 <= step < 24 and not resumed.final_model_after_stop
    assert f"train.py: stopped by SIGTERM after step {step}; saved {resumed.stopped}" in resumed.sigterm_stderr
    assert "--resume_from_checkpoint latest" in resumed.sigterm_stderr


# Damaged checkpoints ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damaged_file", ["model.safetensors", "optimizer.bin"])
def test_a_damaged_latest_checkpoint_is_named_and_passed_over_on_request(
    capsys, caplog, baseline, sample_dataset, tmp_path, damaged_file
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-16").symlink_to(baseline / "checkpoint-16", target_is_directory=True)
    shutil.copytree(baseline / "checkpoint-24", run / "checkpoint-24")
    damaged = run / "checkpoint-24" / damaged_file
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    args = ["--dataset", str(sample_dataset), "--output_dir", str(run), "--resume_from_checkpoint", "latest"]
    status, stderr = run_main(capsys, *args, "--max_steps", "24")
    assert status == 2, stderr[-3000:]
    assert f"{damaged} has" in stderr and f"--resume_from_checkpoint {run / 'checkpoint-16'}" in stderr
    assert "--skip_corrupt_checkpoints" in stderr
    with caplog.at_level(logging.WARNING, logger="mod_training.checkpoints"):
        assert resolve_checkpoint("latest", run, skip_damaged=True) == run / "checkpoint-16"
    assert str(damaged) in caplog.text


# Interrupted model saves ----------------------------------------------------------------------------------------


class Interrupted(BaseException):
    """Stands for the process dying at some file operation."""


def saved_version(folder: Path, versions: dict[float, dict[str, torch.Tensor]]) -> float:
    """Which model `folder` holds, by its config; its weights must be that model's."""
    version = json.loads((folder / "config.json").read_text())["head_dropout"]
    saved = load_file(folder / "model.safetensors")
    assert all(torch.equal(value, versions[version][name]) for name, value in saved.items()), "a mix of saves"
    return version


def saved_weights(model, folder: Path) -> dict[str, torch.Tensor]:
    """The weights as `save_pretrained` writes them (in the checkpoint layout, tied weights once)."""
    model.save_pretrained(folder)
    return load_file(folder / "model.safetensors")


def interrupt_file_operations(patch: pytest.MonkeyPatch, folder: Path, at: int) -> None:
    """Make the `at`-th file operation on `folder` or one of its entries raise `Interrupted`."""
    count = itertools.count(1)

    def interrupting(operation):
        def wrapped(*paths, **kwargs):
            touched = [Path(os.path.abspath(p)) for p in paths if isinstance(p, (str, os.PathLike))]
            if any(folder in (path, path.parent) for path in touched) and next(count) == at:
                raise Interrupted
            return operation(*paths, **kwargs)

        return wrapped

    for name in ("replace", "rename", "symlink", "unlink", "remove", "rmdir"):
        patch.setattr(os, name, interrupting(getattr(os, name)))
    patch.setattr(shutil, "rmtree", interrupting(shutil.rmtree))


def test_an_interrupted_save_leaves_the_old_model_or_the_new_one(model, processor, tmp_path, monkeypatch):
    """Interrupt the second save of a model folder at each file operation on the folder's own entries in turn."""
    old, new = model, copy.deepcopy(model)
    new.config.head_dropout = 0.25
    with torch.no_grad():
        for parameter in new.parameters():
            parameter.add_(1.0)
    versions = {
        m.config.head_dropout: saved_weights(m, tmp_path / f"reference-{index}") for index, m in enumerate((old, new))
    }
    accelerator = SimpleNamespace(is_main_process=True, unwrap_model=lambda m: m)
    args = TrainArguments(dataset="data", output_dir=str(tmp_path))
    for interruption in range(1, 200):
        folder = tmp_path / f"model-{interruption}"
        save_model(accelerator, old, processor, folder, args, {"eval_loss": 1.0})
        with monkeypatch.context() as patch:
            interrupt_file_operations(patch, folder, interruption)
            try:
                save_model(accelerator, new, processor, folder, args, {"eval_loss": 0.5})
            except Interrupted:
                assert saved_version(folder, versions) in (0.1, 0.25)
                continue
        assert saved_version(folder, versions) == 0.25
        break
    assert interruption > 1  # the save was interrupted at least once
    loaded = MODGPTForMemeDialogue.from_pretrained(folder)
    assert torch.equal(loaded.model.segment_embeddings.weight, new.model.segment_embeddings.weight)


# Hub uploads and meme encoder files -----------------------------------------------------------------------------

# Imported at start-up by the run (PYTHONPATH): `HfApi`'s methods record their arguments instead of calling the hub.
RECORD_HUB_CALLS = """
import json
import os

import huggingface_hub
from huggingface_hub.hf_api import future_compatible


def recording(name):
    def method(self, *args, **kwargs):
        kwargs = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in kwargs.items() if k != "run_as_future"}
        with open(os.environ["HUB_CALLS"], "a") as stream:
            stream.write(json.dumps({"method": name, "args": args, "kwargs": kwargs}) + "\\n")

    return method


huggingface_hub.HfApi.create_repo = recording("create_repo")
# Run in the client's background thread, as the real one is with `run_as_future=True`.
huggingface_hub.HfApi.upload_folder = future_compatible(recording("upload_folder"))
"""


@pytest.fixture(scope="module")
def pushed(run_args, tmp_path_factory) -> SimpleNamespace:
    """Two steps from a meme encoder file made here, checkpointed and pushed to the hub (recorded, not sent)."""
    folder = tmp_path_factory.mktemp("pushed")
    torch.manual_seed(1)
    encoder = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    encoder_file = folder / "encoder.safetensors"
    save_file(encoder.state_dict(), encoder_file)
    (folder / "site").mkdir()
    (folder / "site" / "sitecustomize.py").write_text(RECORD_HUB_CALLS)
    output_dir = folder / "run"
    result = run_train(
        *run_args,
        *("--output_dir", str(output_dir), "--max_steps", "2", "--save_steps", "1", "--eval_steps", "1"),
        *("--meme_encoder_checkpoint", str(encoder_file), "--push_to_hub", "--hub_model_id", "user/mod-gpt"),
        env={"PYTHONPATH": str(folder / "site"), "HUB_CALLS": str(folder / "hub_calls.jsonl")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [json.loads(line) for line in (folder / "hub_calls.jsonl").read_text().splitlines()]
    return SimpleNamespace(output_dir=output_dir, encoder_file=encoder_file, encoder=encoder.state_dict(), calls=calls)


def uploaded_files(upload: dict) -> set[str]:
    """The files an `upload_folder` call with these arguments sends, by their path in the repo."""
    folder = Path(upload["folder_path"])
    paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    kept = filter_repo_objects(
        paths, allow_patterns=upload.get("allow_patterns"), ignore_patterns=upload.get("ignore_patterns")
    )
    return {f"{upload['path_in_repo']}/{path}" if upload.get("path_in_repo") else path for path in kept}


@pytest.mark.slow
def test_the_hub_gets_each_checkpoint_and_a_final_upload_of_the_model_alone(pushed):
    output_dir = pushed.output_dir
    assert {call["method"] for call in pushed.calls} == {"create_repo", "upload_folder"}
    assert all(call["args"] == ["user/mod-gpt"] for call in pushed.calls if call["method"] == "create_repo")
    uploads = [call["kwargs"] for call in pushed.calls if call["method"] == "upload_folder"]
    assert uploads[:2] == [
        {
            "repo_id": "user/mod-gpt",
            "folder_path": str(output_dir / f"checkpoint-{step}"),
            "path_in_repo": f"checkpoint-{step}",
            "commit_message": f"Upload checkpoint-{step}",
        }
        for step in (1, 2)
    ]
    assert len(uploads) == 3 and uploads[2]["repo_id"] == "user/mod-gpt" and not uploads[2]["path_in_repo"]
    model_files = {p.name for p in output_dir.iterdir() if p.is_file() and p.name not in RUN_FILES}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= model_files
    assert uploaded_files(uploads[2]) == model_files


@pytest.mark.slow
def test_a_model_trained_from_a_meme_encoder_file_loads_without_it(pushed):
    pushed.encoder_file.unlink()
    assert not json.loads((pushed.output_dir / "config.json").read_text()).get("meme_encoder_checkpoint")
    loaded = MODGPTForMemeDialogue.from_pretrained(pushed.output_dir)
    encoder = loaded.model.meme_encoder.timm_model.state_dict()
    for name, value in pushed.encoder.items():
        assert torch.equal(encoder[name], value), name


def test_a_saved_config_still_naming_a_missing_encoder_file_loads(model, tmp_path):
    model.config.meme_encoder_checkpoint = str(tmp_path / "gone.safetensors")
    model.save_pretrained(tmp_path / "saved")
    loaded = MODGPTForMemeDialogue.from_pretrained(tmp_path / "saved")
    for name, value in model.model.meme_encoder.timm_model.state_dict().items():
        assert torch.equal(loaded.model.meme_encoder.timm_model.state_dict()[name], value), name


def test_a_meme_encoder_file_of_another_model_is_refused(tmp_path):
    save_file({"stem.weight": torch.zeros(1)}, tmp_path / "other.safetensors")
    encoder = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    with pytest.raises(ArgumentError, match="other.safetensors' .*(cannot load it|does not fit)"):
        load_meme_encoder_weights(encoder, str(tmp_path / "other.safetensors"))


# --init_from ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trapped_model(baseline, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the baseline's final model whose code files, once imported, leave a file behind."""
    folder = tmp_path_factory.mktemp("trapped")
    model, ran = folder / "model", folder / "code-ran"
    files = [p for p in baseline.iterdir() if p.is_file() and p.name not in RUN_FILES]
    model.mkdir()
    for path in files:
        shutil.copyfile(path, model / path.name)
    for code in model.glob("*.py"):
        code.write_text(f"import pathlib\npathlib.Path({str(ran)!r}).write_text('ran')\n" + code.read_text())
    return model, ran


@pytest.mark.slow
def test_init_from_a_mod_gpt_folder_never_runs_its_code_unless_trusted(trapped_model, sample_dataset):
    model_folder, ran = trapped_model
    dialogues = datasets.load_dataset(str(sample_dataset), "dialogues")
    args = TrainArguments(dataset=str(sample_dataset), output_dir="unused", init_from=str(model_folder))
    processor = build_processor(args, dialogues)
    model = load_or_create_model(args, processor, emotion_names(dialogues), memes=None)
    assert not ran.exists()
    assert type(processor) is MODProcessor and type(model) is MODGPTForMemeDialogue
    trusted = build_processor(dataclasses.replace(args, trust_remote_code=True), dialogues)
    assert ran.exists()  # the folder's own code, which the user trusted
    assert trusted.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert trusted.image_processor.to_dict() == processor.image_processor.to_dict()


def test_init_from_a_folder_without_a_model_is_reported(capsys, sample_dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    args = ["--dataset", str(sample_dataset), "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    status, stderr = run_main(capsys, *args, "--init_from", str(tmp_path / "empty"))
    assert status == 2 and f"--init_from '{tmp_path / 'empty'}': not a pretrained" in stderr
    assert not (tmp_path / "out").exists()


# Rows against the dataset card ----------------------------------------------------------------------------------


def test_rows_other_than_the_card_declares_stop_the_run(capsys, monkeypatch, sample_dataset, tmp_path):
    load_dataset = datasets.load_dataset

    def stale_cache(path, name=None, **kwargs):
        loaded = load_dataset(path, name, **kwargs)
        if name == "dialogues":
            loaded["train"] = loaded["train"].select(range(300))
        return loaded

    monkeypatch.setattr(datasets, "load_dataset", stale_cache)
    args = ["--dataset", str(sample_dataset), "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    status, stderr = run_main(capsys, *args)
    assert status == 2
    assert "config 'dialogues', split 'train' loaded 300 rows but the dataset card declares 320" in stderr


def test_files_cut_short_after_building_are_reported(capsys, sample_dataset, tmp_path):
    folder = tmp_path / "cut_sample"
    shutil.copytree(sample_dataset, folder)
    (shard,) = (folder / "dialogues").glob("train-*.parquet")
    pq.write_table(pq.read_table(shard).slice(0, 300), shard)
    args = ["--dataset", str(folder), "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    status, stderr = run_main(capsys, *args)
    assert status == 2 and "its files do not hold the rows its card declares" in stderr
