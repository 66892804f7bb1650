"""Train MOD-GPT on a built MOD dataset, from one CPU to many GPUs.

    accelerate launch train.py --dataset demo_output/data --output_dir demo_output/model --model_config tiny
    python train.py args.yaml --max_steps 10   # the arguments of a YAML or JSON file, then any overrides

Every dialogue is one packed sequence (history turns and their responses at once), or, when longer than
--max_length, a few windows of whole turns that each learn new responses; batches are length-grouped and padded per
batch. Everything distributed goes through `Accelerator`. This file is the training loop; what it uses besides
(arguments, output folder, checkpoints, hub, data, model set-up) is in `mod_training/`, the validation scores in
`mod_scoring.py`.

Every argument is checked before any work starts. The output folder must be new or empty, or hold the run being
resumed (--resume_from_checkpoint), or hold an earlier training run that --overwrite_output_dir then deletes; a
folder that is not a training run's (such as a dataset) is never written into. It ends up holding:

    training_run.json     the marker of a training run, with the arguments that started it
    config.json, model.safetensors, ...
                          the final model, so that `from_pretrained(output_dir)` loads it, saved atomically (a
                          reader sees the old model or the new one, never a mix: see mod_training/run_folder.py)
    best_model/           the model with the lowest validation loss, laid out the same way
    checkpoint-N/         `save_state` checkpoints, written aside and renamed into place; their
                          checkpoint_complete.json holds the loop state and the size and SHA-256 of every file, which
                          resuming checks
    metrics.jsonl         one JSON object per logged step (a value that is not finite is written as null)

A step whose loss or gradient norm is not finite is skipped (no update); --max_nonfinite_steps of them in a row stop
the run. Weights are checked to be finite before every save. SIGTERM (a preempted job) stops the run after the
current step with a checkpoint. Exit status: 0 done; 1 training failed; 2 bad arguments or data, reported before
anything is written; 143 stopped by SIGTERM, resumable with --resume_from_checkpoint latest.
"""

import json
import logging
import math
import os
import signal
import sys
import time
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from mod_scoring import VALIDATION_SUMS, validation_metrics, validation_sums
from mod_training import ArgumentError, TrainingError
from mod_training.arguments import TrainArguments, parse_arguments
from mod_training.checkpoints import (
    load_checkpoint,
    resolve_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
    save_model,
)
from mod_training.data import (
    DialogueCollator,
    check_training_batches,
    emotion_names,
    encode_split,
    imfe_examples,
    imfe_loader,
    load_splits,
    retrieval_negatives,
    training_loader,
    validation_loader,
)
from mod_training.hub import start_hub_repo, upload, wait_for_uploads
from mod_training.model_setup import build_model, build_processor, fill_meme_bank, imfe_encoder
from mod_training.run_folder import MODEL_LINK, append_metrics, start_run_folder
from modeling_mod_gpt import loss_item_counts
from pipeline_mod import max_positions

logger = get_logger("train")

IMFE_ENCODER_FILE = "meme_encoder.safetensors"
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


class StoppedBySigterm(Exception):
    """SIGTERM stopped the run after a step, once its checkpoint was saved (exit status 143)."""


