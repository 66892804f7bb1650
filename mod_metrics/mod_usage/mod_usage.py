"""Meme usage metrics: accuracy of the attach-a-meme decision, and precision, recall and F1 of attaching one."""

import datasets
import evaluate

_DESCRIPTION = """
Whether MOD-GPT attaches a meme to a response (1) or not (0), against the gold turn. Accuracy is the paper's
usage figure; since most turns carry no meme, the precision, recall and F1 of the positive class (attaching a
meme) are reported too. F1 is 0 when there is no true positive. `count` is the number of decisions scored.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): 1 where the model attaches a meme, 0 where it does not.
    references (`list[int]`): the gold decisions.
Returns:
    `accuracy`, `precision`, `recall`, `f1`, fractions in [0, 1], and `count`, the number of decisions scored.
Examples:
    >>> metric = evaluate.load("mod_metrics/mod_usage")
    >>> metric.compute(predictions=[1, 0, 1, 0], references=[1, 1, 0, 0])
    {'accuracy': 0.5, 'precision': 0.5, 'recall': 0.5, 'f1': 0.5, 'count': 4}
"""

_CITATION = """
@article{fei2021towards,
  title={Towards Expressive Communication with Internet Memes: A New Multimodal Conversation Dataset and Benchmark},
  author={Fei, Zhengcong and Li, Zekang and Zhang, Jinchao and Feng, Yang and Zhou, Jie},
  journal={arXiv preprint arXiv:2109.01839},
  year={2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ModUsage(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references) -> dict[str, float | int]:
        if not predictions:
            raise ValueError("mod_usage got no predictions: there is no usage decision to score.")
        pairs = list(zip(predictions, references))
        true_positives = sum(p == 1 and r == 1 for p, r in pairs)
        predicted, actual = sum(p == 1 for p, _ in pairs), sum(r == 1 for _, r in pairs)
        precision = true_positives / predicted if predicted else 0.0
        recall = true_positives / actual if actual else 0.0
        return {
            "accuracy": sum(p == r for p, r in pairs) / len(pairs),
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if true_positives else 0.0,
            "count": len(pairs),
        }
