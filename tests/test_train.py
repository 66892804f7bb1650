"""train.py: a real run on the sample, two processes, atomic checkpoints, uploads, the IMFE/CEM/MOD stages."""

import json
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration
from conftest import run_script
from huggingface_hub import HfApi
from huggingface_hub.hf_api import future_compatible
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import train
from mod_training import ArgumentError
from mod_training.arguments import TrainArguments, parse_arguments
from mod_training.checkpoints import (
    COMPLETE_MARKER,
    complete_checkpoints,
    resolve_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from mod_training.data import LengthGroupedBatchSampler, encode_split
from mod_training.hub import model_card, upload, wait_for_uploads
from mod_training.model_setup import build_processor

TINY = ["--model_config", "tiny", "--normalize_meme_features", "--learning_rate", "1e-3", "--logging_steps", "2"]


def run_train(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_script("train.py", *args, **kwargs)


def losses(output_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def trained(sample_dataset, tmp_path_factory) -> Path:
    """One short run that checkpoints every 20 steps and keeps 2 checkpoints."""
    output_dir = tmp_path_factory.mktemp("run") / "model"
    args = ["--dataset", str(sample_dataset), "--output_dir", str(output_dir), *TINY, "--max_steps", "60"]
    result = run_train(*args, "--save_steps", "20", "--save_total_limit", "2", "--eval_steps", "30")
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


@pytest.mark.slow
def test_run_learns_and_saves_a_complete_model(trained):
    curve = losses(trained)
    assert curve[-1] < 0.75 * curve[0]
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evaluations] == [30, 60]
    assert all(key in evaluations[-1] for key in ("eval_perplexity", "eval_usage_accuracy", "eval_r10@1"))
    # The default schedule stays linear decay to 0 over the 60 steps, without warmup (the learning rate is 1e-3).
    rates = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert rates == pytest.approx({step: 1e-3 * (60 - step) / 60 for step in range(2, 61, 2)})
    for name in ("config.json", "model.safetensors", "generation_config.json", "processor_config.json", "README.md"):
        assert (trained / name).exists(), name
    assert json.loads((trained / "config.json").read_text())["custom_pipelines"]["meme-dialogue"]
    card = (trained / "README.md").read_text()
    assert "trust_remote_code=True" in card and "eval_loss" not in card
    assert f"| loss | {evaluations[-1]['eval_loss']:.4f} |" in card
    assert (trained / "best_model" / "model.safetensors").exists()
    assert sorted(p.name for p in trained.glob("checkpoint-*")) == ["checkpoint-40", "checkpoint-60"]


def card_metadata(card) -> dict:
    return yaml.safe_load(str(card).split("---\n")[1])


def test_the_model_card_names_only_hub_datasets_and_no_stock_pipeline(tmp_path):
    metrics = {"eval_loss": 2.5, "eval_r10@1": 0.25}
    local = TrainArguments(dataset=str(tmp_path / "data"), output_dir="unused")
    metadata = card_metadata(model_card(local, metrics, "user/mod-gpt"))
    assert "datasets" not in metadata and "model-index" not in metadata and "pipeline_tag" not in metadata
    assert metadata["library_name"] == "transformers" and "custom_code" in metadata["tags"]

    hub = TrainArguments(dataset="user/mod-zh", output_dir="unused", init_from="user/gpt2-chinese")
    card = model_card(hub, metrics, "user/mod-gpt")
    metadata = card_metadata(card)
    assert metadata["datasets"] == ["user/mod-zh"] and metadata["base_model"] == "user/gpt2-chinese"
    assert "pipeline_tag" not in metadata
    (results,) = metadata["model-index"]
    assert results["name"] == "user/mod-gpt"
    scores = {m["type"]: m["value"] for r in results["results"] for m in r["metrics"]}
    assert scores == {"loss": 2.5, "r10@1": 0.25}
    assert all(r["dataset"]["type"] == "user/mod-zh" for r in results["results"])
    assert "| r10@1 | 0.2500 |" in card.text


NO_DROPOUT = {
    "model_type": "mod_gpt",
    "head_dropout": 0.0,
    "text_config": {
        "model_type": "gpt2",
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 2,
        "n_positions": 512,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    },
}


# Imported at start-up by every process of a run (PYTHONPATH): records the rows of each validation forward pass of
# the decoder, by process rank.
COUNT_VALIDATION_ROWS = """
import os
from transformers.models.gpt2 import modeling_gpt2

decoder_forward = modeling_gpt2.GPT2Model.forward


def counting_forward(self, *args, **kwargs):
    if not self.training:
        rank = os.environ.get("RANK", "0")
        with open(os.path.join(os.environ["VALIDATION_ROWS_DIR"], f"rank-{rank}"), "a") as stream:
            stream.write(f"{kwargs['inputs_embeds'].shape[0]}\\n")
    return decoder_forward(self, *args, **kwargs)


modeling_gpt2.GPT2Model.forward = counting_forward
"""


def validation_rows(folder: Path) -> dict[str, int]:
    return {path.name: sum(map(int, path.read_text().split())) for path in sorted(folder.iterdir())}


@pytest.mark.slow
def test_two_processes_follow_the_one_process_run_and_share_validation(sample_dataset, tmp_path):
    config = tmp_path / "no_dropout.json"
    config.write_text(json.dumps(NO_DROPOUT))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(COUNT_VALIDATION_ROWS)
    common = ["--dataset", str(sample_dataset), "--model_config", str(config), "--normalize_meme_features"]
    common += ["--learning_rate", "1e-3", "--logging_steps", "2", "--max_steps", "8", "--eval_steps", "4"]
    env = {"PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1"}
    for name in ("one", "two"):
        (tmp_path / f"rows-{name}").mkdir()
    single = run_train(
        *common,
        "--output_dir",
        str(tmp_path / "one"),
        "--per_device_train_batch_size",
        "8",
        env={**env, "VALIDATION_ROWS_DIR": str(tmp_path / "rows-one")},
    )
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    double = run_train(
        *common,
        "--output_dir",
        str(tmp_path / "two"),
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "12",
        launcher=torchrun,
        env={**env, "ACCELERATE_USE_CPU": "1", "VALIDATION_ROWS_DIR": str(tmp_path / "rows-two")},
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    # Same global batches; each process averages its own tokens, so the curves agree closely but not exactly.
    assert one == pytest.approx(two, rel=0.03)
    for name, value in weights(tmp_path / "one").items():
        torch.testing.assert_close(weights(tmp_path / "two")[name], value, rtol=0.05, atol=2e-3, msg=name)

    # Two validations (steps 4 and 8) of the 40 validation examples. Two processes split each global batch of 24:
    # 12 examples each, then 8 each of the last 16, padded to 12 each with 8 repeated examples that the metrics drop.
    assert validation_rows(tmp_path / "rows-one") == {"rank-0": 2 * 40}
    assert validation_rows(tmp_path / "rows-two") == {"rank-0": 2 * 24, "rank-1": 2 * 24}
    evaluations = [evaluation_records(tmp_path / name) for name in ("one", "two")]
    assert [r["step"] for r in evaluations[0]] == [r["step"] for r in evaluations[1]] == [4, 8]
    for single_record, double_record in zip(*evaluations):  # the weights agree to about 1e-6
        assert double_record["eval_loss"] == pytest.approx(single_record["eval_loss"], rel=1e-4)
        for name in ("eval_usage_accuracy", "eval_r10@1"):
            assert double_record[name] == single_record[name], name


def evaluation_records(output_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "eval_loss" in line]


def test_failed_save_leaves_no_checkpoint_that_looks_whole(tmp_path):
    class BrokenAccelerator:
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "model.safetensors").write_bytes(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(BrokenAccelerator(), tmp_path, {"global_step": 5}, torch.nn.Linear(2, 2))
    assert not (tmp_path / "checkpoint-5").exists()
    assert complete_checkpoints(tmp_path) == []


class StubHub(HfApi):
    """`HfApi` whose uploads, run in its background thread like the real ones, are recorded (and fail if asked)."""

    def __init__(self, fail: bool):
        super().__init__()
        self.fail, self.calls = fail, []

    @future_compatible
    def upload_folder(self, **kwargs):
        self.calls.append(kwargs)
        if self.fail:
            raise ConnectionError("hub unreachable")


def make_checkpoint(folder: Path, step: int) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir()
    (checkpoint / COMPLETE_MARKER).write_text(json.dumps({"global_step": step}))
    return checkpoint


@pytest.mark.parametrize("fail", [False, True])
def test_uploads_run_in_background_and_failures_keep_local_copies(tmp_path, caplog, fail):
    PartialState()  # accelerate's logging, which reports the failure, needs it
    api = StubHub(fail)
    first = make_checkpoint(tmp_path, 1)
    uploads = {first: upload(api, "user/mod-gpt", first, path_in_repo=first.name)}
    assert isinstance(uploads[first], Future)
    assert (uploads[first].exception() is None) is not fail  # waits for it
    expected = {"repo_id": "user/mod-gpt", "folder_path": first, "path_in_repo": "checkpoint-1"}
    assert api.calls == [{**expected, "commit_message": "Upload checkpoint-1", "run_as_future": False}]
    make_checkpoint(tmp_path, 2)
    rotate_checkpoints(tmp_path, limit=1, uploads=uploads)
    assert first.exists() is fail  # an uploaded checkpoint may be rotated away, a failed one never
    wait_for_uploads(uploads)
    assert ("hub unreachable" in caplog.text) is fail


def test_a_checkpoint_still_uploading_is_kept(tmp_path):
    first, second = make_checkpoint(tmp_path, 1), make_checkpoint(tmp_path, 2)
    rotate_checkpoints(tmp_path, limit=1, uploads={first: Future(), second: Future()})
    assert first.exists() and second.exists()
    rotate_checkpoints(tmp_path, limit=1)  # not pushed: only the limit counts
    assert complete_checkpoints(tmp_path) == [second]


def test_resolve_checkpoint_ignores_folders_without_marker(tmp_path):
    make_checkpoint(tmp_path, 3)
    (tmp_path / "checkpoint-7").mkdir()
    assert resolve_checkpoint("latest", tmp_path).name == "checkpoint-3"


def epoch_batches(loader: DataLoader, sampler: LengthGroupedBatchSampler, epoch: int, steps: int) -> list[list[int]]:
    """The batches a prepared loader gives in an epoch that the loop leaves after `steps` batches, as it does."""
    sampler.epoch = epoch
    return [batch.tolist() for _, batch in zip(range(steps), loader)]


def test_each_epoch_has_its_own_length_grouped_batches_through_a_prepared_loader():
    lengths = [(index * 37) % 101 + 1 for index in range(100)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=3)
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True))
    loader = accelerator.prepare(DataLoader(list(range(100)), batch_sampler=sampler))
    first, second = (epoch_batches(loader, sampler, epoch, len(sampler)) for epoch in (0, 1))
    assert len(sampler) == 12 and first != second
    for batches in (first, second):
        assert all(len(batch) == 8 for batch in batches) and len({i for b in batches for i in b}) == 96
        # Grouped by length: a batch spans a small part of the range of lengths (1 to 101).
        assert sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches) < 20
    assert epoch_batches(loader, sampler, 1, 4) == second[:4]  # from (seed, epoch) alone
    sampler.epoch = 1
    resumed = [batch.tolist() for batch in accelerator.skip_first_batches(loader, 5)]
    assert resumed == second[5:]


