"""MODProcessor against any JSON-like input: random turns (the four fields, junk fields, values of every kind) and
random dialogues and batches either encode cleanly, with the layout's invariants, or raise a `ValueError`; never
any other exception."""

from collections.abc import Callable

import pytest
from conftest import EMOTIONS, MEME_IDS
from hypothesis import given, settings
from hypothesis import strategies as st

from processing_mod import IGNORE_INDEX, TURN_FIELDS, MODProcessor

FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True)
MAX_LENGTH = 96
SEQUENCE_KEYS = ("input_ids", "token_type_ids", "labels", "usage_labels", "emotion_labels")
TENSOR_KEYS = (*SEQUENCE_KEYS, "attention_mask")

texts = st.one_of(
    st.just(""),
    st.text(alphabet="你好今天天气真不错我很开心哈", max_size=12),
    st.text(max_size=20),  # any script, symbols, control characters
    st.text(alphabet="abc ", min_size=150, max_size=300),  # longer than a window
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
speakers = st.sampled_from(["speaker1", "speaker2", "[speaker1]", "[speaker2]"])
emotions = st.sampled_from([None, *EMOTIONS, *range(len(EMOTIONS))])


@st.composite
def turns(draw) -> dict:
    """A valid turn (text, meme or both) with, now and then, a field removed or of any kind, or junk fields added."""
    has_text, has_meme = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
    turn = {
        "speaker": draw(speakers),
        "text": draw(texts) if has_text else None,
        "meme": draw(st.sampled_from(MEME_IDS)) if has_meme else None,
        "emotion": draw(emotions) if has_meme else None,
    }
    for field in TURN_FIELDS:
        change = draw(st.integers(0, 24))
        if change == 0:
            del turn[field]
        elif change == 1:
            turn[field] = draw(json_values)
    if draw(st.integers(0, 24)) == 0:
        turn.update(draw(st.dictionaries(st.text(max_size=8), json_values, min_size=1, max_size=2)))
    return turn


turn_lists = st.lists(turns(), min_size=1, max_size=5)
# Mostly lists of turns; also lists of anything and values of any kind in place of a dialogue.
dialogues = st.one_of(turn_lists, turn_lists, st.lists(turns() | json_values, max_size=4), json_values)
batches = st.lists(dialogues, min_size=1, max_size=3)


def outcome(encode: Callable[[], object]) -> object | None:
    """What `encode` returns, or None where it raised a `ValueError`: any other exception fails the test."""
    try:
        return encode()
    except ValueError:
        return None


def check_encoding(processor: MODProcessor, encoding: dict, max_length: int = MAX_LENGTH) -> None:
    """The layout's invariants: aligned sequences that fit, labels that are ignored or valid, one meme per [IMG]."""
    length = len(encoding["input_ids"])
    assert 0 < length <= max_length
    assert all(len(encoding[key]) == length for key in SEQUENCE_KEYS)
    assert all(0 <= token < len(processor.tokenizer) for token in encoding["input_ids"])
    assert all(label == IGNORE_INDEX or 0 <= label < len(processor.tokenizer) for label in encoding["labels"])
    assert set(encoding["usage_labels"]) <= {IGNORE_INDEX, 0, 1}
    assert set(encoding["emotion_labels"]) <= {IGNORE_INDEX, *range(len(EMOTIONS))}
    assert set(encoding["token_type_ids"]) <= {0, 1, 2}
    assert encoding["input_ids"].count(processor.token_ids["[IMG]"]) == len(encoding["meme_ids"])
    assert all(isinstance(meme, str) and meme for meme in encoding["meme_ids"])


@FUZZ
@given(dialogue=dialogues)
def test_a_dialogue_encodes_cleanly_or_is_a_value_error(processor, dialogue):
    encoding = outcome(lambda: processor.encode_dialogue(dialogue, max_length=MAX_LENGTH))
    if encoding is not None:
        check_encoding(processor, encoding)
    prompt = outcome(lambda: processor.encode_dialogue(dialogue, add_generation_prompt=True, max_length=MAX_LENGTH))
    if prompt is not None:
        check_encoding(processor, prompt)
        speakers = {processor.token_ids["[speaker1]"], processor.token_ids["[speaker2]"]}
        assert prompt["input_ids"][-2] in speakers and prompt["input_ids"][-1] == processor.token_ids["[BOS]"]


@FUZZ
@given(dialogue=dialogues)
def test_the_schema_check_agrees_with_the_encoder(processor, dialogue):
    # With room for any turn, only the schema can make encoding fail.
    checked = outcome(lambda: processor.check_dialogue(dialogue) or True)
    encoded = outcome(lambda: processor.encode_dialogue(dialogue, max_length=10**6))
    assert (checked is None) == (encoded is None)
    if encoded is not None:  # the turns' own memes and emotions, never coerced into others
        assert encoded["meme_ids"] == [turn["meme"] for turn in dialogue if turn.get("meme") is not None]
        labelled = [turn.get("emotion") for turn in dialogue if turn.get("meme") is not None]  # the first's too
        stated = [EMOTIONS.index(e) if isinstance(e, str) else e for e in labelled if e is not None]
        assert [label for label in encoded["emotion_labels"] if label != IGNORE_INDEX] == stated


@FUZZ
@given(dialogue=dialogues)
def test_training_windows_encode_cleanly_or_are_a_value_error(processor, dialogue):
    windows = outcome(lambda: processor.encode_windows(dialogue, max_length=MAX_LENGTH))
    if windows is not None:
        assert windows
        for window in windows:
            check_encoding(processor, window)


@FUZZ
@given(inputs=dialogues | batches, padding_side=st.sampled_from(["right", "left"]))
def test_processor_call_pads_cleanly_or_is_a_value_error(processor, inputs, padding_side):
    batch = outcome(lambda: processor(inputs, padding_side=padding_side, max_length=MAX_LENGTH, label_turns="all"))
    if batch is None:
        return
    shape = batch["input_ids"].shape
    assert all(batch[key].shape == shape for key in TENSOR_KEYS)
    labels = batch["labels"]
    assert ((labels == IGNORE_INDEX) | ((labels >= 0) & (labels < len(processor.tokenizer)))).all()
    assert int((batch["input_ids"] == processor.token_ids["[IMG]"]).sum()) == len(batch["meme_ids"])
    assert (batch["attention_mask"].sum(1) > 0).all()


@pytest.mark.parametrize("entry", ["encode_dialogue", "encode_windows", "__call__"])
def test_a_non_list_is_refused_by_every_entry_point(processor, entry):
    for value in (None, 0, 2.5, True, "turns", b"turns", {"speaker": "speaker1", "text": "hi"}):
        with pytest.raises(ValueError, match="non-empty list"):
            getattr(processor, entry)(value)
