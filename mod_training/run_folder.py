"""
The output folder of a training run: its marker file, and the atomic layout of a saved model inside it.

A model folder's files are links `name -> .model/name`, and `.model` is a link to a hidden folder `.model-*` that
holds one whole save. A save writes a new such folder and switches `.model` to it with one rename, so a reader sees
the old model or the new one, never a mix of both.
"""

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from output_folders import read_marker

RUN_MARKER = "training_run.json"
METRICS_FILE = "metrics.jsonl"
MODEL_LINK = ".model"


def is_training_run(folder: Path) -> bool:
    """Whether `folder` holds the marker that training writes when it starts a run there."""
    return "arguments" in (read_marker(folder, RUN_MARKER) or {})


def start_run_folder(output_dir: Path, arguments: dict[str, Any], overwrite: bool, resumed_step: int | None) -> None:
    """
    Make the output folder a run's, once the run is ready to train: delete the earlier run that
    --overwrite_output_dir (`overwrite`) replaces, write the run marker with the run's `arguments`, and on resuming
    forget the metrics logged after the checkpoint (the run logs those steps again).
    """
    if overwrite and is_training_run(output_dir):
        for entry in output_dir.iterdir():
            remove_path(entry)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not (output_dir / RUN_MARKER).exists():
        marker = {"arguments": arguments, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (output_dir / RUN_MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n")
    metrics_file = output_dir / METRICS_FILE
    if resumed_step is not None and metrics_file.exists():
        lines = metrics_file.read_text().splitlines(keepends=True)
        metrics_file.write_text("".join(line for line in lines if logged_step(line) <= resumed_step))


def logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line cut short (by a run that was killed)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def append_metrics(output_dir: Path, values: dict[str, Any]) -> None:
    """Add one line to the run's metrics.jsonl. JSON has no NaN or infinity: they are written as null."""
    values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
    with (output_dir / METRICS_FILE).open("a") as stream:
        stream.write(json.dumps(values, allow_nan=False) + "\n")


def remove_path(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def publish_model(folder: Path, write: Callable[[Path], None]) -> None:
    """
    Have `write` fill a new hidden version folder inside `folder`, then point the `.model` link at it with one
    rename; `folder`'s own files are links through `.model`, so they switch with it. Older versions go last.
    """
    folder.mkdir(parents=True, exist_ok=True)
    version = Path(tempfile.mkdtemp(prefix=f"{MODEL_LINK}-", dir=folder))
    try:
        write(version)
        version.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared like any other
        replace_with_link(folder / MODEL_LINK, version.name)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    link_model_files(folder)
    for old in folder.glob(f"{MODEL_LINK}-*"):
        if old.name != version.name:
            remove_path(old)


def replace_with_link(path: Path, target: str) -> None:
    """Make `path` a symbolic link to `target` in one rename, whatever `path` was (a link, a file, nothing)."""
    temporary = path.with_name(f"{MODEL_LINK}-link-{os.getpid()}-{time.monotonic_ns()}")
    os.symlink(target, temporary)
    os.replace(temporary, path)


def link_model_files(folder: Path) -> None:
    """
    Give `folder` a link `name -> .model/name` for each file of the current version, `config.json` last so that the
    folder loads only once it is whole, and drop links to files the version no longer has.
    """
    names = sorted((p.name for p in (folder / MODEL_LINK).iterdir()), key=lambda name: name == "config.json")
    for name in names:
        target = f"{MODEL_LINK}/{name}"
        if not (folder / name).is_symlink() or os.readlink(folder / name) != target:
            replace_with_link(folder / name, target)
    for path in folder.iterdir():
        if path.is_symlink() and os.readlink(path).startswith(f"{MODEL_LINK}/") and not path.exists():
            path.unlink()