def train(args: TrainArguments) -> dict[str, float]:
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    set_up_logging()
    resume_from = None
    if args.resume_from_checkpoint:
        resume_from = resolve_checkpoint(args.resume_from_checkpoint, output_dir, args.skip_corrupt_checkpoints)
    set_seed(args.seed)

    # Data, model and meme bank
    dialogues, memes = load_splits(args.dataset)
    processor = build_processor(args, dialogues)
    train_encodings = encode_split(dialogues["train"], processor, args.max_length)
    eval_encodings = encode_split(dialogues["validation"], processor, args.max_length)
    check_training_batches(len(train_encodings), len(dialogues["train"]), args, accelerator.num_processes)
    model = build_model(args, processor, emotion_names(dialogues), memes)
    if args.max_length > max_positions(model):
        raise ArgumentError(
            f"--max_length {args.max_length} is more than the {max_positions(model)} positions of the decoder."
        )
    fill_meme_bank(args, model, processor, memes)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    logger.info(
        "MOD-GPT with %.1fM parameters, %d memes in the bank", model.num_parameters() / 1e6, len(model.meme_bank.ids)
    )
    images = dict(zip(memes["meme_id"], memes["image"])) if args.train_meme_encoder else None
    collator = DialogueCollator(processor, model.meme_bank.ids, model.meme_bank.features.clone(), images)
    train_loader = training_loader(train_encodings, collator, args, accelerator.num_processes)
    train_batches = train_loader.batch_sampler  # accelerate wraps it once prepared; its epoch is set through this
    eval_loader = validation_loader(eval_encodings, collator, args, accelerator.num_processes)
    negatives = retrieval_negatives(eval_encodings, len(model.meme_bank.ids), args.seed)

    # Optimizer and schedule
    steps_per_epoch = len(train_loader) // args.gradient_accumulation_steps
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.warmup_steps, max_steps)
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )
    unwrapped = accelerator.unwrap_model(model)

    # Loop state, resumed from a checkpoint
    hub = start_hub_repo(args.hub_model_id) if args.push_to_hub and accelerator.is_main_process else None
    uploads: dict[Path, Future] = {}
    state = {"global_step": 0, "best_eval_loss": None, "best_step": None, "eval_step": None, "nonfinite_steps": 0}
    if resume_from is not None:
        state.update(load_checkpoint(accelerator, resume_from))
    window = LossWindow(accelerator, state.pop("loss_window", []))
    accelerator.wait_for_everyone()  # every process has checked the output folder before anything is written there
    if accelerator.is_main_process:
        resumed_step = state["global_step"] if resume_from is not None else None
        start_run_folder(output_dir, asdict(args), args.overwrite_output_dir, resumed_step)
        accelerator.init_trackers("mod-gpt", config={k: v for k, v in asdict(args).items() if v is not None})

    def log(values: dict[str, Any]) -> None:
        finite = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
        accelerator.log(finite, step=state["global_step"])
        if accelerator.is_main_process:
            append_metrics(output_dir, {"step": state["global_step"], **values})

    def run_validation() -> dict[str, float]:
        metrics = validate(model, eval_loader, accelerator, negatives)
        log(metrics)
        logger.info("step %d: %s", state["global_step"], {k: round(v, 4) for k, v in metrics.items()})
        state["eval_step"], state["eval_metrics"] = state["global_step"], metrics
        best = math.inf if state["best_eval_loss"] is None else state["best_eval_loss"]
        if math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] < best:
            state.update(best_eval_loss=metrics["eval_loss"], best_step=state["global_step"])
            save_model(accelerator, model, processor, output_dir / "best_model", args, metrics)
        return metrics

    def checkpoint() -> Path:
        saved = save_checkpoint(accelerator, output_dir, {**state, "loss_window": window.carried()}, unwrapped)
        if accelerator.is_main_process:
            if hub is not None:
                uploads[saved] = upload(hub, args.hub_model_id, saved, path_in_repo=saved.name)
            rotate_checkpoints(output_dir, args.save_total_limit, uploads if hub is not None else None)
        return saved

    # Training
    progress = tqdm(total=max_steps, initial=state["global_step"], disable=not accelerator.is_local_main_process)
    preemption = SigtermWatch()
    model.train()
    cycle_losses = []
    try:
        while state["global_step"] < max_steps:
            epoch, step_in_epoch = divmod(state["global_step"], steps_per_epoch)
            train_batches.epoch = epoch
            skip = step_in_epoch * args.gradient_accumulation_steps
            epoch_loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            for batch_index, batch in enumerate(epoch_loader, start=skip):
                seed_dropout(args.seed, epoch, batch_index, accelerator.process_index)
                with accelerator.accumulate(model):
                    # Each loss part averaged over the global batch; DDP then averages the processes' gradients.
                    num_items = accelerator.reduce(
                        loss_item_counts(batch["labels"], batch["usage_labels"], batch["emotion_labels"]),
                        reduction="sum",
                    )
                    outputs = model(**batch, logits_to_keep=None, num_items_in_batch=num_items)
                    loss = outputs.loss * accelerator.num_processes
                    accelerator.backward(loss)
                    cycle_losses.append(loss.detach())
                    if accelerator.sync_gradients:
                        updated, stop = apply_gradients(
                            accelerator, optimizer, scheduler, trainable, args, cycle_losses, preemption.requested
                        )
                if not accelerator.sync_gradients:
                    continue
                state["global_step"] += 1
                step = state["global_step"]
                progress.update(1)
                window.add(cycle_losses, updated)
                cycle_losses = []
                count_nonfinite_steps(state, updated, args)
                if step % args.logging_steps == 0 or step == max_steps:
                    values = window.summary(scheduler.get_last_lr()[0])
                    progress.set_postfix({k: f"{v:.3g}" for k, v in values.items() if v is not None})
                    log(values)
                if args.eval_steps and step % args.eval_steps == 0:
                    run_validation()
                if stop or (args.save_steps and step % args.save_steps == 0):
                    saved = checkpoint()
                if stop:
                    raise StoppedBySigterm(
                        f"stopped by SIGTERM after step {step}; saved {saved}. Continue with "
                        "--resume_from_checkpoint latest."
                    )
                if step >= max_steps or step % steps_per_epoch == 0:
                    break  # at an epoch's end, its last incomplete accumulation cycle, if any, is dropped
    finally:
        preemption.release()
        progress.close()

    final_metrics = state["eval_metrics"] if state["eval_step"] == state["global_step"] else run_validation()
    save_model(accelerator, model, processor, output_dir, args, final_metrics)
    accelerator.wait_for_everyone()
    if hub is not None:  # the model alone: no checkpoint, log or best model
        uploads[output_dir] = upload(hub, args.hub_model_id, (output_dir / MODEL_LINK).resolve())
        wait_for_uploads(uploads)
    accelerator.end_training()
    return final_metrics


