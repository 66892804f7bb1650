"""Meme retrieval metrics of the MOD paper (Table 5): Rn@k, MAP, per group of target memes (seen, unseen)."""

import datasets
import evaluate

_DESCRIPTION = """
Retrieval metrics of MOD-GPT's meme choice, as in Table 5 of Fei et al. (2021). Each prediction is the list of
candidate meme ids ranked by the model, nearest first; each reference is the gold meme id. `{prefix}@k` is the
share of instances whose gold meme is among the first k (R10@k over the 10 official candidates, RT@k over all
memes). MAP is the mean average precision, which with one gold meme per instance is the mean of 1 / its rank (0
when it is missing from the list). With `groups` (a name per instance, such as "seen" or "unseen") every score is
also reported per group.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[str]]`): ranked candidate meme ids per instance.
    references (`list[str]`): the gold meme id per instance.
    ks (`list[int]`, *optional*, defaults to `[1, 2, 5]`): cut-offs for the recall scores.
    prefix (`str`, *optional*, defaults to `"R10"`): name of the recall scores (`R10@1`, ...).
    groups (`list[str]`, *optional*): a group name per instance; adds one dict of scores per group.
Returns:
    `{prefix}@k` for each k and `MAP`, as fractions in [0, 1]; with groups, also `{group: {...}}`.
Examples:
    >>> metric = evaluate.load("mod_metrics/mod_retrieval")
    >>> metric.compute(predictions=[["b", "a"], ["a", "b"]], references=["a", "a"], ks=[1])
    {'R10@1': 0.5, 'MAP': 0.75}
"""

_CITATION = """
@article{fei2021towards,
  title={Towards Expressive Communication with Internet Memes: A New Multimodal Conversation Dataset and Benchmark},
  author={Fei, Zhengcong and Li, Zekang and Zhang, Jinchao and Feng, Yang and Zhou, Jie},
  journal={arXiv preprint arXiv:2109.01839},
  year={2021}
}
"""


def gold_ranks(predictions: list[list[str]], references: list[str]) -> list[int | None]:
    """1-based rank of the gold meme in each ranked list; `None` where it is missing."""
    return [ranked.index(gold) + 1 if gold in ranked else None for ranked, gold in zip(predictions, references)]


def scores_of(ranks: list[int | None], ks: list[int], prefix: str) -> dict[str, float]:
    scores = {f"{prefix}@{k}": sum(r is not None and r <= k for r in ranks) / len(ranks) for k in ks}
    scores["MAP"] = sum(1.0 / r for r in ranks if r is not None) / len(ranks)
    return scores


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ModRetrieval(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("string")), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, ks=(1, 2, 5), prefix="R10", groups=None) -> dict:
        if not predictions:
            raise ValueError("mod_retrieval got no predictions: there is no ranking to score.")
        ks = list(ks)
        ranks = gold_ranks(predictions, references)
        scores: dict = scores_of(ranks, ks, prefix)
        if groups is not None:
            if len(groups) != len(ranks):
                raise ValueError(f"mod_retrieval got {len(groups)} group names for {len(ranks)} instances.")
            for group in sorted(set(groups)):
                members = [rank for rank, name in zip(ranks, groups) if name == group]
                scores[group] = scores_of(members, ks, prefix)
        return scores