def test_the_learning_rate_schedule_is_any_of_get_scheduler(sample_dataset, tmp_path):
    common = ["--dataset", str(sample_dataset), "--output_dir", str(tmp_path / "out")]
    assert parse_arguments(common).lr_scheduler_type == "linear"
    assert parse_arguments([*common, "--lr_scheduler_type", "cosine"]).lr_scheduler_type == "cosine"
    with pytest.raises(ArgumentError, match="--lr_scheduler_type.*invalid choice: 'reduce_lr_on_plateau'"):
        parse_arguments([*common, "--lr_scheduler_type", "reduce_lr_on_plateau"])


def test_training_examples_learn_every_response_of_long_dialogues_once(sample_dataset):
    dialogues = datasets.load_dataset(str(sample_dataset), "dialogues")
    args = TrainArguments(dataset=str(sample_dataset), output_dir="unused", max_length=48)
    processor = build_processor(args, dialogues)
    for split in ("train", "validation"):
        examples = encode_split(dialogues[split], processor, args.max_length)
        assert len(examples) > len(dialogues[split]) and max(len(e["input_ids"]) for e in examples) <= 48
        learned = sum(example["labels"].count(processor.token_ids["[EOS]"]) for example in examples)
        assert learned == sum(len(turns) - 1 for turns in dialogues[split]["turns"])


