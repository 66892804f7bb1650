"""
Text response metrics of the MOD paper (Table 4), scored as the DSTC10 organisers' scorer scores them.

The organisers' scorer (`baselines/MOD-GPT-C/eval.py` in lizekang/DSTC10-MOD) removes `[BOS]` from every string and
hands the raw strings to nltk, so every character is a token: Chinese characters, Latin letters, digits,
punctuation and spaces alike. This module reports, under these names:

- `bleu-1` ... `bleu-4`: the official corpus BLEU-n (their `corpus_bleu_n`): nltk's `corpus_bleu` with uniform
  weights over orders 1..n and `SmoothingFunction().method1`, in %. The BLEU of Table 4.
- `sentence-bleu-1` ... `sentence-bleu-4`: the official sentence-averaged BLEU-n (their `sent_bleu_n`): the mean over
  replies of nltk's `sentence_bleu` with the same weights and smoothing, in %.
- `sacrebleu-2`, `sacrebleu-4`: sacrebleu's corpus BLEU with its `zh` tokenizer (each CJK character a token, other
  text split by the 13a rules, so spaces are not tokens) and its default exponential smoothing, on its 0-100 scale.
  It agrees with the official figure on clean Chinese but not on short or empty replies nor on Latin or digit text.
- `dist-1` ... `dist-4`: the official distinct-n (their `distinct_n`): distinct character n-grams over all character
  n-grams of all replies, in %; 0 when no reply has n characters (where their script divides by zero).
- `perplexity`: exp of the summed negative log-likelihood of the gold responses over their token count, when the
  model's `nll_sums` and `token_counts` are given.
"""

import math

import datasets
import evaluate
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu
from sacrebleu.metrics import BLEU

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated responses (at least one).
    references (`list[str]`): one gold response per prediction.
    nll_sums (`list[float]`, *optional*): summed negative log-likelihood (natural log) of each gold response.
    token_counts (`list[int]`, *optional*): number of tokens behind each of `nll_sums`.
Returns:
    `bleu-1`..`bleu-4` (official corpus BLEU), `sentence-bleu-1`..`sentence-bleu-4` (official sentence average),
    `sacrebleu-2`, `sacrebleu-4`, `dist-1`..`dist-4`, all in %, and `perplexity` when `nll_sums` are given.
Examples:
    >>> metric = evaluate.load("mod_metrics/mod_text")
    >>> metric.compute(predictions=["今天天气很好"], references=["今天天气不错"])["dist-1"]
    100.0
"""

_CITATION = """
@article{fei2021towards,
  title={Towards Expressive Communication with Internet Memes: A New Multimodal Conversation Dataset and Benchmark},
  author={Fei, Zhengcong and Li, Zekang and Zhang, Jinchao and Feng, Yang and Zhou, Jie},
  journal={arXiv preprint arXiv:2109.01839},
  year={2021}
}
@inproceedings{post-2018-call,
  title={A Call for Clarity in Reporting {BLEU} Scores},
  author={Post, Matt},
  booktitle={Proceedings of the Third Conference on Machine Translation},
  year={2018}
}
"""

ORDERS = (1, 2, 3, 4)
SACREBLEU_ORDERS = (2, 4)
SMOOTHING = SmoothingFunction().method1


def characters(text: str) -> list[str]:
    """The official tokens of a string: its characters, once `[BOS]` is removed."""
    return list(text.replace("[BOS]", ""))


def bleu_weights(order: int) -> tuple[float, ...]:
    """Uniform weights over n-gram orders 1..order, padded with zeros to four orders as the official scorer does."""
    return (1 / order,) * order + (0.0,) * (max(ORDERS) - order)


def official_bleu(hypotheses: list[list[str]], references: list[list[str]]) -> dict[str, float]:
    corpus, sentence = {}, {}
    for order in ORDERS:
        weights = bleu_weights(order)
        score = corpus_bleu([[ref] for ref in references], hypotheses, weights=weights, smoothing_function=SMOOTHING)
        scores = [
            sentence_bleu([ref], hyp, weights=weights, smoothing_function=SMOOTHING)
            for hyp, ref in zip(hypotheses, references)
        ]
        corpus[f"bleu-{order}"] = 100.0 * score
        sentence[f"sentence-bleu-{order}"] = 100.0 * sum(scores) / len(scores)
    return {**corpus, **sentence}


def distinct_n(token_lists: list[list[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of the token lists, in %; 0 when there are none."""
    ngrams = [tuple(tokens[i : i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return 100.0 * len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def perplexity(nll_sums: list[float], token_counts: list[int] | None) -> float:
    if token_counts is None or len(token_counts) != len(nll_sums):
        raise ValueError("mod_text needs one token count per nll sum.")
    if sum(token_counts) <= 0:
        raise ValueError("mod_text: the token counts sum to 0, so perplexity is undefined.")
    return math.exp(sum(nll_sums) / sum(token_counts))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ModText(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=[
                "https://github.com/lizekang/DSTC10-MOD/blob/main/baselines/MOD-GPT-C/eval.py",
                "https://www.nltk.org/api/nltk.translate.bleu_score.html",
                "https://github.com/mjpost/sacrebleu",
                "https://arxiv.org/abs/2109.01839",
            ],
        )

    def _compute(self, predictions, references, nll_sums=None, token_counts=None) -> dict[str, float]:
        if not predictions:
            raise ValueError("mod_text got no predictions: text scores need at least one reply and its reference.")
        scores = {}
        if nll_sums is not None:
            scores["perplexity"] = perplexity(nll_sums, token_counts)
        hypotheses = [characters(prediction) for prediction in predictions]
        scores.update(official_bleu(hypotheses, [characters(reference) for reference in references]))
        for order in SACREBLEU_ORDERS:
            bleu = BLEU(tokenize="zh", max_ngram_order=order)
            scores[f"sacrebleu-{order}"] = bleu.corpus_score(predictions, [references]).score
        for n in ORDERS:
            scores[f"dist-{n}"] = distinct_n(hypotheses, n)
        return scores
