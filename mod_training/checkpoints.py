"""
Checkpoints and model saves. A checkpoint is accelerate's `save_state`, written aside, marked complete with the size
and SHA-256 of every file, then renamed into place; resuming checks those. A model save goes through
`run_folder.publish_model`. Neither ever holds weights that are not finite.
"""

import hashlib
import json
import shutil
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger
from torch import nn

from pipeline_mod import MemeDialoguePipeline
from processing_mod import MODProcessor

from . import ArgumentError, TrainingError
from .arguments import TrainArguments
from .hub import upload_finished, write_model_card
from .run_folder import publish_model

logger = get_logger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders that finished saving (they hold the completion marker), oldest first."""
    found = [
        p
        for p in output_dir.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / COMPLETE_MARKER).exists()
    ]
    return sorted(found, key=checkpoint_step)


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint_marker(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / COMPLETE_MARKER).read_text())


def checkpoint_damage(checkpoint: Path) -> str | None:
    """What is wrong with a complete checkpoint's files, compared with the sizes and digests recorded at saving."""
    try:
        recorded = read_checkpoint_marker(checkpoint).get("files", {})
    except (OSError, ValueError) as error:
        return f"{checkpoint / COMPLETE_MARKER} is unreadable ({error})"
    for name, expected in recorded.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{path} has {path.stat().st_size} bytes where {expected['size']} were saved (truncated?)"
        if sha256(path) != expected["sha256"]:
            return f"{path} changed after it was saved (its SHA-256 differs)"
    return None


def resolve_checkpoint(value: str, output_dir: Path, skip_damaged: bool = False) -> Path:
    """
    The checkpoint to resume from: a given folder, or with 'latest' the newest complete one in `output_dir`. A
    damaged checkpoint is an error naming its bad file and the newest intact one; with `skip_damaged`, 'latest'
    passes over it to that one.
    """
    if value != "latest":
        path = Path(value)
        if not (path / COMPLETE_MARKER).exists():
            raise ArgumentError(f"--resume_from_checkpoint {value!r}: not a complete checkpoint folder.")
        damage = checkpoint_damage(path)
        if damage:
            raise ArgumentError(f"--resume_from_checkpoint {value!r} is damaged: {damage}.")
        return path
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        raise ArgumentError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}.")
    damaged = []
    for checkpoint in reversed(checkpoints):
        damage = checkpoint_damage(checkpoint)
        if damage is None:
            break
        damaged.append(damage)
    else:
        raise ArgumentError(f"--resume_from_checkpoint latest: every checkpoint is damaged: {'; '.join(damaged)}.")
    if damaged and not skip_damaged:
        raise ArgumentError(
            f"--resume_from_checkpoint latest: the newest checkpoint is damaged: {damaged[0]}. The newest intact "
            f"one is {checkpoint}: resume from it with --resume_from_checkpoint {checkpoint}, or pass "
            "--skip_corrupt_checkpoints."
        )
    for damage in damaged:
        logger.warning("Skipping a damaged checkpoint: %s", damage)
    return checkpoint


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict[str, Any]:
    """Load a checkpoint into the prepared model, optimizer, scheduler and RNGs; return its loop state."""
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - whatever the checkpoint's files hold that does not fit this run
        raise ArgumentError(f"cannot resume from {checkpoint}: {type(error).__name__}: {error}") from error
    logger.info("Resumed from %s", checkpoint)
    return {key: value for key, value in read_checkpoint_marker(checkpoint).items() if key != "files"}


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict[str, Any], model: nn.Module) -> Path:
    """`save_state` into `output_dir/checkpoint-<global step>`, atomically, with the loop `state` in its marker."""
    final = output_dir / f"checkpoint-{state['global_step']}"
    partial = output_dir / f".partial-checkpoint-{state['global_step']}"
    check_finite_weights(model, final)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = {**state, "files": file_digests(partial)}
        (partial / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(output_dir: Path, limit: int | None, uploads: Mapping[Path, Future] | None = None) -> None:
    """
    Delete the oldest checkpoints beyond `limit`. When checkpoints are pushed (`uploads`: each one's upload), one
    is deleted only once its upload finished without error: a failed or unfinished upload keeps the local copy.
    """
    if limit is None:
        return
    checkpoints = complete_checkpoints(output_dir)
    for old in checkpoints[: max(0, len(checkpoints) - limit)]:
        if uploads is None or upload_finished(uploads.get(old)):
            shutil.rmtree(old)


def check_finite_weights(model: nn.Module, destination: Path) -> None:
    """Refuse to save weights holding NaN or infinity."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not tensor.isfinite().all()
    ]
    if bad:
        raise TrainingError(
            f"refusing to save {destination}: {len(bad)} weights are not finite ({', '.join(bad[:3])}, ...)."
        )


def save_model(
    accelerator: Accelerator,
    model: nn.Module,
    processor: MODProcessor,
    folder: Path,
    args: TrainArguments,
    metrics: dict[str, float],
) -> None:
    """
    Save model, processor, generation config and a model card into `folder` so that `from_pretrained(folder)` loads
    them, atomically (`run_folder.publish_model`).
    """
    unwrapped = accelerator.unwrap_model(model)
    check_finite_weights(unwrapped, folder)
    if not accelerator.is_main_process:
        return

    def write(version: Path) -> None:
        # Saving through the pipeline also records it in config.json, for `pipeline(model=..., trust_remote_code=True)`.
        MemeDialoguePipeline(model=unwrapped, processor=processor).save_pretrained(version)
        processor.save_pretrained(version)
        write_model_card(version, args, metrics, args.hub_model_id or folder.name)

    publish_model(folder, write)
