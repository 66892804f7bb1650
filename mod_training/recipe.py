"""
Run a recipe: the paper's training stages and the evaluation in one command, each stage starting from the last one's
output, then the paper's tables with its published rows beside ours.

    python -m mod_training.recipe --recipe recipes/mod_gpt --dataset data/mod-zh --output_dir runs/paper
    python -m mod_training.recipe ... --accelerate_config recipes/accelerate_configs/multi_gpu.yaml --num_processes 8
    python -m mod_training.recipe ... --num_processes 2                      # two processes: GPUs, or CPUs over gloo
    python -m mod_training.recipe ... --set max_steps=10 --set evaluate.limit=20   # overrides, for trial runs

A recipe is a folder laid out like Hugging Face's alignment-handbook recipes: a `config.yaml` of train.py arguments
for each training stage (`imfe/`, `cem/`, `mod/`; each one also runs alone, `python train.py imfe/config.yaml
--dataset ... --output_dir ...`), `evaluate/config.yaml` for evaluate_mod.py, and `paper_results.yaml`, the published
figures. The stages run in this order, each in its own folder of --output_dir:

    imfe/        train.py --task imfe                                    -> imfe/meme_encoder.safetensors
    cem/         train.py --task cem --meme_encoder_checkpoint imfe/meme_encoder.safetensors
    mod/         train.py --task mod --init_from cem    (the CEM model brings its decoder, vocabulary and meme encoder)
    evaluation/  evaluate_mod.py --model mod --output evaluation/results.json

The same command, run again, skips the finished stages (a training stage is finished once its final model is saved;
the evaluation once its results are written for the current MOD model), resumes an interrupted stage from its newest
complete checkpoint (`--resume_from_checkpoint latest`; a stage with none starts over, as IMFE, which keeps none,
always does), and refuses to skip or resume a stage whose recorded arguments differ from what the recipe now asks.
Everything is checked before any stage starts: the recipe's files, every stage's arguments, the accelerate config,
the folders. Exit status: 0 done; 2 bad arguments, recipe or folders (nothing ran); a failed stage's own status;
143 stopped by SIGTERM, which the running stage gets too (train.py saves a checkpoint: run the same command again to
resume), 130 by Ctrl-C.
"""

import argparse
import dataclasses
import difflib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modeling_mod_gpt import PAPER_SAMPLING
from output_folders import why_not_writable

from . import ArgumentError
from .arguments import (
    ArgumentParser,
    TrainArguments,
    check_arguments,
    file_arguments,
    looks_local,
)
from .run_folder import MODEL_LINK, RUN_MARKER, is_training_run

PROG = "python -m mod_training.recipe"
REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINING_STAGES = ("imfe", "cem", "mod")
EVALUATION = "evaluation"  # the evaluation's folder of --output_dir
EVALUATE = "evaluate"  # its folder in the recipe, and its prefix in --set
CONFIG_FILE = "config.yaml"
PAPER_FILE = "paper_results.yaml"
RESULTS_FILE = "results.json"
EVALUATION_RECORD = "evaluation_run.json"  # the evaluation's arguments and the MOD model it scored
ROOT_MARKER = "recipe_run.json"  # marks --output_dir as a recipe run's
# Written by train.py (train.IMFE_ENCODER_FILE, mod_training.checkpoints.COMPLETE_MARKER); importing those modules
# would load torch and the model code, which checking a recipe does not need.
IMFE_ENCODER_FILE = "meme_encoder.safetensors"
CHECKPOINT_COMPLETE = "checkpoint_complete.json"

# Arguments the runner gives each stage, from --dataset, --output_dir and the stage before; a recipe or --set that
# names one is refused rather than overridden.
RUNNER_ARGUMENTS = {
    "dataset": "--dataset of the runner",
    "output_dir": "the stage's folder of --output_dir",
    "task": "the stage's name",
    "resume_from_checkpoint": "whether the stage resumes",
    "overwrite_output_dir": "whether the stage starts over",
}
STAGE_INPUTS = {
    "imfe": {},
    "cem": {"meme_encoder_checkpoint": "IMFE's meme_encoder.safetensors"},
    "mod": {
        "init_from": "the CEM model",
        "meme_encoder_checkpoint": "nothing: the CEM model brings IMFE's meme encoder",
    },
}
# Arguments that may differ between the run that made a stage's folder and the one that skips or resumes it.
RERUN_FREE = ("resume_from_checkpoint", "overwrite_output_dir", "skip_corrupt_checkpoints")

