"""Evaluate MOD-GPT as in the paper: Tables 4 (text), 5 (meme retrieval), usage accuracy and 7 (emotion).

    python evaluate_mod.py --model demo_output/model --dataset demo_output/data --output results.json
    python evaluate_mod.py --model ... --dataset ... --split hard_test --write_submission submission/

By default every test split of the dataset is evaluated (the validation split when it has none). Text replies are
sampled with the model's decoding (its generation config: the paper's nucleus 0.9, temperature 0.7) in padded batches
through `generate` with its KV cache; each reply's randomness is drawn from `--seed` and its instance's id alone, so
the figures do not depend on the batch size or the number of processes. Run through `accelerate launch
--num_processes N` (or torchrun), every view is shared out between the processes and gathered; the main process
prints the tables and writes the files. Table 4 shows the organisers' BLEU (nltk, per character, corpus level); the JSON
results also keep their sentence-averaged BLEU and sacrebleu's figures (see mod_metrics/mod_text). A split without gold
answers (the challenge's test release) is not scored: with --write_submission its predictions are written in the
release's layout, ready to submit, under the release's file names (`c_` for a Chinese dataset, `e_` for English, from
the dataset card's `language`), into a folder that is new, empty, or written by this script before (it holds the
marker file `.mod_submission.json`); any other folder is refused before the model loads and nothing in it changes.

`--model` is a saved MOD-GPT folder, or `hf://owner/name` for one on the hub. It is loaded with this package's own
model and processor classes; the code files saved with a model run only with `--trust_remote_code`. The rows loaded
are checked against the counts the dataset card declares, and every start-up check runs before the model loads.
"""

import argparse
import copy
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from huggingface_hub import DatasetCard
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mod_dataset import check_row_counts, expected_counts
from mod_dataset.release import TASK_SPLITS
from mod_metrics import load_metric
from mod_scoring import response_nll, usage_decisions
from modeling_mod_gpt import last_per_row
from output_folders import read_marker, why_not_writable
from pipeline_mod import (
    DTYPES,
    add_memes_from_table,
    device_argument,
    forward_dialogues,
    generate_texts,
    load_mod_gpt,
    load_mod_gpt_config,
    machine_accelerator,
    max_prompt_length,
    prompt_lengths,
)

TEST_SPLITS = ("easy_test", "hard_test")
FALLBACK_SPLIT = "validation"
VIEWS = ("response", "retrieval", "emotion")
RT_CUTOFF = 5  # RT@5: the gold meme among the 5 nearest of all memes
EMOTION_KS = (1, 5)  # Table 7 reports top-5 accuracy; clipped to the number of emotions the model predicts
# Each task file of a submission: the view its instances come from, and the prediction its answer holds.
TASK_PREDICTIONS = {
    "task1": ("response", "replies"),
    "task2": ("retrieval", "ranked"),
    "task3": ("emotion", "emotions"),
}
ANSWER_FIELDS = {"task1": "txt", "task2": "img_id", "task3": "emotion_id"}
# Left in every submission folder written, so that a later run may write there again and no other folder is touched.
SUBMISSION_MARKER = ".mod_submission.json"
WRITER = "evaluate_mod.py"
# The release's file name prefix by dataset language (the card's `language`), and the one taken when it is unknown.
RELEASE_PREFIXES = {"zh": "c", "en": "e"}
DEFAULT_RELEASE_PREFIX = "c"
# Padded tokens (rows x the longest prompt) of a prompt pass in reply generation: chosen on the base model on the CPU
# (BENCHMARKS.md, row 8), where shorter passes run faster per token and 256-512 did best.
MAX_BATCH_TOKENS = 512


def batched(rows: list, size: int, description: str):
    progress = tqdm(range(0, len(rows), size), desc=description, leave=False, disable=not is_main_process())
    for start in progress:
        yield rows[start : start + size]


def is_main_process() -> bool:
    return PartialState().is_main_process


