"""The evaluate modules in mod_metrics/, loaded by local path, on hand-computed cases."""

import math

import pytest
import sacrebleu
from conftest import REPO_ROOT
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu
from nltk.util import ngrams

from mod_metrics import NAMES, load_metric


@pytest.fixture(scope="module")
def text():
    return load_metric("mod_text")


def test_every_metric_loads_from_its_local_folder():
    for name in NAMES:
        module = load_metric(name)
        assert module.name == name and (REPO_ROOT / "mod_metrics" / name / "README.md").exists()
    with pytest.raises(ValueError, match="Unknown metric 'bleu'"):
        load_metric("bleu")


def official_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """The organisers' figures, with nltk called on the raw strings as their `eval.py` calls it, in %."""
    smoothing = SmoothingFunction().method1
    scores = {}
    for n, weights in enumerate([(1, 0, 0, 0), (0.5, 0.5, 0, 0), (1 / 3, 1 / 3, 1 / 3, 0), (0.25,) * 4], start=1):
        corpus = corpus_bleu([[r] for r in references], hypotheses, weights=weights, smoothing_function=smoothing)
        sentences = [
            sentence_bleu([r], h, weights=weights, smoothing_function=smoothing)
            for h, r in zip(hypotheses, references)
        ]
        scores[f"bleu-{n}"] = 100 * corpus
        scores[f"sentence-bleu-{n}"] = 100 * sum(sentences) / len(sentences)
        all_ngrams = [gram for h in hypotheses for gram in ngrams(h, n)]
        scores[f"dist-{n}"] = 100 * len(set(all_ngrams)) / len(all_ngrams) if all_ngrams else 0.0
    return scores


