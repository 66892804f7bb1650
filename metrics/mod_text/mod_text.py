"""Text response metrics of the MOD paper (Table 4): perplexity, BLEU-2, BLEU-4, Dist-1 and Dist-2."""

import math

import datasets
import evaluate
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

_DESCRIPTION = """
Text metrics of MOD-GPT's responses, as in Table 4 of Fei et al. (2021). Chinese is scored per character: every
hypothesis and reference is tokenized by sacrebleu's `zh` tokenizer, which splits Chinese characters apart and
applies the 13a rules to other text. BLEU-n is sacrebleu's corpus BLEU with `max_ngram_order=n`, one reference per
hypothesis, exponential smoothing (sacrebleu's default). Dist-n is the number of distinct n-grams over the total
number of n-grams in all hypotheses, with the same tokens. Perplexity is exp of the summed negative
log-likelihood of the reference tokens over their count, given by the model.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated responses.
    references (`list[str]`): one gold response per prediction.
    nll_sums (`list[float]`, *optional*): summed negative log-likelihood (natural log) of each gold response.
    token_counts (`list[int]`, *optional*): number of tokens behind each of `nll_sums`.
Returns:
    `perplexity` (when `nll_sums` are given), `bleu-2`, `bleu-4` (0-100, as sacrebleu reports), `dist-1`, `dist-2`
    (in %, as in the paper).
Examples:
    >>> metric = evaluate.load("metrics/mod_text")
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

TOKENIZE = "zh"


def distinct_n(token_lists: list[list[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of the token lists, in %; 0 when there are none."""
    ngrams = [tuple(tokens[i : i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return 100.0 * len(set(ngrams)) / len(ngrams) if ngrams else 0.0


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
            reference_urls=["https://github.com/mjpost/sacrebleu", "https://arxiv.org/abs/2109.01839"],
        )

    def _compute(self, predictions, references, nll_sums=None, token_counts=None) -> dict[str, float]:
        scores = {}
        if nll_sums is not None:
            if token_counts is None or len(token_counts) != len(nll_sums):
                raise ValueError("mod_text needs one token count per nll sum.")
            scores["perplexity"] = math.exp(sum(nll_sums) / max(sum(token_counts), 1))
        for order in (2, 4):
            bleu = BLEU(tokenize=TOKENIZE, max_ngram_order=order)
            scores[f"bleu-{order}"] = bleu.corpus_score(predictions, [references]).score
        tokenize = TokenizerZh()
        tokens = [tokenize(prediction.strip()).split() for prediction in predictions]
        scores["dist-1"] = distinct_n(tokens, 1)
        scores["dist-2"] = distinct_n(tokens, 2)
        return scores
