"""Meme emotion metrics of the MOD paper (Table 7): accuracy@k of the predicted emotion of a used meme."""

import datasets
import evaluate

_DESCRIPTION = """
Emotion of the meme in the last turn, as in Table 7 of Fei et al. (2021), which reports top-5 accuracy. Each
prediction is the list of emotion ids ranked by the model, most likely first; accuracy@k is the share of
instances whose gold emotion is among the first k.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int]]`): ranked emotion ids per instance (at least max(ks) of them).
    references (`list[int]`): the gold emotion id per instance.
    ks (`list[int]`, *optional*, defaults to `[1, 5]`): cut-offs.
Returns:
    `accuracy@k` for each k, fractions in [0, 1].
Examples:
    >>> metric = evaluate.load("mod_metrics/mod_emotion")
    >>> metric.compute(predictions=[[3, 1], [0, 2]], references=[1, 1], ks=[1, 2])
    {'accuracy@1': 0.0, 'accuracy@2': 0.5}
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
class ModEmotion(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int32")), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, ks=(1, 5)) -> dict[str, float]:
        if not predictions:
            raise ValueError("mod_emotion got no predictions: there is no emotion to score.")
        too_short = [i for i, ranked in enumerate(predictions) if len(ranked) < max(ks)]
        if too_short:
            raise ValueError(f"mod_emotion: predictions {too_short[:5]} rank fewer than {max(ks)} emotions.")
        return {
            f"accuracy@{k}": sum(gold in ranked[:k] for ranked, gold in zip(predictions, references)) / len(references)
            for k in ks
        }