CASES = {
    "normal Chinese": (
        ["我们去吃火锅吧", "今天天气很好", "哈哈哈", "你在干嘛呢"],
        ["我们去吃烧烤吧", "今天天气真不错", "哈哈太好笑了", "在干嘛呢"],
    ),
    "an empty reply": (["", "今天天气很好", "好的呀"], ["我也是", "今天天气不错", "好的"]),
    "one-character replies": (["好", "嗯", "哈哈"], ["好的", "嗯", "哈哈哈"]),
    "mixed script": (["hello 你好 123", "ok 我来了"], ["hello 你好 456", "OK，我来了"]),
    "all empty": (["", ""], ["你好", "再见"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bleu_and_distinct_are_the_official_nltk_figures(text, case):
    predictions, references = CASES[case]
    scores = text.compute(predictions=predictions, references=references)
    expected = official_scores(predictions, references)
    assert {name: scores[name] for name in expected} == pytest.approx(expected)
    sacre = {
        n: sacrebleu.BLEU(tokenize="zh", max_ngram_order=n).corpus_score(predictions, [references]) for n in (2, 4)
    }
    assert scores["sacrebleu-2"] == pytest.approx(sacre[2].score)
    assert scores["sacrebleu-4"] == pytest.approx(sacre[4].score)


def test_bleu_is_the_official_one_where_sacrebleu_differs(text):
    # Every character is an official token, the spaces included: 12 for "hello 你好 123"; sacrebleu sees 4 tokens.
    mixed = text.compute(predictions=["hello 你好 123"], references=["hello 你好 456"])
    # 9 of 12 characters and 8 of 11 character bigrams match, equal lengths: BLEU-2 = sqrt(9/12 * 8/11).
    assert mixed["bleu-2"] == pytest.approx(100 * math.sqrt(9 / 12 * 8 / 11))
    assert mixed["sacrebleu-2"] == pytest.approx(100 * math.sqrt(3 / 4 * 2 / 3))  # hello 你 好 123: 3 of 4, 2 of 3
    assert abs(mixed["bleu-2"] - mixed["sacrebleu-2"]) > 2
    # A one-character reply has no bigram: sacrebleu gives 0, nltk's method1 smoothing a small positive score.
    short = text.compute(predictions=["好"], references=["好"])
    assert short["sacrebleu-2"] == 0.0 and short["bleu-2"] == pytest.approx(100 * math.sqrt(1 * 0.1))


def test_bleu_2_by_hand_per_character(text):
    # 今天很好 vs 今天不好: 3 of 4 characters and 1 of 3 character bigrams match, equal lengths (no brevity penalty).
    scores = text.compute(predictions=["今天很好"], references=["今天不好"])
    assert scores["bleu-2"] == pytest.approx(100 * math.sqrt(3 / 4 * 1 / 3))
    assert scores["sacrebleu-2"] == pytest.approx(scores["bleu-2"])  # the two agree on clean Chinese
    assert scores["bleu-4"] < scores["bleu-2"]


def test_bos_is_removed_before_scoring(text):
    plain = text.compute(predictions=["今天很好"], references=["今天不好"])
    with_bos = text.compute(predictions=["[BOS]今天很好"], references=["[BOS]今天不好"])
    assert with_bos["bleu-2"] == plain["bleu-2"] and with_bos["dist-1"] == plain["dist-1"]


@pytest.mark.parametrize("name", NAMES)
def test_no_predictions_is_a_clear_error(name):
    with pytest.raises(ValueError, match=f"{name} got no predictions"):
        load_metric(name).compute(predictions=[], references=[])


def test_distinct_n_on_a_tiny_set(text):
    # Characters: 哈 x 5, so 1 distinct of 5; bigrams: 哈哈 x 3 (2 + 1), so 1 distinct of 3.
    scores = text.compute(predictions=["哈哈哈", "哈哈"], references=["", ""])
    assert scores["dist-1"] == pytest.approx(100 / 5)
    assert scores["dist-2"] == pytest.approx(100 / 3)
    assert scores["dist-4"] == 0.0  # no reply has 4 characters


def test_perplexity_pools_tokens_over_the_corpus(text):
    scores = text.compute(predictions=["好"], references=["好"], nll_sums=[2.0, 4.0], token_counts=[1, 3])
    assert scores["perplexity"] == pytest.approx(math.exp(6.0 / 4))
    assert "perplexity" not in text.compute(predictions=["好"], references=["好"])


def test_retrieval_on_a_planted_ranking():
    metric = load_metric("mod_retrieval")
    ranked = [["a", "b", "c"], ["b", "a", "c"], ["c", "b", "a"], ["b", "c"]]
    gold = ["a", "a", "a", "a"]  # ranks 1, 2, 3, and missing
    scores = metric.compute(predictions=ranked, references=gold, ks=[1, 2, 5], groups=["seen", "seen", "unseen", "x"])
    assert (scores["R10@1"], scores["R10@2"], scores["R10@5"]) == (0.25, 0.5, 0.75)
    assert scores["MAP"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)
    assert scores["seen"] == {"R10@1": 0.5, "R10@2": 1.0, "R10@5": 1.0, "MAP": pytest.approx(0.75)}
    assert scores["unseen"]["R10@2"] == 0.0 and scores["unseen"]["R10@5"] == 1.0
    assert metric.compute(predictions=ranked, references=gold, ks=[5], prefix="RT")["RT@5"] == 0.75


def test_usage_accuracy_and_f1():
    metric = load_metric("mod_usage")
    scores = metric.compute(predictions=[1, 1, 0, 0, 0], references=[1, 0, 1, 0, 0])
    assert scores == {"accuracy": 0.6, "precision": 0.5, "recall": 0.5, "f1": 0.5, "count": 5}
    never = metric.compute(predictions=[0, 0, 0], references=[1, 0, 0])
    assert never["accuracy"] == pytest.approx(2 / 3) and never["f1"] == 0.0


def test_emotion_accuracy_at_k():
    metric = load_metric("mod_emotion")
    ranked = [[3, 1, 0, 2, 4], [1, 0, 2, 3, 4], [4, 3, 2, 1, 0]]
    scores = metric.compute(predictions=ranked, references=[1, 1, 5], ks=[1, 2, 5])
    assert scores == {
        "accuracy@1": pytest.approx(1 / 3),
        "accuracy@2": pytest.approx(2 / 3),
        "accuracy@5": pytest.approx(2 / 3),
    }
    with pytest.raises(ValueError, match="rank fewer than 5"):
        metric.compute(predictions=[[1, 2]], references=[1])