def set_up_logging() -> None:
    """Warnings of every library; this script's and its helpers' information too (on the main process only)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    for name in ("train", "mod_training"):
        logging.getLogger(name).setLevel(logging.INFO)
    datasets.disable_progress_bars()


# Steps --------------------------------------------------------------------------------------------------------------


def seed_dropout(seed: int, epoch: int, batch_index: int, process_index: int) -> None:
    """
    Seed the global RNG, which dropout draws from, from the batch's place in training alone. A resumed run then
    draws the same masks as an uninterrupted one, whatever else consumed random numbers before (data loader
    iterators, validation, restoring RNG states at another point of the loop).
    """
    entropy = np.random.SeedSequence([seed, epoch, batch_index, process_index]).generate_state(2)
    torch.manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


def apply_gradients(
    accelerator: Accelerator, optimizer, scheduler, parameters: list, args: TrainArguments, losses: list, stop: bool
) -> tuple[bool, bool]:
    """
    Clip the accumulated gradients and apply them, unless the loss of any process or the gradient norm is not
    finite: then the update is dropped. Returns whether it was applied, and whether any process asked to stop; all
    processes agree on both. Under fp16 the gradient scaler skips overflowing updates itself (and must see them to
    lower its scale), so only the loss counts there.
    """
    grad_norm = accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
    flags = torch.tensor(
        [not bool(torch.isfinite(torch.stack(losses)).all()), stop], dtype=torch.float32, device=accelerator.device
    )
    nonfinite_loss, stop = (accelerator.reduce(flags, reduction="sum") > 0).tolist()
    finite_norm = grad_norm is None or accelerator.scaler is not None or bool(torch.isfinite(grad_norm))
    updated = not nonfinite_loss and finite_norm
    if updated:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return updated, stop


def count_nonfinite_steps(state: dict[str, Any], updated: bool, args: TrainArguments) -> None:
    """Count skipped steps in a row; too many stop the run."""
    if updated:
        state["nonfinite_steps"] = 0
        return
    state["nonfinite_steps"] += 1
    step, count = state["global_step"], state["nonfinite_steps"]
    logger.warning("step %d: the loss or the gradient norm is not finite; its update was skipped.", step)
    if count >= args.max_nonfinite_steps:
        raise TrainingError(
            f"stopped at step {step}: the loss or the gradient norm was not finite at {count} steps in a row "
            f"(steps {step - count + 1} to {step}), whose updates were skipped, so the weights are those of step "
            f"{step - count}; the final model was not saved. Lower --learning_rate ({args.learning_rate}) or "
            "--max_grad_norm, or look for bad data at these steps."
        )


class LossWindow:
    """The losses of the steps since the last log line; carried in checkpoints, so a resumed run logs the same means."""

    def __init__(self, accelerator: Accelerator, carried: list[float]):
        self.accelerator = accelerator
        self.reset([torch.tensor(value, device=accelerator.device) for value in carried])

    def reset(self, losses: list[torch.Tensor]) -> None:
        self.losses, self.skipped, self.steps, self.started = losses, 0, 0, time.perf_counter()

    def add(self, losses: list[torch.Tensor], updated: bool) -> None:
        """One step's micro-batch losses; a skipped step (not finite) adds none."""
        self.steps += 1
        if updated:
            self.losses += losses
        else:
            self.skipped += 1

    def carried(self) -> list[float]:
        """The losses so far, averaged over processes, for a checkpoint."""
        return self.accelerator.reduce(torch.stack(self.losses), reduction="mean").tolist() if self.losses else []

    def summary(self, learning_rate: float) -> dict[str, float | None]:
        """The log line of the window (its loss is None when every step was skipped), and a new window."""
        losses = self.carried()
        values = {
            "loss": sum(losses) / len(losses) if losses else None,
            "lr": learning_rate,
            "steps_per_second": self.steps / (time.perf_counter() - self.started),
        }
        if self.skipped:
            values["nonfinite_steps"] = self.skipped
        self.reset([])
        return values