def shared_out(work, rows: list) -> tuple[list, ...]:
    """
    `work(share)`, a tuple of lists in row order, run on this process's contiguous share of `rows`; each list
    gathered from every process, in process (so row) order, on every process. With one process, `work(rows)` itself.
    """
    with PartialState().split_between_processes(rows) as share:
        return tuple(gather_object(list(column)) for column in work(share))


def reply_turn(row: dict, text: str) -> dict:
    """The answering speaker's text turn that closes the history of `row`."""
    return {"speaker": row["speaker"], "text": text, "meme": None, "emotion": None}


def at_each_rows_last(inputs: dict, token_id: int, head_outputs: torch.Tensor) -> torch.Tensor:
    """The rows of a head's outputs (one per `token_id` token, in reading order) at each dialogue's last one."""
    return head_outputs[last_per_row(inputs["input_ids"] == token_id)]


# Table 4: text ------------------------------------------------------------------------------------------------------


def sampling_warpers(generation_config: GenerationConfig) -> LogitsProcessorList:
    """The temperature, top-k and top-p warpers of `generation_config` (an unset one does not warp)."""
    temperature, top_k, top_p = generation_config.temperature, generation_config.top_k, generation_config.top_p
    temperature, top_k, top_p = temperature or 1.0, top_k or 0, 1.0 if top_p is None else top_p
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def noise_seed(seed: int, instance: str, step: int) -> int:
    """A stable 64-bit seed for the noise of one instance's `step`-th generated token."""
    digest = hashlib.blake2b(f"{seed}\0{instance}\0{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class InstanceSampler(LogitsProcessor):
    """
    Sampling that depends only on the seed and the instance: the warped scores of each row plus Gumbel noise drawn
    from a generator seeded by (seed, the row's instance id, the step), for greedy decoding to take the argmax. The
    Gumbel-max trick makes that argmax an exact sample of the warped distribution, whatever batch the row is in. One
    sampler serves one `generate` call: the width of the prompt is that of the first call's `input_ids`.
    """

    def __init__(self, warpers: LogitsProcessorList, seed: int, instances: list[str]):
        self.warpers, self.seed, self.instances = warpers, seed, instances
        self.prompt_width: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_width is None:
            self.prompt_width = input_ids.shape[1]
        step = input_ids.shape[1] - self.prompt_width
        scores = self.warpers(input_ids, scores)
        uniform = torch.stack(
            [
                torch.rand(
                    scores.shape[-1],
                    generator=torch.Generator().manual_seed(noise_seed(self.seed, instance, step)),
                    dtype=torch.float64,
                )
                for instance in self.instances
            ]
        )
        gumbel = -torch.log(-torch.log(uniform))
        return scores + gumbel.to(scores.device, scores.dtype)


@torch.no_grad()
def generate_replies(
    model,
    processor,
    rows: list[dict],
    batch_size: int,
    max_new_tokens: int,
    seed: int,
    max_batch_tokens: int | None = MAX_BATCH_TOKENS,
) -> list[str]:
    """
    A reply sampled for each row with the model's generation config, its noise keyed by `seed` and the row's id, in
    the order of `rows`. Sorted by prompt length, the rows decode `batch_size` at a time, their prompts run in passes
    of at most `max_batch_tokens` padded tokens (None: one pass), so that little of either is padding; the LM head
    runs on the last prompt position only. Each batch runs `pipeline_mod.generate_texts`, as every front end does.
    """
    warpers = sampling_warpers(model.generation_config)
    greedy = copy.deepcopy(model.generation_config)  # the warpers and the noise do the sampling, in `InstanceSampler`
    greedy.update(do_sample=False, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
    lengths = prompt_lengths(model, processor, [row["history"] for row in rows], max_new_tokens)
    by_length = sorted(range(len(rows)), key=lengths.__getitem__)
    replies: list[str] = [""] * len(rows)
    for batch in batched(by_length, batch_size, "generation"):
        chunk = [rows[index] for index in batch]
        sampler = InstanceSampler(warpers, seed, [row["id"] for row in chunk])
        texts = generate_texts(
            model,
            processor,
            [row["history"] for row in chunk],
            max_prompt_tokens=max_batch_tokens,
            generation_config=greedy,
            logits_processor=LogitsProcessorList([sampler]),
        )
        for index, reply in zip(batch, texts):
            replies[index] = reply
    return replies


@torch.no_grad()
def gold_response_nll(model, processor, rows: list[dict], batch_size: int) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood and token count of each gold response (its text and [EOS])."""
    nll_sums, counts = [], []
    for chunk in batched(rows, batch_size, "perplexity"):
        dialogues = [row["history"] + [reply_turn(row, row["answer"])] for row in chunk]
        inputs, outputs = forward_dialogues(model, processor, dialogues, label_turns="last")
        nll, tokens = response_nll(outputs.logits, inputs["labels"])
        nll_sums += nll.tolist()
        counts += tokens.tolist()
    return nll_sums, counts


def text_scores(model, processor, rows: list[dict], replies: list[str], batch_size: int) -> dict[str, float]:
    nll_sums, counts = shared_out(lambda share: gold_response_nll(model, processor, share, batch_size), rows)
    references = [row["answer"] for row in rows]
    return load_metric("mod_text").compute(
        predictions=replies, references=references, nll_sums=nll_sums, token_counts=counts
    )


# Table 5: retrieval -------------------------------------------------------------------------------------------------


@torch.no_grad()
def reply_meme_predictions(model, processor, rows: list[dict], batch_size: int) -> torch.Tensor:
    """
    The meme feature predicted for each reply, read where training reads it: at the [TAG] closing the reply's text
    turn (an empty text for a meme-only reply), appended to the history.
    """
    predictions = []
    for chunk in batched(rows, batch_size, "retrieval"):
        dialogues = [row["history"] + [reply_turn(row, row["answer_text"] or "")] for row in chunk]
        inputs, outputs = forward_dialogues(model, processor, dialogues)
        predictions.append(at_each_rows_last(inputs, model.config.tag_token_id, outputs.meme_predictions))
    return torch.cat(predictions)


def rank_memes(model, processor, rows: list[dict], batch_size: int) -> tuple[list[list[str]], list[list[str]]]:
    """For each instance: its official candidates ranked, and the `RT_CUTOFF` nearest memes of the whole bank."""
    if not rows:  # a process's share of a view smaller than the number of processes
        return [], []
    predictions = reply_meme_predictions(model, processor, rows, batch_size)
    ranked = model.meme_bank.rank(predictions, [row["candidates"] for row in rows])
    nearest = model.meme_bank.rank(predictions, top_k=RT_CUTOFF)
    return [r.meme_ids for r in ranked], [r.meme_ids for r in nearest]


def retrieval_scores(
    rows: list[dict], ranked: list[list[str]], nearest: list[list[str]], seen: dict[str, bool]
) -> dict[str, Any]:
    gold = [row["answer"] for row in rows]
    groups = ["seen" if seen.get(meme, True) else "unseen" for meme in gold]
    metric = load_metric("mod_retrieval")
    scores = metric.compute(predictions=ranked, references=gold, ks=[1, 2, 5], prefix="R10", groups=groups)
    overall = metric.compute(predictions=nearest, references=gold, ks=[RT_CUTOFF], prefix="RT", groups=groups)
    return merge_scores(scores, overall)


def merge_scores(first: dict, second: dict) -> dict:
    """`first` with the scores of `second` that it lacks, group by group (so MAP stays the 10-candidate one)."""
    merged = dict(first)
    for key, value in second.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**value, **merged[key]}
        elif key not in merged:
            merged[key] = value
    return merged


# Usage and Table 7: emotion -----------------------------------------------------------------------------------------


def usage_scores(model, processor, dialogues: list[list[dict]], batch_size: int) -> dict[str, float]:
    """
    The usage decision at every [TAG] from each dialogue's second turn on, the turns the processor labels: the
    dataset's dialogues hold only turns whose meme use the release states. `count` says how many were scored.
    """
    predictions, references = shared_out(lambda share: usage_decided(model, processor, share, batch_size), dialogues)
    return load_metric("mod_usage").compute(predictions=predictions, references=references)


@torch.no_grad()
def usage_decided(model, processor, dialogues: list[list[dict]], batch_size: int) -> tuple[list[int], list[int]]:
    """The predicted and the labelled usage decision at each labelled [TAG] of `dialogues`, in reading order."""
    predictions, references = [], []
    for chunk in batched(dialogues, batch_size, "usage"):
        inputs, outputs = forward_dialogues(model, processor, chunk, label_turns="all")
        _, predicted, labelled = usage_decisions(
            inputs["input_ids"], inputs["usage_labels"], outputs.usage_logits, model.config.tag_token_id
        )
        predictions += predicted.tolist()
        references += labelled.tolist()
    return predictions, references


def emotion_ks(num_emotions: int) -> list[int]:
    """The cut-offs of Table 7 that a model predicting `num_emotions` emotions has."""
    return sorted({min(k, num_emotions) for k in EMOTION_KS})


@torch.no_grad()
def rank_emotions(model, processor, rows: list[dict], batch_size: int) -> list[list[int]]:
    """The most likely emotion ids of the meme in each history's last turn (as many as the largest cut-off)."""
    top_k = emotion_ks(model.config.num_emotions)[-1]
    ranked = []
    for chunk in batched(rows, batch_size, "emotion"):
        inputs, outputs = forward_dialogues(model, processor, [row["history"] for row in chunk])
        logits = at_each_rows_last(inputs, model.config.image_token_id, outputs.emotion_logits)
        ranked += logits.topk(top_k, dim=-1).indices.tolist()
    return ranked


def emotion_scores(rows: list[dict], ranked: list[list[int]], ks: list[int]) -> dict[str, Any]:
    references = [row["answer"] for row in rows]
    return {**load_metric("mod_emotion").compute(predictions=ranked, references=references, ks=ks), "ks": ks}


# One split: predictions, then scores --------------------------------------------------------------------------------


def predict(model, processor, views: dict[str, list[dict]], args) -> dict[str, list]:
    """
    What the submission files hold (replies, ranked candidates, ranked emotions), and the nearest memes: each view
    shared out between the processes, and gathered.
    """
    (replies,) = shared_out(
        lambda rows: (
            generate_replies(
                model, processor, rows, args.batch_size, args.max_new_tokens, args.seed, args.max_batch_tokens
            ),
        ),
        views["response"],
    )
    ranked, nearest = shared_out(lambda rows: rank_memes(model, processor, rows, args.batch_size), views["retrieval"])
    (emotions,) = shared_out(lambda rows: (rank_emotions(model, processor, rows, args.batch_size),), views["emotion"])
    return {"replies": replies, "ranked": ranked, "nearest": nearest, "emotions": emotions}


def score(model, processor, views: dict[str, list[dict]], predicted: dict, seen: dict, batch_size: int) -> dict:
    samples = [
        {"history": row["history"][-2:], "reference": row["answer"], "reply": reply}
        for row, reply in list(zip(views["response"], predicted["replies"]))[:3]
    ]
    return {
        "text": text_scores(model, processor, views["response"], predicted["replies"], batch_size),
        "retrieval": retrieval_scores(views["retrieval"], predicted["ranked"], predicted["nearest"], seen),
        "usage": usage_scores(model, processor, views["dialogues"], batch_size),
        "emotion": emotion_scores(views["emotion"], predicted["emotions"], emotion_ks(model.config.num_emotions)),
        "samples": samples,
    }


# Submission files ---------------------------------------------------------------------------------------------------


def release_turn(turn: dict) -> dict:
    """A turn in the organisers' format."""
    out = {"speaker_id": f"[{turn['speaker']}]"}
    if turn.get("text"):
        out["txt"] = turn["text"]
    if turn.get("meme") is not None:
        out["img_id"] = turn["meme"]
        if turn.get("emotion") is not None:
            out["emotion_id"] = turn["emotion"]
    return out


def release_history(row: dict) -> list[dict]:
    """The instance's history as the release lays it out: for task 2, the reply's text is its last turn."""
    history = [release_turn(turn) for turn in row["history"]]
    if row.get("answer_text") is not None:
        history.append(release_turn(reply_turn(row, row["answer_text"])))
    return history


def submission_instances(task: str, rows: list[dict], predictions: list) -> list[dict]:
    instances = []
    for row, prediction in zip(rows, predictions):
        speaker = f"[{row['speaker']}]"
        instance = {"history": release_history(row)}
        if task == "task2":  # the candidate set as given; the release's README asks for the ranking in the answer
            instance["candidate"] = {"speaker_id": speaker, "set": list(row["candidates"])}
        instance["answer"] = {"speaker_id": speaker, ANSWER_FIELDS[task]: prediction}
        instances.append(instance)
    return instances


def release_prefix(dataset: str) -> str:
    """The release's file name prefix for the dataset's language, read from a local folder's card (`language`)."""
    card = Path(dataset) / "README.md"
    languages = DatasetCard.load(card).data.language if card.is_file() else None
    languages = [languages] if isinstance(languages, str) else languages or []
    return next((RELEASE_PREFIXES[lang] for lang in languages if lang in RELEASE_PREFIXES), DEFAULT_RELEASE_PREFIX)


def check_submission_folder(folder: Path) -> None:
    """A submission folder must be new, empty, or one this script wrote before (it holds `SUBMISSION_MARKER`)."""
    problem = why_not_writable(folder, SUBMISSION_MARKER, WRITER, is_submission_folder)
    if problem:
        raise ValueError(
            f"--write_submission {str(folder)!r} {problem}: nothing was written. Give a new or empty folder."
        )


def check_output_file(path: Path, submission: str | None) -> None:
    """`--output` must be a file path in an existing folder, not the submission folder, and either new or a results
    file this script wrote before (a JSON object of splits, each with its `annotated` flag)."""
    problem = None
    if submission and path.resolve() == Path(submission).resolve():
        problem = "is also the --write_submission folder"
    elif path.is_dir():
        problem = "is a folder"
    elif not path.parent.is_dir():
        problem = f"is in {str(path.parent)!r}, which is not a folder"
    elif path.exists() and not is_results_file(path):
        problem = "exists and is not a results file of evaluate_mod.py"
    if problem:
        raise ValueError(f"--output {str(path)!r} {problem}: nothing was written. Give a new file path.")


def is_results_file(path: Path) -> bool:
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(results, dict) and all(
        isinstance(split, dict) and "annotated" in split for split in results.values()
    )


def is_submission_folder(folder: Path) -> bool:
    """Whether `folder` holds the marker file that `write_submission` leaves in the folders it writes."""
    return (read_marker(folder, SUBMISSION_MARKER) or {}).get("writer") == WRITER


def write_submission(
    folder: Path, split: str, views: dict[str, list[dict]], predicted: dict[str, list], prefix: str
) -> None:
    """
    The three task files of `split` under the release's own names (c_test_easy_task1.json, ...), answers filled, in
    a folder that `check_submission_folder` accepts; the folder's marker is written first.
    """
    check_submission_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUBMISSION_MARKER).write_text(json.dumps({"writer": WRITER}) + "\n", encoding="utf-8")
    for task, (view, predictions) in TASK_PREDICTIONS.items():
        instances = submission_instances(task, views[view], predicted[predictions])
        path = folder / f"{prefix}_{TASK_SPLITS[split]}_{task}.json"
        path.write_text(json.dumps(instances, ensure_ascii=False, indent=1), encoding="utf-8")


# Tables -------------------------------------------------------------------------------------------------------------


def print_table(title: str, header: list[str], rows: list[tuple[str, list[str]]]) -> None:
    width = max(len(name) for name, _ in [("split", []), *rows])
    print(f"\n{title}")
    print(f"{'split':<{width}} " + " ".join(f"{name:>8}" for name in header))
    for name, cells in rows:
        print(f"{name:<{width}} " + " ".join(f"{cell:>8}" for cell in cells))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def retrieval_rows(split: str, retrieval: dict) -> list[tuple[str, dict]]:
    """One row per split, or one per group of target memes where the split has unseen ones (the hard test)."""
    if "unseen" not in retrieval:
        return [(split, retrieval)]
    return [(f"{split} ({group})", retrieval.get(group, {})) for group in ("seen", "unseen")]


def print_tables(results: dict[str, dict]) -> None:
    for split, result in results.items():
        if not result["annotated"]:
            written = "--write_submission writes its predictions"
            if "submission" in result:
                written = f"its submission files are in {result['submission']}"
            print(f"\n{split}: no gold answers (a blank test release), so it is not scored; {written}.")
    scored = {split: result for split, result in results.items() if result["annotated"]}
    if not scored:
        return
    print_table(
        "Table 4: text response, per character (BLEU: the organisers' nltk corpus BLEU, method1 smoothing)",
        ["PPL", "BLEU-2", "BLEU-4", "Dist-1", "Dist-2"],
        [
            (split, [f"{r['text'][name]:.2f}" for name in ("perplexity", "bleu-2", "bleu-4", "dist-1", "dist-2")])
            for split, r in scored.items()
        ],
    )
    print_table(
        "Table 5: meme retrieval (R10@k over the official candidates, RT@5 over all memes), in %",
        ["R10@1", "R10@2", "R10@5", "RT@5", "MAP"],
        [
            (name, [percent(scores.get(key)) for key in ("R10@1", "R10@2", "R10@5", "RT@5", "MAP")])
            for split, r in scored.items()
            for name, scores in retrieval_rows(split, r["retrieval"])
        ],
    )
    print_table(
        "Meme usage (every response whose meme use the release states), in %",
        ["accuracy", "F1", "count"],
        [
            (split, [percent(r["usage"]["accuracy"]), percent(r["usage"]["f1"]), str(r["usage"]["count"])])
            for split, r in scored.items()
        ],
    )
    ks = next(iter(scored.values()))["emotion"]["ks"]
    print_table(
        "Table 7: emotion of the used meme, in %",
        [f"top-{k}" for k in ks],
        [(split, [percent(r["emotion"][f"accuracy@{k}"]) for k in ks]) for split, r in scored.items()],
    )


# Start-up checks and data -------------------------------------------------------------------------------------------


def load_configs(dataset: str) -> dict[str, datasets.DatasetDict]:
    """The configs evaluation reads, checked against the rows the dataset card declares (a local folder's card)."""
    expected = expected_counts(dataset)
    # Where the card declares the rows, `check_row_counts` compares them and names the config; datasets' own check
    # would raise from deep inside `load_dataset`, naming the split only.
    verification_mode = "no_checks" if expected else None
    names = (*VIEWS, "dialogues", "memes")
    configs = {name: datasets.load_dataset(dataset, name, verification_mode=verification_mode) for name in names}
    if expected:
        check_row_counts(dataset, configs)
    return configs


def choose_splits(requested: list[str] | None, configs: dict[str, datasets.DatasetDict], dataset: str) -> list[str]:
    """The requested splits, which the dataset must have; by default its test splits."""
    available = [split for split, rows in configs["response"].items() if len(rows)]
    if requested is None:
        return default_splits(available, dataset)
    missing = [split for split in requested if split not in available]
    if missing:
        raise ValueError(f"Split(s) {missing} are not in the dataset {dataset}, whose splits are {available}.")
    return requested


def default_splits(available: list[str], dataset: str) -> list[str]:
    """The test splits of the dataset, or its validation split (with a note) when it has none."""
    tests = [split for split in TEST_SPLITS if split in available]
    if tests:
        return tests
    if FALLBACK_SPLIT not in available:
        raise ValueError(
            f"The dataset {dataset} has neither test splits nor {FALLBACK_SPLIT!r}: its splits are {available}."
        )
    print(f"The dataset {dataset} has no test split: evaluating its {FALLBACK_SPLIT!r} split.")
    return [FALLBACK_SPLIT]


def is_annotated(configs: dict[str, datasets.DatasetDict], split: str) -> bool:
    """Whether the split has gold answers. Every answer is given (scored), or none (a blank release, not scored)."""
    answered = {}
    for view in VIEWS:
        if split not in configs[view] or not len(configs[view][split]):
            raise ValueError(f"split {split!r} has no instances in the {view!r} view.")
        rows = configs[view][split]
        blank = [row_id for row_id, answer in zip(rows["id"], rows["answer"]) if answer is None]
        if 0 < len(blank) < len(rows):
            raise ValueError(
                f"split {split!r}, view {view!r}: {len(blank)} of {len(rows)} rows have no answer (e.g. {blank[:3]}) "
                "while the others have one; a split must be fully annotated or fully blank."
            )
        answered[view] = not blank
    if len(set(answered.values())) > 1:
        raise ValueError(f"split {split!r}: some views have gold answers and others none ({answered}).")
    return all(answered.values())


def check_emotions(config, dataset_emotions: list[str]) -> None:
    """The model's emotion ids must mean what the dataset's mean."""
    model_emotions = config.emotion_names
    if model_emotions is None and config.num_emotions == len(dataset_emotions):
        return
    if model_emotions is None or list(model_emotions) != list(dataset_emotions):
        raise ValueError(
            f"The model's emotions (model.config.emotion_names = {model_emotions}, num_emotions = "
            f"{config.num_emotions}) differ from the dataset's (its emotion labels: {dataset_emotions})."
        )


def split_views(configs: dict[str, datasets.DatasetDict], split: str, limit: int | None) -> dict[str, list[dict]]:
    def rows(name: str) -> datasets.Dataset:
        dataset = configs[name][split]
        return dataset.select(range(min(limit, len(dataset)))) if limit else dataset

    views = {name: rows(name).to_list() for name in VIEWS}
    views["dialogues"] = [row["turns"] for row in rows("dialogues")]
    return views


def load_model(model_name: str, config, memes: datasets.Dataset, trust_remote_code: bool = False):
    """The model and processor, with the dataset's memes added to the bank (unseen ones become candidates too)."""
    model, processor = load_mod_gpt(model_name, trust_remote_code, config=config)
    add_memes_from_table(model, memes, processor.image_processor)
    return model, processor


@dataclass
class Setup:
    """What evaluation works with, once every start-up check has passed."""

    configs: dict[str, datasets.DatasetDict]
    annotated: dict[str, bool]  # for each split to evaluate, whether it has gold answers
    model: Any
    processor: Any
    memes: datasets.Dataset


def check_and_load(args) -> Setup:
    """Everything that can fail before evaluating, cheapest first: the data and its checks, the model's config, the
    model."""
    configs = load_configs(args.dataset)
    splits = choose_splits(args.split, configs, args.dataset)
    annotated = {split: is_annotated(configs, split) for split in splits}
    if args.write_submission and any(split not in TASK_SPLITS for split in splits):
        raise ValueError(f"--write_submission: the release has task files for the splits {list(TASK_SPLITS)} only.")
    if args.write_submission:
        check_submission_folder(Path(args.write_submission))
    if args.output:
        check_output_file(Path(args.output), args.write_submission)
    config = load_mod_gpt_config(args.model, args.trust_remote_code)
    check_emotions(config, configs["emotion"][splits[0]].features["answer"].names)
    memes = next(iter(configs["memes"].values()))
    model, processor = load_model(args.model, config, memes, args.trust_remote_code)
    max_prompt_length(model, processor, args.max_new_tokens)  # a ValueError if no prompt fits
    model.to(evaluation_device(args.device), DTYPES[args.dtype])
    return Setup(configs, annotated, model, processor, memes)


def evaluate(args, setup: Setup) -> dict[str, dict]:
    model, processor = setup.model, setup.processor
    seen = dict(zip(setup.memes["meme_id"], setup.memes["seen"]))
    prefix = release_prefix(args.dataset)
    results = {}
    for split, annotated in setup.annotated.items():
        results[split] = {"annotated": annotated}
        if not annotated and not args.write_submission:
            continue  # nothing to score, nothing to write
        views = split_views(setup.configs, split, args.limit)
        predicted = predict(model, processor, views, args)
        if args.write_submission and is_main_process():
            write_submission(Path(args.write_submission), split, views, predicted, prefix)
            results[split]["submission"] = args.write_submission
        if annotated:
            results[split].update(score(model, processor, views, predicted, seen, args.batch_size))
    return results


def start_processes(device: torch.device | None) -> PartialState:
    """
    accelerate's state of this run's processes (one, or those that `accelerate launch` or torchrun started): CPU
    processes where asked (`--device cpu`, or ACCELERATE_USE_CPU as `accelerate launch --cpu` sets) or where the
    machine has no accelerator.
    """
    no_accelerator = machine_accelerator() is None
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or no_accelerator or (device is not None and device.type == "cpu")
    return PartialState(cpu=cpu)


def evaluation_device(requested: torch.device | None) -> torch.device:
    """The device asked for, else accelerate's: each process's own (its accelerator when there is one, else CPU)."""
    own = PartialState().device
    if requested is None or (requested.type == own.type and requested.index is None):
        return own
    return requested


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evaluate_mod.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="A saved MOD-GPT folder, or hf://owner/name on the hub.")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="Load the model with the code files saved in its folder."
    )
    parser.add_argument("--dataset", required=True, help="A built MOD dataset folder or hub id.")
    parser.add_argument("--split", nargs="+", help="Splits to evaluate (default: the dataset's test splits).")
    parser.add_argument("--output", help="Write the results as JSON here.")
    parser.add_argument(
        "--write_submission",
        "--write-submission",
        metavar="FOLDER",
        help="Write DSTC10 task 1/2/3 files into this folder: new, empty, or written by this script before.",
    )
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=32,
        help="Rows a batch holds; in reply generation, the rows that decode together (in order of prompt length).",
    )
    parser.add_argument(
        "--max_batch_tokens",
        type=positive_int,
        default=MAX_BATCH_TOKENS,
        help="Reply generation runs a batch's prompts in passes of at most this many padded tokens (rows x the "
        "longest; a longer prompt runs alone), before the batch decodes together.",
    )
    parser.add_argument("--max_new_tokens", type=positive_int, default=32)
    parser.add_argument("--limit", type=positive_int, help="Evaluate only the first N instances of each view.")
    parser.add_argument("--seed", type=int, default=0, help="Seeds each reply's sampling, with its instance's id.")
    parser.add_argument(
        "--device",
        type=device_argument,
        help="Where the model runs (default: the accelerator when there is one, else cpu; with several processes, "
        "each process's own).",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="The model's weights and compute.")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    start_processes(args.device)
    try:
        setup = check_and_load(args)
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    results = evaluate(args, setup)
    if not is_main_process():
        return 0
    print_tables(results)
    if args.output:
        Path(args.output).write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
