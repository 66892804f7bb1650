"""Evaluate MOD-GPT as in the paper: Tables 4 (text), 5 (meme retrieval), usage accuracy and 7 (emotion).

    python evaluate_mod.py --model demo_output/model --dataset demo_output/data --output results.json
    python evaluate_mod.py --model ... --dataset ... --split hard_test --write-submission submission/

Text replies are sampled with the paper's decoding (nucleus 0.9, temperature 0.7) from a fixed seed, in padded
batches through `generate` with its KV cache.
"""

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModel, AutoProcessor

from metrics import load_metric
from mod_dataset.release import TASK_SPLITS
from modeling_mod_gpt import DIALOGUE_INPUTS, last_per_row

SPLITS = ("easy_test", "hard_test")
RT_CUTOFF = 5  # RT@5: the gold meme among the 5 nearest of all memes
IGNORE_INDEX = -100


def batched(rows: list, size: int, description: str):
    for start in tqdm(range(0, len(rows), size), desc=description, leave=False):
        yield rows[start : start + size]


def answer_turn(row: dict, **content: Any) -> dict:
    turn = {"speaker": row["speaker"], "text": None, "meme": None, "emotion": None}
    turn.update(content)
    return turn


# Table 4: text ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def response_nll(model, processor, rows: list[dict], batch_size: int) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood and token count of each gold response (its text and [EOS])."""
    nll_sums, counts = [], []
    for chunk in batched(rows, batch_size, "perplexity"):
        dialogues = [row["history"] + [answer_turn(row, text=row["answer"])] for row in chunk]
        inputs, outputs = model.run_dialogues(processor, dialogues, label_turns="last")
        targets = inputs["labels"][:, 1:]
        nll = F.cross_entropy(
            outputs.logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        nll_sums += nll.sum(1).tolist()
        counts += (targets != IGNORE_INDEX).sum(1).tolist()
    return nll_sums, counts


@torch.no_grad()
def generate_replies(model, processor, rows: list[dict], batch_size: int, **generate_kwargs) -> list[str]:
    replies = []
    for chunk in batched(rows, batch_size, "generation"):
        prompt = model.dialogue_inputs(processor, [row["history"] for row in chunk], add_generation_prompt=True)
        generated = model.generate(**{key: prompt[key] for key in DIALOGUE_INPUTS}, **generate_kwargs)
        replies += processor.decode_replies(generated[:, prompt["input_ids"].shape[1] :])
    return replies


def text_table(model, processor, rows: list[dict], args) -> tuple[dict[str, float], list[str]]:
    nll_sums, counts = response_nll(model, processor, rows, args.batch_size)
    torch.manual_seed(args.seed)
    replies = generate_replies(
        model,
        processor,
        rows,
        args.batch_size,
        do_sample=True,
        top_p=0.9,
        temperature=0.7,
        max_new_tokens=args.max_new_tokens,
    )
    scores = load_metric("mod_text").compute(
        predictions=replies, references=[row["answer"] for row in rows], nll_sums=nll_sums, token_counts=counts
    )
    return scores, replies


# Table 5: retrieval -------------------------------------------------------------------------------------------------


@torch.no_grad()
def rank_memes(model, processor, rows: list[dict], batch_size: int) -> tuple[list[list[str]], list[list[str]]]:
    """For each instance: its official candidates ranked, and the `RT_CUTOFF` nearest memes of the whole bank."""
    ranked_candidates, ranked_all = [], []
    for chunk in batched(rows, batch_size, "retrieval"):
        # A meme-only answer is read at the [TAG] closing its empty text, as `respond` does for a reply.
        dialogues = [row["history"] + [answer_turn(row, text=row["answer_text"] or "")] for row in chunk]
        inputs, outputs = model.run_dialogues(processor, dialogues)
        predictions = outputs.meme_predictions[last_per_row(inputs["input_ids"] == model.config.tag_token_id)]
        ranked_candidates += [
            r.meme_ids for r in model.retrieve_memes(predictions, [row["candidates"] for row in chunk])
        ]
        ranked_all += [r.meme_ids for r in model.retrieve_memes(predictions, top_k=RT_CUTOFF)]
    return ranked_candidates, ranked_all


def retrieval_table(model, processor, rows: list[dict], seen: dict[str, bool], batch_size: int) -> dict[str, Any]:
    ranked_candidates, ranked_all = rank_memes(model, processor, rows, batch_size)
    gold = [row["answer"] for row in rows]
    groups = ["seen" if seen.get(meme, True) else "unseen" for meme in gold]
    metric = load_metric("mod_retrieval")
    scores = metric.compute(predictions=ranked_candidates, references=gold, ks=[1, 2, 5], prefix="R10", groups=groups)
    overall = metric.compute(predictions=ranked_all, references=gold, ks=[RT_CUTOFF], prefix="RT", groups=groups)
    return merge_scores(scores, overall), ranked_candidates


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


@torch.no_grad()
def usage_scores(model, processor, dialogues: list[list[dict]], batch_size: int) -> dict[str, float]:
    predictions, references = [], []
    for chunk in batched(dialogues, batch_size, "usage"):
        inputs, outputs = model.run_dialogues(processor, chunk)
        labels = inputs["usage_labels"][inputs["input_ids"] == model.config.tag_token_id]
        labelled = labels != IGNORE_INDEX
        predictions += outputs.usage_logits.argmax(-1)[labelled].tolist()
        references += labels[labelled].tolist()
    return load_metric("mod_usage").compute(predictions=predictions, references=references)


@torch.no_grad()
def emotion_table(model, processor, rows: list[dict], batch_size: int) -> tuple[dict[str, float], list[list[int]]]:
    top5 = []
    for chunk in batched(rows, batch_size, "emotion"):
        inputs, outputs = model.run_dialogues(processor, [row["history"] for row in chunk])
        last_image = last_per_row(inputs["input_ids"] == model.config.image_token_id)
        top5 += outputs.emotion_logits[last_image].topk(5, dim=-1).indices.tolist()
    references = [row["answer"] for row in rows]
    return load_metric("mod_emotion").compute(predictions=top5, references=references, ks=[1, 5]), top5


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


def write_submission(folder: Path, split: str, views: dict[str, list[dict]], outputs: dict[str, list]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"c_{TASK_SPLITS[split]}"  # the release's own file names: c_test_easy_task1.json, ...
    task1 = [
        {
            "history": [release_turn(t) for t in row["history"]],
            "answer": {"speaker_id": f"[{row['speaker']}]", "txt": reply},
        }
        for row, reply in zip(views["response"], outputs["replies"])
    ]
    task2 = [
        {
            "history": [release_turn(t) for t in row["history"]],
            "candidate": {"speaker_id": f"[{row['speaker']}]", "set": ranked},
            "answer": {"speaker_id": f"[{row['speaker']}]", "img_id": ranked[0]},
        }
        for row, ranked in zip(views["retrieval"], outputs["ranked"])
    ]
    task3 = [
        {
            "history": [release_turn(t) for t in row["history"]],
            "answer": {"speaker_id": f"[{row['speaker']}]", "emotion_id": top},
        }
        for row, top in zip(views["emotion"], outputs["top5"])
    ]
    for task, instances in (("task1", task1), ("task2", task2), ("task3", task3)):
        path = folder / f"{prefix}_{task}.json"
        path.write_text(json.dumps(instances, ensure_ascii=False, indent=1), encoding="utf-8")


# Tables -------------------------------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def print_tables(results: dict[str, dict]) -> None:
    print("\nTable 4: text response (per character)")
    print(f"{'split':<10} {'PPL':>8} {'BLEU-2':>8} {'BLEU-4':>8} {'Dist-1':>8} {'Dist-2':>8}")
    for split, result in results.items():
        t = result["text"]
        print(
            f"{split:<10} {fmt(t['perplexity']):>8} {fmt(t['bleu-2']):>8} {fmt(t['bleu-4']):>8} {fmt(t['dist-1']):>8} {fmt(t['dist-2']):>8}"
        )
    print("\nTable 5: meme retrieval (R10@k over the official 10 candidates, RT@5 over all memes), in %")
    print(f"{'split':<18} {'R10@1':>7} {'R10@2':>7} {'R10@5':>7} {'RT@5':>7} {'MAP':>7}")
    for split, result in results.items():
        retrieval = result["retrieval"]
        rows = [(split, retrieval)]
        if split == "hard_test":
            rows = [(f"{split} (seen)", retrieval.get("seen", {})), (f"{split} (unseen)", retrieval.get("unseen", {}))]
        for name, scores in rows:
            cells = [scores.get(k) for k in ("R10@1", "R10@2", "R10@5", "RT@5", "MAP")]
            print(f"{name:<18} " + " ".join(f"{fmt(None if c is None else 100 * c):>7}" for c in cells))
    print("\nMeme usage")
    print(f"{'split':<10} {'accuracy':>9} {'F1':>7}")
    for split, result in results.items():
        usage = result["usage"]
        print(f"{split:<10} {fmt(100 * usage['accuracy']):>9} {fmt(100 * usage['f1']):>7}")
    print("\nTable 7: emotion of the used meme, in %")
    print(f"{'split':<10} {'top-1':>7} {'top-5':>7}")
    for split, result in results.items():
        emotion = result["emotion"]
        print(f"{split:<10} {fmt(100 * emotion['accuracy@1']):>7} {fmt(100 * emotion['accuracy@5']):>7}")


def load_views(dataset: str, split: str) -> dict[str, list[dict]]:
    views = {
        name: datasets.load_dataset(dataset, name, split=split).to_list()
        for name in ("response", "retrieval", "emotion")
    }
    views["dialogues"] = [row["turns"] for row in datasets.load_dataset(dataset, "dialogues", split=split)]
    return views


def evaluate(args) -> dict[str, dict]:
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    memes = next(iter(datasets.load_dataset(args.dataset, "memes").values()))
    new = [i for i, meme in enumerate(memes["meme_id"]) if meme not in set(model.meme_bank_ids)]
    if new:  # memes the model never saw become candidates through its encoder
        rows = memes.select(new)
        model.add_memes(rows["meme_id"], pixel_values=processor.image_processor(rows["image"])["pixel_values"])
    seen = dict(zip(memes["meme_id"], memes["seen"]))
    results = {}
    for split in args.split:
        views = load_views(args.dataset, split)
        if args.limit:
            views = {name: rows[: args.limit] for name, rows in views.items()}
        text, replies = text_table(model, processor, views["response"], args)
        retrieval, ranked = retrieval_table(model, processor, views["retrieval"], seen, args.batch_size)
        emotion, top5 = emotion_table(model, processor, views["emotion"], args.batch_size)
        usage = usage_scores(model, processor, views["dialogues"], args.batch_size)
        results[split] = {"text": text, "retrieval": retrieval, "usage": usage, "emotion": emotion}
        results[split]["samples"] = [
            {"history": row["history"][-2:], "reference": row["answer"], "reply": reply}
            for row, reply in list(zip(views["response"], replies))[:3]
        ]
        if args.write_submission:
            outputs = {"replies": replies, "ranked": ranked, "top5": top5}
            write_submission(Path(args.write_submission), split, views, outputs)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A saved MOD-GPT folder or hub id.")
    parser.add_argument("--dataset", required=True, help="A built MOD dataset folder or hub id.")
    parser.add_argument("--split", nargs="+", default=list(SPLITS), help="Splits to evaluate.")
    parser.add_argument("--output", help="Write the results as JSON here.")
    parser.add_argument("--write-submission", dest="write_submission", help="Write DSTC10 task 1/2/3 files here.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--limit", type=int, help="Evaluate only the first N instances of each view.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    results = evaluate(args)
    print_tables(results)
    if args.output:
        Path(args.output).write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