# evaluate_mod.py's options a recipe may set: kind, and the flag's value check.
EVALUATE_OPTIONS = {
    "batch_size": "positive",
    "max_new_tokens": "positive",
    "limit": "positive",
    "seed": "integer",
    "split": "names",
    "trust_remote_code": "boolean",
}
NULLS = ("", "~", "null", "Null", "NULL")  # YAML's spellings of null: `--set KEY=null` drops KEY
# How evaluate_mod.py samples the replies (a saved model's generation config, the paper's decoding); no flags for these.
EVALUATE_SAMPLING = {name: PAPER_SAMPLING[name] for name in ("top_p", "temperature")}


# The recipe ---------------------------------------------------------------------------------------------------------


@dataclass
class Override:
    stage: str | None  # None: every training stage where the runner does not set the argument
    name: str
    value: str | None  # None: drop the argument, so that the script's default applies


def parse_overrides(items: list[str]) -> list[Override]:
    """`--set KEY=VALUE` (every training stage) and `--set STAGE.KEY=VALUE` (one stage, `evaluate` included)."""
    overrides = []
    for item in items:
        key, equals, value = item.partition("=")
        stage, dot, name = key.partition(".")
        if not dot:
            stage, name = None, key
        if not equals or not name:
            raise ArgumentError(f"--set {item!r}: expected KEY=VALUE or STAGE.KEY=VALUE.")
        if stage is not None and stage not in (*TRAINING_STAGES, EVALUATE):
            raise ArgumentError(f"--set {item!r}: no stage {stage!r}; the stages are {', '.join(stage_names())}.")
        valid = EVALUATE_OPTIONS.keys() | EVALUATE_SAMPLING.keys() if stage == EVALUATE else train_argument_names()
        if name not in valid:
            raise ArgumentError(f"--set {item!r}: {unknown_name(name, valid, stage)}")
        if stage is None and name in RUNNER_ARGUMENTS:
            raise ArgumentError(f"--set {item!r}: the runner sets {name} ({RUNNER_ARGUMENTS[name]}).")
        if stage in STAGE_INPUTS and name in {**RUNNER_ARGUMENTS, **STAGE_INPUTS[stage]}:
            given = {**RUNNER_ARGUMENTS, **STAGE_INPUTS[stage]}[name]
            raise ArgumentError(f"--set {item!r}: the runner sets {name} of stage {stage} ({given}).")
        overrides.append(Override(stage, name, None if value.strip() in NULLS else value))
    return overrides


def stage_names() -> list[str]:
    return [*TRAINING_STAGES, EVALUATE]


def train_argument_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainArguments)}


