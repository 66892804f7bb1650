"""Reading and checking the official MOD release (DSTC10 Track 1): every problem is collected with where it is."""

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image

SPEAKERS = ("[speaker1]", "[speaker2]")
TASKS = ("task1", "task2", "task3")
# The field of a task's answer that holds the gold; a blank one ("" or null) marks an unannotated test release.
ANSWER_FIELDS = {"task1": "txt", "task2": "img_id", "task3": "emotion_id"}
# The task -> the config (view) of the built dataset that holds its instances.
TASK_VIEWS = {"task1": "response", "task2": "retrieval", "task3": "emotion"}
SPLITS = ("train", "validation", "easy_test", "hard_test")
# The split of the built dataset -> the part of the release's file names that names it.
DIALOGUE_SPLITS = {"train": "train", "validation": "val"}
TASK_SPLITS = {"validation": "val", "easy_test": "test_easy", "hard_test": "test_hard"}
# The JSON kinds a field may be required to hold, in JSON's words. Meme ids are strings everywhere: the official ids
# are zero-padded ("042"), so a number (42) could stand for "042" or "42"; it is reported rather than guessed.
KINDS = {str: "a string", int: "an integer", list: "a list", dict: "an object"}
FEATURE_LIMIT = float(np.finfo(np.float32).max)  # the built feature column is float32


class InvalidReleaseError(ValueError):
    """The release has problems; the message lists each with its file and dialogue id or instance index."""

    def __init__(self, problems: list["Problem"]):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} problem(s) in the release:\n{lines}")


@dataclass(frozen=True)
class Problem:
    file: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}, {self.where}: {self.message}" if self.where else f"{self.file}: {self.message}"


@dataclass
class Release:
    """The parts of a release, as read, with the problems found in them."""

    root: Path
    prefix: str
    emotions: list[str] = field(default_factory=list)
    meme_files: dict[str, str] = field(default_factory=dict)  # meme id -> image file name
    listed_memes: set[str] = field(default_factory=set)  # every meme id of img2id.json, usable or not
    features: dict[str, list[float]] | None = None
    dialogues: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # split -> id -> turns
    tasks: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # split -> task -> instances
    blank_tasks: dict[str, list[str]] = field(default_factory=dict)  # split -> tasks whose answers are all blank
    missing_files: list[str] = field(default_factory=list)  # dialogue and task files the release does not have
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)

    def problem(self, file: str, where: str, message: str) -> None:
        self.problems.append(Problem(file, where, message))

    def expect(self, file: str, where: str, name: str, value: Any, kind: type) -> bool:
        """Report `name` unless `value` is of the JSON `kind` (`str`, `int`, `list` or `dict`; a bool is no
        integer); return whether it is."""
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            self.problem(file, where, f"{name} must be {KINDS[kind]} (got {describe(value)})")
        return ok


