"""The evaluate modules in metrics/, loaded by local path, on hand-computed cases."""

import math

import pytest
import sacrebleu
from conftest import REPO_ROOT

from metrics import NAMES, load_metric


@pytest.fixture(scope="module")
def text():
    return load_metric("mod_text")


def test_every_metric_loads_from_its_local_folder():
    for name in NAMES:
        module = load_metric(name)
        assert module.name == name and (REPO_ROOT / "metrics" / name / "README.md").exists()
    with pytest.raises(ValueError, match="Unknown metric 'bleu'"):
        load_metric("bleu")


def test_bleu_2_by_hand_per_character(text):
    # 今天很好 vs 今天不好: 3 of 4 characters and 1 of 3 character bigrams match, equal lengths (no brevity penalty).
    scores = text.compute(predictions=["今天很好"], references=["今天不好"])
    assert scores["bleu-2"] == pytest.approx(100 * math.sqrt(3 / 4 * 1 / 3))
    # Scored per character, so spaces between Chinese words change nothing.
    assert text.compute(predictions=["今天 很好"], references=["今 天不好"])["bleu-2"] == pytest.approx(50.0)


def test_bleu_equals_sacrebleus_own_corpus_figure(text):
    predictions = ["我们去吃火锅吧", "今天天气很好", "哈哈哈", "你在干嘛呢"]
    references = ["我们去吃烧烤吧", "今天天气真不错", "哈哈太好笑了", "在干嘛呢"]
    scores = text.compute(predictions=predictions, references=references)
    assert scores["bleu-4"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score)
    bleu_2 = sacrebleu.BLEU(tokenize="zh", max_ngram_order=2).corpus_score(predictions, [references])
    assert scores["bleu-2"] == pytest.approx(bleu_2.score)
    assert scores["bleu-4"] < scores["bleu-2"]


def test_distinct_n_on_a_tiny_set(text):
    # Characters: 哈 x 5, so 1 distinct of 5; bigrams: 哈哈 x 3 (2 + 1), so 1 distinct of 3.
    scores = text.compute(predictions=["哈哈哈", "哈哈"], references=["", ""])
    assert scores["dist-1"] == pytest.approx(100 / 5)
    assert scores["dist-2"] == pytest.approx(100 / 3)


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
    assert scores == {"accuracy": 0.6, "precision": 0.5, "recall": 0.5, "f1": 0.5}
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