def unknown_name(name: str, valid, stage: str | None) -> str:
    script = "evaluate_mod.py" if stage == EVALUATE else "train.py"
    close = difflib.get_close_matches(name, sorted(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if stage is None and name in EVALUATE_OPTIONS.keys() | EVALUATE_SAMPLING.keys():
        hint = f" (an evaluation option: --set {EVALUATE}.{name}=...)"
    return f"{script} has no argument {name!r}{hint}."


def training_values(recipe: Path, stage: str, overrides: list[Override]) -> dict[str, str]:
    """The train.py arguments of a stage: its config.yaml, then the overrides that reach it (all as strings)."""
    path = recipe / stage / CONFIG_FILE
    if not path.is_file():
        raise ArgumentError(
            f"{path}: no such file. A recipe holds {', '.join(f'{s}/{CONFIG_FILE}' for s in TRAINING_STAGES)} (the "
            "train.py arguments of each stage)."
        )
    values = dict(argument[2:].split("=", 1) for argument in file_arguments(path))
    task = values.pop("task", stage)
    if task != stage:
        raise ArgumentError(f"{path}: task {task!r} in the folder of stage {stage!r}: they must agree.")
    for name in values:
        given = {**RUNNER_ARGUMENTS, **STAGE_INPUTS[stage]}.get(name)
        if given is not None:
            raise ArgumentError(f"{path}: {name} is set by the runner ({given}): remove it from the recipe.")
    for override in overrides:
        reaches = override.stage == stage or (override.stage is None and override.name not in STAGE_INPUTS[stage])
        if not reaches:
            continue
        if override.value is None:
            values.pop(override.name, None)
        else:
            values[override.name] = override.value
    return values


def parse_training_arguments(stage: str, argv: list[str], recipe: Path) -> TrainArguments:
    """train.py's parse of a stage's arguments (types, choices), without its checks of files and folders."""
    try:
        (args,) = ArgumentParser(TrainArguments, prog="train.py").parse_args_into_dataclasses(argv)
    except (ArgumentError, ValueError) as error:
        raise ArgumentError(f"stage {stage} ({recipe / stage / CONFIG_FILE} and --set): {error}") from error
    return args


def evaluation_values(recipe: Path, overrides: list[Override]) -> dict[str, Any]:
    """evaluate_mod.py's options: evaluate/config.yaml (optional), then `--set evaluate.KEY=VALUE`; checked."""
    path = recipe / EVALUATE / CONFIG_FILE
    values: dict[str, Any] = {}
    if path.is_file():
        values = read_yaml_mapping(path)
        for name in values:
            if name not in EVALUATE_OPTIONS.keys() | EVALUATE_SAMPLING.keys():
                raise ArgumentError(f"{path}: {unknown_name(name, EVALUATE_OPTIONS.keys(), EVALUATE)}")
    for override in overrides:
        if override.stage == EVALUATE:
            if override.value is None:
                values.pop(override.name, None)
                continue
            try:
                values[override.name] = yaml.safe_load(override.value)
            except yaml.YAMLError as error:
                raise ArgumentError(f"--set {EVALUATE}.{override.name}: not a YAML value ({error}).") from error
    for name, expected in EVALUATE_SAMPLING.items():
        if name in values and values[name] != expected:
            raise ArgumentError(
                f"evaluation ({path} or --set): {name} {values[name]!r}: evaluate_mod.py samples replies with the "
                f"paper's {name} {expected} and has no flag to change it."
            )
    for name, kind in EVALUATE_OPTIONS.items():
        if name in values and values[name] is not None:
            check_option(name, kind, values[name], path)
    return {name: value for name, value in values.items() if value is not None}


def check_option(name: str, kind: str, value: Any, path: Path) -> None:
    valid = {
        "positive": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "names": isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
    }[kind]
    if not valid:
        wanted = {
            "positive": "an integer >= 1",
            "integer": "an integer",
            "boolean": "true or false",
            "names": "a split name or a list of them",
        }[kind]
        raise ArgumentError(f"evaluation ({path} or --set): {name} must be {wanted}, got {value!r}.")


def evaluation_flags(values: dict[str, Any]) -> list[str]:
    flags = []
    for name, value in values.items():
        if name in EVALUATE_SAMPLING:
            continue
        if EVALUATE_OPTIONS[name] == "boolean":
            flags += [f"--{name}"] if value else []
        elif EVALUATE_OPTIONS[name] == "names":
            flags += [f"--{name}", *([value] if isinstance(value, str) else value)]
        else:
            flags += [f"--{name}", str(value)]
    return flags


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ArgumentError(f"{path}: cannot read it ({error.strerror}).") from error
    except yaml.YAMLError as error:
        raise ArgumentError(f"{path}: not a valid YAML file: {error}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ArgumentError(f"{path}: expected a mapping, got {type(values).__name__}.")
    return values


# The paper's tables -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    key: str  # in paper_results.yaml
    title: str
    part: str  # of each split's results in results.json
    columns: tuple[tuple[str, str], ...]  # (header, results.json key)
    scale: float  # results.json value -> the printed figure


TABLES = (
    Table(
        "table_4",
        "Table 4: text response, per character (PPL; BLEU: the organisers' nltk corpus BLEU; BLEU and Dist in %)",
        "text",
        (
            ("PPL", "perplexity"),
            ("BLEU-2", "bleu-2"),
            ("BLEU-4", "bleu-4"),
            ("Dist-1", "dist-1"),
            ("Dist-2", "dist-2"),
        ),
        1.0,
    ),
    Table(
        "table_5",
        "Table 5: meme retrieval, in % (R10@k among the 10 official candidates, RT@5 among all memes)",
        "retrieval",
        (("R10@1", "R10@1"), ("R10@2", "R10@2"), ("R10@5", "R10@5"), ("RT@5", "RT@5")),
        100.0,
    ),
    Table("usage", "Meme usage, in %", "usage", (("accuracy", "accuracy"), ("F1", "f1")), 100.0),
    Table(
        "table_7",
        "Table 7: emotion of the used meme, in %",
        "emotion",
        (("top-1", "accuracy@1"), ("top-5", "accuracy@5")),
        100.0,
    ),
)
PAPER_KEYS = ("source", *(table.key for table in TABLES))


def load_paper_results(recipe: Path) -> dict[str, Any] | None:
    """The published figures (paper_results.yaml), checked: known tables and columns, numbers only."""
    path = recipe / PAPER_FILE
    if not path.is_file():
        return None
    paper = read_yaml_mapping(path)
    for key, rows in paper.items():
        if key not in PAPER_KEYS:
            raise ArgumentError(f"{path}: unknown table {key!r}; the tables are {', '.join(PAPER_KEYS[1:])}.")
        if key == "source":
            continue
        table = next(table for table in TABLES if table.key == key)
        headers = [header for header, _ in table.columns]
        if not isinstance(rows, dict) or not all(isinstance(cells, dict) for cells in rows.values()):
            raise ArgumentError(f"{path}: {key} must map each split to its figures ({{{headers[0]}: ..., ...}}).")
        for split, cells in rows.items():
            for header, value in cells.items():
                if header not in headers:
                    raise ArgumentError(
                        f"{path}: {key}, {split}: unknown column {header!r}; its columns are {headers}."
                    )
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ArgumentError(f"{path}: {key}, {split}, {header}: expected a number, got {value!r}.")
    return paper


def our_rows(table: Table, results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each scored split's results for a table; the hard test's retrieval as its seen and unseen memes, as
    evaluate_mod.py prints it."""
    rows = {}
    for split, result in results.items():
        if not result.get("annotated") or table.part not in result:
            continue
        part = result[table.part]
        if table.part == "retrieval" and "unseen" in part:
            rows[f"{split} (seen)"] = part.get("seen", {})
            rows[f"{split} (unseen)"] = part.get("unseen", {})
        else:
            rows[split] = part
    return rows


def format_ours(value: Any, scale: float) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value * scale:.2f}"


def print_paper_tables(results: dict[str, Any], paper: dict[str, Any] | None) -> None:
    """Tables 4, 5, meme usage and 7: for each split, the paper's row (where it gives one) and ours."""
    source = (paper or {}).get("source", "the paper")
    print(f"\nThe paper's rows ({source}) beside ours; -: a figure not given or not computed.")
    for table in TABLES:
        ours = our_rows(table, results)
        published = (paper or {}).get(table.key, {})
        splits = [*ours, *(split for split in published if split not in ours)]
        if not splits:
            continue
        width = max(len(split) for split in [*splits, "split"])
        print(f"\n{table.title}")
        print(f"{'split':<{width}}  {'':<6}" + "".join(f"{header:>9}" for header, _ in table.columns))
        for split in splits:
            rows = []
            if paper is not None:
                cells = published.get(split, {})
                rows.append(("paper", [f"{cells[h]:g}" if h in cells else "-" for h, _ in table.columns]))
            if split in ours:
                rows.append(("ours", [format_ours(ours[split].get(key), table.scale) for _, key in table.columns]))
            else:
                rows.append(("ours", ["-"] * len(table.columns)))
            for source_name, cells in rows:
                print(f"{split:<{width}}  {source_name:<6}" + "".join(f"{cell:>9}" for cell in cells))
    unscored = [split for split, result in results.items() if not result.get("annotated")]
    if unscored:
        print(f"\nNot scored (no gold answers in the dataset): {', '.join(unscored)}.")


# The plan -----------------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    folder: Path
    script: str
    arguments: list[str]
    action: str  # "run", "resume", "restart" or "skip"
    reason: str
    launcher: list[str] = field(default_factory=lambda: [sys.executable])
    env: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> list[str]:
        return [*self.launcher, str(REPO_ROOT / self.script), *self.arguments]


@dataclass
class Plan:
    root: Path
    stages: list[Stage]
    paper: dict[str, Any] | None
    record: dict[str, Any]  # what the evaluation is run with, written beside its results


def make_plan(options: argparse.Namespace) -> Plan:
    """Every check, before anything runs or is written; what each stage is to do."""
    recipe = Path(options.recipe)
    if not recipe.is_dir():
        raise ArgumentError(f"--recipe {options.recipe!r}: no such folder (such as recipes/mod_gpt).")
    root = Path(options.output_dir).resolve()
    check_root(root, options.output_dir)
    dataset = str(Path(options.dataset).resolve()) if looks_local(options.dataset) else options.dataset
    if looks_local(options.dataset) and not Path(dataset).is_dir():
        raise ArgumentError(
            f"--dataset {options.dataset!r}: no such folder (build one with `python -m mod_dataset build`)."
        )
    if options.num_processes is not None and options.num_processes < 1:
        raise ArgumentError(f"--num_processes must be at least 1, got {options.num_processes}.")
    # The recipe's files first (cheap), then the launcher, then each stage's folder and arguments.
    overrides = parse_overrides(options.set or [])
    recipe_values = {stage: training_values(recipe, stage, overrides) for stage in TRAINING_STAGES}
    evaluation_options = evaluation_values(recipe, overrides)
    paper = load_paper_results(recipe)
    launcher, env, imfe_launcher = launchers(options)

    stages = []
    for stage in TRAINING_STAGES:
        folder = root / stage
        given = {"dataset": dataset, "output_dir": str(folder), "task": stage}
        if stage == "cem":
            given["meme_encoder_checkpoint"] = str(root / "imfe" / IMFE_ENCODER_FILE)
        if stage == "mod":
            given["init_from"] = str(root / "cem")
        action, reason = stage_state(stage, folder)
        values = {**recipe_values[stage], **given}
        arguments = [*(f"--{name}={value}" for name, value in values.items()), *action_flags(action)]
        stage_launcher = imfe_launcher if stage == "imfe" else launcher
        stages.append(Stage(stage, folder, "train.py", arguments, action, reason, stage_launcher, env))
    check_stage_order(stages)
    for stage in stages:
        args = parse_training_arguments(stage.name, stage.arguments, recipe)
        if stage.action in ("skip", "resume"):
            check_recorded_arguments(stage, args, root)
        else:
            check_before_running(stage.name, args, root)

    evaluation = root / EVALUATION
    arguments = ["--model", str(root / "mod"), "--dataset", dataset, "--output", str(evaluation / RESULTS_FILE)]
    arguments += evaluation_flags(evaluation_options)
    record = {"arguments": arguments, "model": model_version(root / "mod")}
    trained_now = any(stage.action != "skip" for stage in stages)
    action, reason = evaluation_state(evaluation, record, trained_now)
    stages.append(Stage(EVALUATION, evaluation, "evaluate_mod.py", arguments, action, reason))
    return Plan(root, stages, paper, record)


def check_root(root: Path, given: str) -> None:
    """--output_dir: new, empty, or a recipe run's folder (it has the marker the runner leaves there)."""
    problem = why_not_writable(root, ROOT_MARKER, "the recipe runner", lambda folder: (folder / ROOT_MARKER).is_file())
    if problem:
        raise ArgumentError(
            f"--output_dir {given!r} {problem}: nothing was written. Give a new or empty folder, or the folder of an "
            "earlier run of this command to continue it."
        )


def stage_state(stage: str, folder: Path) -> tuple[str, str]:
    """What to do with a training stage's folder: run (new), skip (finished), resume or restart (interrupted)."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return "run", "new"
    if not folder.is_dir() or not is_training_run(folder):
        raise ArgumentError(
            f"{folder} is not a training run's folder (it has no {RUN_MARKER}): stage {stage} cannot write there. "
            "Move it away, or give another --output_dir."
        )
    final = folder / (IMFE_ENCODER_FILE if stage == "imfe" else "config.json")
    if final.is_file():
        return "skip", f"finished ({final.name} saved)"
    checkpoints = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name[11:].isdigit() and (p / CHECKPOINT_COMPLETE).is_file()),
        key=lambda p: int(p.name[11:]),
    )
    if stage != "imfe" and checkpoints:
        return "resume", f"interrupted: resuming from its newest complete checkpoint ({checkpoints[-1].name})"
    kept = "IMFE keeps no checkpoints" if stage == "imfe" else "it has no complete checkpoint"
    return "restart", f"interrupted before its final model was saved, and {kept}: starting it over"


def check_recorded_arguments(stage: Stage, args: TrainArguments, root: Path) -> None:
    """A stage is skipped or resumed only when it ran with the arguments the recipe now asks for."""
    recorded = json.loads((stage.folder / RUN_MARKER).read_text(encoding="utf-8"))["arguments"]
    planned = json.loads(json.dumps(asdict(args)))
    old_root = Path(str(recorded.get("output_dir", stage.folder))).parent
    changes = [
        f"{name}: {relative(recorded[name], old_root)!r} then, {relative(planned[name], root)!r} now"
        for name in sorted(planned.keys() & recorded.keys())
        if name not in RERUN_FREE and relative(recorded[name], old_root) != relative(planned[name], root)
    ]
    if changes:
        verb = "skip it as finished" if stage.action == "skip" else "resume it"
        raise ArgumentError(
            f"stage {stage.name}: {stage.folder} was trained with other arguments than the recipe now gives "
            f"({'; '.join(changes)}), so the runner will not {verb}. Give a new --output_dir, or move "
            f"{stage.folder} (and the stages after it) away to train it again."
        )


def relative(value: Any, root: Path) -> Any:
    """A path inside a run's --output_dir, written relative to it: a run folder moved as a whole is the same run."""
    if isinstance(value, str) and value.startswith(os.sep):
        try:
            return str(Path("<output_dir>") / Path(value).relative_to(root))
        except ValueError:
            return value
    return value


def check_stage_order(stages: list[Stage]) -> None:
    """A stage to skip or resume needs every stage before it finished: else it was trained from other inputs."""
    for index, later in enumerate(stages):
        if later.action not in ("skip", "resume"):
            continue
        for earlier in stages[:index]:
            if earlier.action != "skip":
                raise ArgumentError(
                    f"{later.folder} holds a run of stage {later.name}, but stage {earlier.name} before it is not "
                    f"finished ({earlier.reason}), so {later.name} would not follow from it. Move {later.folder} away "
                    f"to train it again after {earlier.name}, or give a new --output_dir."
                )


def check_before_running(stage: str, args: TrainArguments, root: Path) -> None:
    """train.py's own checks on a stage that will run, with its inputs from the stages before taken as given."""
    not_yet: dict[str, None] = {}
    if stage == "cem" and not Path(args.meme_encoder_checkpoint).is_file():
        not_yet["meme_encoder_checkpoint"] = None
    if stage == "mod" and not (root / "cem" / "config.json").is_file():
        not_yet["init_from"] = None
    try:
        check_arguments(dataclasses.replace(args, **not_yet))
    except ArgumentError as error:
        raise ArgumentError(f"stage {stage}: {error}") from error


def action_flags(action: str) -> list[str]:
    return {
        "resume": ["--resume_from_checkpoint=latest"],
        "restart": ["--overwrite_output_dir=true"],
    }.get(action, [])


def model_version(folder: Path) -> str | None:
    """Which save of a model folder is current: the hidden version folder its `.model` link points at."""
    try:
        return os.readlink(folder / MODEL_LINK)
    except OSError:
        return None


def evaluation_state(folder: Path, record: dict[str, Any], trained_now: bool) -> tuple[str, str]:
    if folder.exists() and not folder.is_dir():
        raise ArgumentError(f"{folder} is a file: the evaluation writes its results into a folder of that name.")
    if trained_now:
        return "run", "the MOD model is new"
    try:
        json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
        done = json.loads((folder / EVALUATION_RECORD).read_text(encoding="utf-8")) == record
    except (OSError, ValueError):
        done = False
    if done:
        return "skip", f"finished ({RESULTS_FILE} of this MOD model, with these options)"
    return "run", "not yet run on this MOD model with these options"


# Launching ----------------------------------------------------------------------------------------------------------


def launchers(options: argparse.Namespace) -> tuple[list[str], dict[str, str], list[str]]:
    """How the training stages start (and IMFE), and what they add to the environment; the config checked first."""
    count = options.num_processes
    if options.accelerate_config:
        kind, processes = check_accelerate_config(Path(options.accelerate_config), count)
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", options.accelerate_config]
        if count is not None:
            launcher += ["--num_processes", str(count)]
        if processes > 1:
            launcher += ["--main_process_port", str(free_port())]
        # IMFE trains a 5M-parameter CNN on a few hundred images: under FSDP or DeepSpeed it runs as one process.
        imfe = [sys.executable] if kind in ("FSDP", "DEEPSPEED") else launcher
        return launcher, {}, imfe
    if count is None or count == 1:
        return [sys.executable], {}, [sys.executable]
    gpus = gpu_count()
    if gpus and count > gpus:
        raise ArgumentError(f"--num_processes {count}: torch sees {gpus} GPU(s); give at most {gpus}.")
    # With no GPU, accelerate forms one run of the processes only when told to use the CPU (else each one trains
    # alone); the processes then talk over gloo.
    env = {} if gpus else {"ACCELERATE_USE_CPU": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(count)]
    return launcher, env, launcher


def check_accelerate_config(path: Path, count: int | None) -> tuple[str, int]:
    """An accelerate config that `accelerate launch` reads and that this machine can run; its kind and processes."""
    if not path.is_file():
        raise ArgumentError(f"--accelerate_config {str(path)!r}: no such file (see recipes/accelerate_configs/).")
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(str(path))
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as error:
        raise ArgumentError(f"--accelerate_config {str(path)!r}: not an accelerate config ({error}).") from error
    kind = getattr(config.distributed_type, "value", str(config.distributed_type))
    processes = count or config.num_processes
    if config.use_cpu and processes > 1:
        raise ArgumentError(
            f"--accelerate_config {str(path)!r} uses the CPU with {processes} processes: `accelerate launch` starts "
            "only one on CPUs (several through MPI alone). For several CPU processes give --num_processes "
            f"{processes} without --accelerate_config (torchrun, gloo)."
        )
    if kind in ("MULTI_GPU", "FSDP", "DEEPSPEED") and not config.use_cpu and not gpu_count():
        raise ArgumentError(
            f"--accelerate_config {str(path)!r} is for GPUs ({kind}) and torch sees none here: its processes would "
            "each train alone. accelerate runs FSDP and DeepSpeed on GPUs only; on CPUs give --num_processes N "
            "without --accelerate_config (data parallel over gloo)."
        )
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise ArgumentError(f"--accelerate_config {str(path)!r} needs DeepSpeed: pip install deepspeed.")
    return kind, processes


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Forwarder:
    """
    SIGTERM to the runner (a preempted job) goes on to the running stage, whose train.py then saves a checkpoint and
    stops. Ctrl-C reaches the stage from the terminal itself, so the runner only waits for it to end.
    """

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.stopped_by: int | None = None
        self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in self.previous:
            signal.signal(sig, self.handle)

    def handle(self, signum, frame) -> None:
        self.stopped_by = signum
        if self.process is None:
            raise KeyboardInterrupt
        if signum == signal.SIGTERM and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def release(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run_plan(plan: Plan) -> int:
    plan.root.mkdir(parents=True, exist_ok=True)
    marker = plan.root / ROOT_MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n", encoding="utf-8")
    forwarder = Forwarder()
    try:
        for stage in plan.stages:
            if stage.action == "skip":
                print(f"[recipe] {stage.name}: skipped, {stage.reason}", flush=True)
                continue
            status = run_stage(stage, forwarder, plan)
            if forwarder.stopped_by is not None:
                print(
                    f"[recipe] {stage.name}: stopped by {signal.Signals(forwarder.stopped_by).name} (its exit status "
                    f"{status}). Run the same command again to go on: finished stages are skipped, and this one "
                    "resumes from its newest complete checkpoint (or starts over where it has none).",
                    file=sys.stderr,
                )
                return 128 + forwarder.stopped_by
            if status != 0:
                print(
                    f"[recipe] {stage.name}: failed with exit status {status} (its messages are above). Once fixed, "
                    "run the same command again: finished stages are skipped.",
                    file=sys.stderr,
                )
                return status
    finally:
        forwarder.release()
    results_file = plan.root / EVALUATION / RESULTS_FILE
    print_paper_tables(json.loads(results_file.read_text(encoding="utf-8")), plan.paper)
    print(f"\nAll results: {results_file}")
    return 0


def run_stage(stage: Stage, forwarder: Forwarder, plan: Plan) -> int:
    print(f"[recipe] {stage.name}: {stage.action} ({stage.reason})", flush=True)
    print(f"[recipe] $ {shlex.join(stage.command)}", flush=True)
    started = time.monotonic()
    if stage.name == EVALUATION:
        stage.folder.mkdir(parents=True, exist_ok=True)
        (stage.folder / EVALUATION_RECORD).unlink(missing_ok=True)
    forwarder.process = subprocess.Popen(stage.command, env={**os.environ, **stage.env})
    status = forwarder.process.wait()
    forwarder.process = None
    if status == 0 and stage.name == EVALUATION:
        plan.record["model"] = model_version(plan.root / "mod")
        (stage.folder / EVALUATION_RECORD).write_text(json.dumps(plan.record, indent=2) + "\n", encoding="utf-8")
    print(f"[recipe] {stage.name}: exit status {status} after {time.monotonic() - started:.0f} s", flush=True)
    return status


# Command line -------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", required=True, help="The recipe folder, such as recipes/mod_gpt.")
    parser.add_argument("--dataset", required=True, help="A built MOD dataset folder (python -m mod_dataset build).")
    parser.add_argument(
        "--output_dir", required=True, help="Where each stage gets its folder: new, empty, or a run's."
    )
    parser.add_argument(
        "--accelerate_config",
        metavar="FILE",
        help="Launch the training stages with `accelerate launch --config_file FILE` (recipes/accelerate_configs/).",
    )
    parser.add_argument(
        "--num_processes",
        type=int,
        help="Training processes: with --accelerate_config, its number; alone, that many through torchrun (one per "
        "GPU, or CPU processes over gloo where there is no GPU).",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="[STAGE.]KEY=VALUE",
        help="Override an argument: KEY=VALUE in every training stage (imfe, cem, mod) where the runner does not set "
        "it, STAGE.KEY=VALUE in one (evaluate: evaluate_mod.py's options); VALUE null drops it. Repeatable.",
    )
    parser.add_argument("--dry_run", action="store_true", help="Check everything, print the plan, run nothing.")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        plan = make_plan(options)
    except ArgumentError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if options.dry_run:
        for stage in plan.stages:
            print(f"[recipe] {stage.name}: {stage.action} ({stage.reason})")
            if stage.action != "skip":
                print(f"[recipe] $ {shlex.join(stage.command)}")
        return 0
    try:
        return run_plan(plan)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted between stages; run the same command again to go on.", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