def describe(value: Any) -> str:
    """A JSON value as a message shows it: its kind, and a scalar's (shortened) value."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (list, dict)):
        return KINDS[type(value)]
    text = repr(value)
    text = text if len(text) <= 40 else f"{text[:37]}..."
    return f"the {'string' if isinstance(value, str) else 'number'} {text}"


def load_json(release: Release, name: str, required: bool = True) -> Any:
    """A JSON file of the release; duplicate object keys are reported, as are missing and malformed files."""
    path = release.root / name
    if not path.exists():
        if required:
            release.problem(name, "", "required file is missing")
        return None

    def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                release.problem(name, f"id {key!r}", "duplicate id")
            seen[key] = value
        return seen

    try:
        content = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=reject_duplicates)
        if content is None:
            release.problem(name, "", "the file holds null")
        return content
    except json.JSONDecodeError as error:
        release.problem(name, f"line {error.lineno}, column {error.colno}", f"malformed JSON ({error.msg})")
    except UnicodeDecodeError as error:
        release.problem(name, "", f"not UTF-8 text ({error.reason})")
    except RecursionError:
        release.problem(name, "", "malformed JSON (nested too deeply to read)")
    except ValueError as error:  # a number too long to convert
        release.problem(name, "", f"malformed JSON ({error})")
    except OSError as error:
        release.problem(name, "", f"cannot be read ({error.strerror})")
    return None


def check_turns(release: Release, file: str, where: str, turns: Any, name: str = "a dialogue") -> bool:
    """Check one list of turns (`name`: a dialogue, or an instance's history); report each problem; return whether
    the turns are usable."""
    if not isinstance(turns, list) or not turns:
        release.problem(file, where, f"{name} must be a non-empty list of turns (got {describe(turns)})")
        return False
    ok = True
    for index, turn in enumerate(turns):
        ok &= check_turn(release, file, f"{where}, turn {index}", turn)
    return ok


def check_turn(release: Release, file: str, where: str, turn: Any, needs_text_or_meme: bool = True) -> bool:
    if not isinstance(turn, dict):
        release.problem(file, where, f"a turn must be an object (got {describe(turn)})")
        return False
    problems_before = len(release.problems)
    if "speaker_id" not in turn:
        release.problem(file, where, "turn has no speaker_id")
    elif turn["speaker_id"] not in SPEAKERS:
        release.problem(file, where, f"speaker_id must be one of {SPEAKERS} (got {describe(turn['speaker_id'])})")
    if "img_id" in turn and release.expect(file, where, "img_id (a meme id such as '042')", turn["img_id"], str):
        meme = turn["img_id"]
        if meme in release.listed_memes and meme not in release.meme_files:
            release.problem(file, where, f"img_id {meme!r} is unusable (see the problem of meme {meme!r})")
        elif meme not in release.meme_files:
            release.problem(file, where, f"img_id {meme!r} is not in img2id.json")
    if "img_id" in turn and turn.get("emotion_id") is not None:
        emotion = turn["emotion_id"]
        if release.expect(file, where, "emotion_id", emotion, int) and not is_emotion(release, emotion):
            release.problem(file, where, f"emotion_id {emotion!r} is not an id of emotion_dict.json")
    if turn.get("txt") is not None:
        release.expect(file, where, "txt", turn["txt"], str)
    if needs_text_or_meme and not turn.get("txt") and "img_id" not in turn:
        release.problem(file, where, "turn has neither txt nor img_id")
    return len(release.problems) == problems_before


def is_emotion(release: Release, emotion: Any) -> bool:
    return isinstance(emotion, int) and not isinstance(emotion, bool) and 0 <= emotion < len(release.emotions)


def read_memes(release: Release) -> None:
    """`emotion_dict.json`, `img2id.json` and the images of `meme_set/`, each decoded once to prove it is whole."""
    read_emotions(release)
    img2id = load_json(release, "img2id.json")
    if img2id is None or not release.expect("img2id.json", "", "the file (image name -> meme id)", img2id, dict):
        return
    if not (release.root / "meme_set").is_dir():
        release.problem("meme_set/", "", "the folder of meme images is missing")
        return
    for file_name, meme_id in img2id.items():
        if not release.expect("img2id.json", f"entry {file_name!r}", "the meme id (such as '042')", meme_id, str):
            continue
        release.listed_memes.add(meme_id)
        if meme_id in release.meme_files:
            release.problem("img2id.json", f"meme {meme_id!r}", "duplicate meme id")
            continue
        try:
            path = image_path(release.root, file_name)
        except ValueError as error:
            release.problem("img2id.json", f"meme {meme_id!r} (entry {file_name!r})", str(error))
            continue
        problem = image_problem(path)
        if problem:
            release.problem(f"meme_set/{file_name}", f"meme {meme_id!r}", problem)
            continue
        release.meme_files[meme_id] = file_name
    read_features(release)


def read_emotions(release: Release) -> None:
    """`emotion_dict.json`: emotion name -> id, the ids being 0, 1, ..., n-1."""
    emotion_dict = load_json(release, "emotion_dict.json")
    if emotion_dict is None or not release.expect(
        "emotion_dict.json", "", "the file (name -> id)", emotion_dict, dict
    ):
        return
    checks = [release.expect("emotion_dict.json", f"emotion {n!r}", "its id", i, int) for n, i in emotion_dict.items()]
    if not all(checks):
        return
    by_id = sorted(emotion_dict.items(), key=lambda item: item[1])
    if [emotion_id for _, emotion_id in by_id] != list(range(len(by_id))):
        release.problem("emotion_dict.json", "", "emotion ids must be 0, 1, ..., n-1")
    release.emotions = [name for name, _ in by_id]


def image_path(root: Path, file_name: str) -> Path:
    """The image of an img2id.json entry, in the release's `meme_set/`. Nothing from outside the release may end up
    in the built dataset (or on the hub): a name that leaves `meme_set/` (absolute, or with '..'), or a link that
    leads out of the release, raises `ValueError`."""
    name = PurePath(file_name)
    if name.is_absolute() or ".." in name.parts:
        raise ValueError("the image must be named relative to meme_set/, without '..'")
    path = root / "meme_set" / name
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a loop of links (Python < 3.13)
        raise ValueError(f"the image's path cannot be resolved ({error})") from error
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"the image is a link to {resolved}, outside the release")
    return path


def image_problem(path: Path) -> str | None:
    try:
        if not path.is_file():
            return "image file is missing"
    except OSError as error:  # e.g. a file name too long for the file system
        return f"image file cannot be read ({error.strerror})"
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # noqa: BLE001 - PIL raises many kinds of errors for broken files
        return f"image cannot be decoded ({type(error).__name__}: {error})"
    return None


def read_features(release: Release) -> None:
    """`id2feature.json`, when the release has it: one vector of numbers per meme, all of one length. A meme whose
    vector is malformed is reported and left unusable, like a meme whose image is broken; a meme without a vector
    keeps `feature` None (training on the release's features then names it)."""
    content = load_json(release, "id2feature.json", required=False)
    if content is None:
        return
    if not release.expect("id2feature.json", "", "the file (meme id -> feature vector)", content, dict):
        return
    vectors = {meme: content[meme] for meme in release.meme_files if meme in content}
    sizes = Counter(len(v) for v in vectors.values() if is_vector(v))
    size = sizes.most_common(1)[0][0] if sizes else None
    for meme, vector in vectors.items():
        if not is_vector(vector):
            problem = f"the feature must be a non-empty list of numbers that a float32 holds (got {describe(vector)})"
        elif len(vector) != size:
            problem = f"the feature has {len(vector)} numbers, the other memes' {size}"
        else:
            continue
        release.problem("id2feature.json", f"meme {meme!r}", problem)
        del release.meme_files[meme]
    release.features = {meme: [float(x) for x in content[meme]] for meme in release.meme_files if meme in content}


def is_vector(value: Any) -> bool:
    """A non-empty list of numbers, each finite and within float32's range (a bool is no number)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= FEATURE_LIMIT for x in value)
    )


def read_optional(release: Release, name: str) -> Any:
    """A dialogue or task file: each may be missing (the split is then built from what the release has)."""
    if not (release.root / name).exists():
        release.missing_files.append(name)
        return None
    return load_json(release, name)


def read_dialogues(release: Release, split: str, name: str, skip_invalid: bool) -> None:
    content = read_optional(release, name)
    if content is None:
        return
    if not release.expect(name, "", "the file (dialogue id -> turns)", content, dict):
        return
    kept = {}
    for dialogue_id, turns in content.items():
        before = len(release.problems)
        if check_turns(release, name, f"dialogue {dialogue_id!r}", turns):
            kept[dialogue_id] = turns
        elif skip_invalid:
            release.skipped += release.problems[before:]
            del release.problems[before:]
    release.dialogues[split] = kept


def read_task(release: Release, split: str, task: str, name: str, skip_invalid: bool) -> None:
    content = read_optional(release, name)
    if content is None:
        return
    if not release.expect(name, "", "a task file", content, list):
        return
    kept = {}
    for index, instance in enumerate(content):
        before = len(release.problems)
        if check_instance(release, name, f"instance {index}", task, instance):
            kept[index] = instance
        elif skip_invalid:
            release.skipped += release.problems[before:]
            del release.problems[before:]
    if check_blank_answers(release, name, task, kept):
        release.blank_tasks.setdefault(split, []).append(task)
    release.tasks.setdefault(split, {})[task] = list(kept.values())


def is_blank(task: str, answer: dict) -> bool:
    """Whether the answer's gold field is there but empty, as in the challenge's test release."""
    field_name = ANSWER_FIELDS[task]
    return field_name in answer and answer[field_name] in ("", None)


def check_blank_answers(release: Release, name: str, task: str, instances: dict[int, dict]) -> bool:
    """Whether the file's answers are all blank; a file mixing blank and annotated answers is a problem."""
    blank = [index for index, instance in instances.items() if is_blank(task, instance["answer"])]
    if not blank or len(blank) == len(instances):
        return bool(blank)
    annotated = [index for index in instances if index not in set(blank)]
    fewer, kind, other = (
        (blank, "blank", "annotated") if len(blank) <= len(annotated) else (annotated, "annotated", "blank")
    )
    shown = ", ".join(map(str, fewer[:5])) + (", ..." if len(fewer) > 5 else "")
    release.problem(
        name,
        "",
        f"{len(fewer)} of {len(instances)} answers are {kind} (instance {shown}), the others {other}: "
        "a task file must be all blank (unannotated) or all annotated",
    )
    return False


def check_instance(release: Release, file: str, where: str, task: str, instance: Any) -> bool:
    if not release.expect(file, where, "an instance", instance, dict) or not release.expect(
        file, f"{where}, answer", "the answer", instance.get("answer"), dict
    ):
        return False
    answer, blank = instance["answer"], is_blank(task, instance["answer"])
    ok = check_turns(release, file, where, instance.get("history"), "its history")
    given = {key: value for key, value in answer.items() if not (blank and key == ANSWER_FIELDS[task])}
    ok &= check_turn(release, file, f"{where}, answer", given, needs_text_or_meme=False)
    if not blank:
        ok &= check_gold(release, file, f"{where}, answer", task, answer)
    if task == "task2":
        ok &= check_candidates(release, file, where, instance, None if blank else answer.get("img_id"))
    if task == "task3" and ok and "img_id" not in instance["history"][-1]:
        release.problem(
            file, f"{where}, turn {len(instance['history']) - 1}", "a task3 history must end with the meme"
        )
        ok = False
    return ok


def check_gold(release: Release, file: str, where: str, task: str, answer: dict) -> bool:
    if task == "task1" and not isinstance(answer.get("txt"), str):
        release.problem(file, where, "a task1 answer needs its txt")
        return False
    if task == "task2" and "img_id" not in answer:
        release.problem(file, where, "a task2 answer needs its img_id")
        return False
    if task == "task3" and not is_emotion(release, answer.get("emotion_id")):
        release.problem(file, where, "a task3 answer needs its emotion_id, an id of emotion_dict.json")
        return False
    return True


def check_candidates(release: Release, file: str, where: str, instance: dict, gold: str | None) -> bool:
    candidate = instance.get("candidate")
    candidates = candidate.get("set") if isinstance(candidate, dict) else None
    if not isinstance(candidates, list) or not candidates:
        got = f"{describe(candidates)} as candidate.set" if isinstance(candidate, dict) else describe(candidate)
        release.problem(file, where, f"a task2 instance needs candidate.set, a list of meme ids (got {got})")
        return False
    if not all(
        release.expect(file, f"{where}, candidate.set[{i}]", "a meme id", m, str) for i, m in enumerate(candidates)
    ):
        return False
    unknown = [meme for meme in candidates if meme not in release.meme_files]
    if unknown:
        release.problem(file, where, f"candidate meme(s) {unknown} are not in img2id.json or are unusable")
        return False
    if gold is not None and gold not in candidates:
        release.problem(file, where, f"answer meme {gold!r} is not among its candidates")
        return False
    return True


def check_task_sets(release: Release) -> None:
    """A split's three task files come together: one that is there without the others is a problem."""
    for stem in TASK_SPLITS.values():
        names = [f"{release.prefix}_{stem}_{task}.json" for task in TASKS]
        missing = [name for name in names if name in release.missing_files]
        present = [name for name in names if name not in missing]
        if missing and present:
            there = f"{' and '.join(present)} {'is' if len(present) == 1 else 'are'} there"
            for name in missing:
                release.problem(name, "", f"missing, while {there}: a split's task files come as a set of three")


def read_release(root: Path, language: str = "zh", skip_invalid: bool = False) -> Release:
    """Read every part of the release at `root`; raise `InvalidReleaseError` listing all problems found."""
    if not root.is_dir():
        raise InvalidReleaseError([Problem(str(root), "", "the release folder does not exist")])
    release = Release(root=root, prefix={"zh": "c", "en": "e"}[language])
    read_memes(release)
    per_meme = [p for p in release.problems if p.where.startswith("meme ")]
    if skip_invalid:  # unusable memes are left out; the turns that use them are then skipped too
        release.skipped += per_meme
        release.problems = [p for p in release.problems if p not in per_meme]
    # Without emotion_dict.json, img2id.json or meme_set/, every turn would be reported: stop here. A few unusable
    # memes do not stop the reading, so that the error lists the problems of the dialogues and tasks as well.
    if any(p not in per_meme for p in release.problems):
        raise InvalidReleaseError(release.problems)
    for split, stem in DIALOGUE_SPLITS.items():
        read_dialogues(release, split, f"{release.prefix}_{stem}.json", skip_invalid)
    for split, stem in TASK_SPLITS.items():
        for task in TASKS:
            read_task(release, split, task, f"{release.prefix}_{stem}_{task}.json", skip_invalid)
    check_task_sets(release)
    if not release.dialogues and not release.tasks and not release.problems:
        release.problem(str(root), "", f"no split to build: none of {', '.join(release.missing_files)} is there")
    if release.problems:
        raise InvalidReleaseError(release.problems)
    return release


def count_reasons(problems: Iterable[Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for problem in problems:
        reason = problem.message.split(" (")[0]
        counts[reason] = counts.get(reason, 0) + 1
    return counts