@pytest.mark.slow
def test_help_through_accelerate_launch():
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu"]
    result = run_train("--help", launcher=launcher)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--resume_from_checkpoint" in result.stdout and "--gradient_accumulation_steps" in result.stdout


def stage_losses(output_dir: Path, key: str) -> list[float]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [line[key] for line in lines if key in line]


@pytest.mark.slow
def test_imfe_then_cem_then_mod_each_stage_learns_and_picks_up_the_last(sample_dataset, tmp_path):
    common = ["--dataset", str(sample_dataset), "--meme_encoder", "test_efficientnet", "--logging_steps", "5"]
    imfe, cem, mod = tmp_path / "imfe", tmp_path / "cem", tmp_path / "mod"
    result = run_train(
        *common, "--task", "imfe", "--output_dir", str(imfe), "--learning_rate", "1e-3", "--max_steps", "30"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imfe_curve = stage_losses(imfe, "imfe_loss")
    assert imfe_curve[-1] < 0.6 * imfe_curve[0]
    encoder_file = imfe / train.IMFE_ENCODER_FILE

    model = [*common, "--model_config", "tiny", "--normalize_meme_features"]
    cem_args = ["--task", "cem", "--output_dir", str(cem), "--meme_encoder_checkpoint", str(encoder_file)]
    result = run_train(*model, *cem_args, "--learning_rate", "1e-3", "--max_steps", "30")
    assert result.returncode == 0, result.stderr[-3000:]
    cem_curve = losses(cem)
    assert cem_curve[-1] < 0.8 * cem_curve[0]
    cem_weights = weights(cem)
    for name, value in load_file(encoder_file).items():
        if not name.startswith("classifier."):  # the IMFE classification layer is not part of the meme encoder
            assert torch.equal(cem_weights[f"meme_encoder.{name}"], value), name
    cem_config = json.loads((cem / "config.json").read_text())
    assert (cem_config["emotion_loss_weight"], cem_config["text_loss_weight"]) == (1.0, 0.0)

    # With a zero learning rate the MOD stage must end exactly where the CEM stage left the model.
    mod_args = ["--task", "mod", "--output_dir", str(mod), "--init_from", str(cem)]
    result = run_train(*model, *mod_args, "--learning_rate", "0", "--max_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    for name, value in weights(mod).items():
        assert torch.equal(cem_weights[name], value), name
    assert json.loads((mod / "config.json").read_text())["text_loss_weight"] == 1.0