class SigtermWatch:
    """SIGTERM (a preempted job) asks the loop to stop after its current step; a second SIGTERM acts as usual."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self.request)

    def request(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGTERM, self.previous)

    def release(self) -> None:
        if not self.requested:
            signal.signal(signal.SIGTERM, self.previous)


# Validation ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def validate(model, loader, accelerator: Accelerator, negatives: torch.Tensor) -> dict[str, float]:
    """
    Perplexity and loss of the response text, meme usage accuracy, and R10@1 (each attached meme ranked among
    itself and its 9 `negatives`). Each process scores its share of the examples; their per-example sums are
    gathered without the duplicates that even out the last batch.
    """
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    totals = torch.zeros(len(VALIDATION_SUMS), dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        outputs = model(**{key: value for key, value in batch.items() if key not in ("labels", "example_index")})
        sums = validation_sums(unwrapped, outputs, batch, negatives[batch["example_index"].cpu()])
        totals += accelerator.gather_for_metrics(sums).sum(0)
    model.train()
    return validation_metrics(totals)


# IMFE: meme encoder pre-training ------------------------------------------------------------------------------------


def train_imfe(args: TrainArguments) -> dict[str, float]:
    """Fine-tune the meme encoder as an image classifier and save it for the later stages."""
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps
    )
    set_seed(args.seed)
    images, labels, names = imfe_examples(args)
    if not labels:
        raise ArgumentError(f"--task imfe: no labelled images in {args.imfe_dataset or args.dataset!r}.")
    encoder = imfe_encoder(args, len(names))
    loader = imfe_loader(images, labels, encoder, args.per_device_train_batch_size)
    steps_per_epoch = max(1, len(loader) // args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    encoder, optimizer, loader = accelerator.prepare(encoder, optimizer, loader)
    output_dir = Path(args.output_dir)
    accelerator.wait_for_everyone()  # every process has checked the output folder before anything is written there
    if accelerator.is_main_process:
        start_run_folder(output_dir, asdict(args), args.overwrite_output_dir, None)
    step, losses = 0, []
    progress = tqdm(total=max_steps, disable=not accelerator.is_local_main_process, desc="imfe")
    while step < max_steps:
        for pixel_values, targets in loader:
            with accelerator.accumulate(encoder):
                loss = F.cross_entropy(encoder(pixel_values), targets)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
                progress.update(1)
                progress.set_postfix(loss=f"{losses[-1]:.3f}")
                if accelerator.is_main_process and (step % args.logging_steps == 0 or step == max_steps):
                    window = losses[-args.logging_steps :]
                    append_metrics(output_dir, {"step": step, "imfe_loss": sum(window) / len(window)})
            if step >= max_steps:
                break
    progress.close()
    if accelerator.is_main_process:
        (output_dir / "imfe_labels.json").write_text(json.dumps(names, ensure_ascii=False))
        partial = output_dir / f".partial-{IMFE_ENCODER_FILE}"
        save_file(accelerator.unwrap_model(encoder).state_dict(), partial)
        os.replace(partial, output_dir / IMFE_ENCODER_FILE)
    accelerator.wait_for_everyone()
    return {"imfe_loss": losses[-1]}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_arguments(sys.argv[1:] if argv is None else argv)
        train_imfe(args) if args.task == "imfe" else train(args)
    except ArgumentError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    except StoppedBySigterm as stop:
        print(f"train.py: {stop}", file=sys.stderr)
        return SIGTERM_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
