"""MODProcessor: vocabulary, sequence layout, truncation, padding, decoding."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS, DIALOGUES, EMOTIONS, MEME_IDS
from safetensors.torch import load_file

from processing_mod import IGNORE_INDEX, MODProcessor

SAVED_V0 = Path(__file__).parent / "fixtures" / "mod_gpt_v0"


def tokens(processor, ids):
    return processor.tokenizer.convert_ids_to_tokens(ids)


def long_dialogue(num_turns: int = 60) -> list[dict]:
    """A long dialogue of varied texts, with memes (some alone, some without emotion) and emotions."""
    turns = []
    for index in range(num_turns):
        text = CORPUS[index * 3 % len(CORPUS)] + (CORPUS[index * 5 % len(CORPUS)] if index % 4 == 0 else "")
        text = None if index % 7 == 5 else text
        meme = MEME_IDS[index % len(MEME_IDS)] if index % 3 == 1 or text is None else None
        emotion = EMOTIONS[index % len(EMOTIONS)] if meme is not None and index % 4 else None
        turns.append({"speaker": f"speaker{index % 2 + 1}", "text": text, "meme": meme, "emotion": emotion})
    return turns


def labelled(encoding: dict, key: str) -> list[int]:
    return [label for label in encoding[key] if label != IGNORE_INDEX]


def window_turns(processor, windows: list[dict]) -> list[tuple[int, list[int]]]:
    """For each window, the dialogue index of its first turn and of the turns it labels (each ends in [EOS])."""
    speakers = [processor.token_ids["[speaker1]"], processor.token_ids["[speaker2]"]]
    spans, next_new = [], 1
    for window in windows:
        num_turns = sum(token in speakers for token in window["input_ids"])
        num_labelled = window["labels"].count(processor.token_ids["[EOS]"])
        spans.append((next_new - (num_turns - num_labelled), list(range(next_new, next_new + num_labelled))))
        next_new += num_labelled
    return spans


def test_chinese_is_one_token_per_character_and_english_is_wordpiece(processor):
    assert processor.tokenizer.tokenize("今天天气真不错") == list("今天天气真不错")
    english = processor.tokenizer.tokenize("How are you today?")
    assert english[0] == "how" and english[-1] == "?" and "[UNK]" not in english


def test_special_tokens_follow_the_vocabulary(processor):
    ids = processor.special_token_ids
    base_vocab_size = len(processor.tokenizer) - 6  # [PAD] is already in a BERT vocabulary
    assert ids["pad_token_id"] == 0
    added = [ids[f"{name}_token_id"] for name in ("bos", "eos", "speaker1", "speaker2", "image", "tag")]
    assert added == list(range(base_vocab_size, base_vocab_size + 6))
    assert tokens(processor, [ids["tag_token_id"], ids["image_token_id"]]) == ["[TAG]", "[IMG]"]


def test_layout_labels_and_segments(processor):
    dialogue = DIALOGUES[0][:3]
    encoded = processor.encode_dialogue(dialogue)
    assert tokens(processor, encoded["input_ids"]) == [
        "[speaker1]", "[BOS]", "你", "好", "啊", "[EOS]", "[TAG]",
        "[speaker2]", "[BOS]", "今", "天", "天", "气", "真", "不", "错", "[EOS]", "[TAG]", "[IMG]",
        "[speaker1]", "[BOS]", "[EOS]", "[TAG]", "[IMG]",
    ]  # fmt: skip
    labelled = [
        token for token, label in zip(tokens(processor, encoded["input_ids"]), encoded["labels"]) if label != -100
    ]
    assert labelled == list("今天天气真不错") + ["[EOS]", "[EOS]"]
    assert encoded["token_type_ids"] == [0] * 7 + [1] * 11 + [2] + [0] * 4 + [2]
    assert [u for u in encoded["usage_labels"] if u != IGNORE_INDEX] == [1, 1]  # first turn is not labelled
    assert [e for e in encoded["emotion_labels"] if e != IGNORE_INDEX] == [
        EMOTIONS.index("happy"),
        EMOTIONS.index("sad"),
    ]
    assert encoded["meme_ids"] == ["001", "003"]


def test_the_first_turn_labels_its_meme_emotion_and_nothing_else(processor):
    dialogue = DIALOGUES[2]  # opens with a meme: the organisers' emotion reader makes an instance of it
    lengths = [len(processor.encode_dialogue([turn])["input_ids"]) for turn in dialogue]
    first = lengths[0]
    encoded = processor.encode_dialogue(dialogue)
    assert set(encoded["labels"][:first]) == set(encoded["usage_labels"][:first]) == {IGNORE_INDEX}
    assert [e for e in encoded["emotion_labels"][:first] if e != IGNORE_INDEX] == [EMOTIONS.index("surprised")]
    max_length = first + lengths[1] - 1  # the first turn alone in its window
    assert max_length >= max(lengths)
    alone = processor.encode_windows(dialogue, max_length=max_length)
    assert len(alone[0]["input_ids"]) == first
    assert [e for e in alone[0]["emotion_labels"] if e != IGNORE_INDEX] == [EMOTIONS.index("surprised")]
    assert processor.encode_windows(DIALOGUES[1][:1]) == [processor.encode_dialogue(DIALOGUES[1][:1])]


def test_labels_come_only_when_asked(processor):
    plain = processor(DIALOGUES)
    assert set(plain) == {"input_ids", "attention_mask", "token_type_ids", "meme_ids"}
    for label_turns in ("all", "last", "none"):
        labelled = processor(DIALOGUES, label_turns=label_turns)
        assert set(labelled) == set(plain) | {"labels", "usage_labels", "emotion_labels"}
        assert torch.equal(labelled["input_ids"], plain["input_ids"])
    assert (processor(DIALOGUES, label_turns="none")["labels"] == IGNORE_INDEX).all()
    assert (processor(DIALOGUES, label_turns="all")["labels"] != IGNORE_INDEX).any()


def test_per_response_view_labels_only_the_answer(processor):
    encoded = processor.encode_dialogue(DIALOGUES[0][:2], label_turns="last")
    labelled = [
        token for token, label in zip(tokens(processor, encoded["input_ids"]), encoded["labels"]) if label != -100
    ]
    assert labelled == list("今天天气真不错") + ["[EOS]"]


def test_generation_prompt_is_next_speaker(processor):
    encoded = processor.encode_dialogue(DIALOGUES[1], add_generation_prompt=True)
    assert tokens(processor, encoded["input_ids"][-2:]) == ["[speaker2]", "[BOS]"]
    assert encoded["token_type_ids"][-2:] == [1, 1]


def test_left_truncation_drops_whole_turns(processor):
    full = processor.encode_dialogue(DIALOGUES[0])
    cut = processor.encode_dialogue(DIALOGUES[0], max_length=len(full["input_ids"]) - 1)
    first_turn_length = full["input_ids"].index(processor.token_ids["[speaker2]"])
    assert cut["input_ids"] == full["input_ids"][first_turn_length:]
    assert cut["meme_ids"] == full["meme_ids"]
    assert tokens(processor, cut["input_ids"][:1]) == ["[speaker2]"]
    assert cut["labels"] == full["labels"][first_turn_length:]  # kept turns keep their labels, as per-response does


def test_padding_both_sides(processor):
    right = processor(DIALOGUES)
    left = processor(DIALOGUES, padding_side="left")
    lengths = [len(processor.encode_dialogue(d)["input_ids"]) for d in DIALOGUES]
    assert right["attention_mask"].sum(1).tolist() == lengths == left["attention_mask"].sum(1).tolist()
    assert right["input_ids"][1, lengths[1] :].eq(processor.token_ids["[PAD]"]).all()
    assert left["input_ids"][1, : -lengths[1]].eq(processor.token_ids["[PAD]"]).all()
    assert right["meme_ids"] == ["001", "003", "005", "002", "007", "004"]


def test_decode_replies_stops_at_eos_and_joins_characters(processor):
    ids = processor.tokenizer.encode("我很开心", add_special_tokens=False) + [processor.token_ids["[EOS]"], 5, 6]
    assert processor.decode_replies(torch.tensor([ids])) == ["我很开心"]
    english = processor.tokenizer.encode("how are you", add_special_tokens=False)
    assert processor.decode_replies(torch.tensor([english])) == ["how are you"]


def test_existing_vocab_txt_loads_from_a_folder(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"你好今天我很开心", "hello"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    processor = MODProcessor.from_vocab(str(tmp_path), meme_encoder_name="test_efficientnet")
    assert processor.tokenizer.tokenize("你好 hello") == ["你", "好", "hello"]
    assert processor.tokenizer.convert_tokens_to_ids("好") == vocab.index("好")
    assert processor.special_token_ids["pad_token_id"] == 0
    assert processor.special_token_ids["tag_token_id"] == len(vocab) + 5


def test_processor_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = MODProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert loaded.special_token_ids == processor.special_token_ids
    assert loaded.emotion_names == EMOTIONS and loaded.max_length == processor.max_length
    assert loaded.image_processor.input_size == processor.image_processor.input_size
    assert torch.equal(loaded(DIALOGUES)["input_ids"], processor(DIALOGUES)["input_ids"])


def test_a_processor_saved_by_earlier_code_loads_and_encodes_as_it_did():
    loaded = MODProcessor.from_pretrained(SAVED_V0)
    reference = load_file(SAVED_V0 / "reference_outputs.safetensors")
    inputs = loaded(DIALOGUES)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(inputs[key], reference[key]), key
    assert loaded.emotion_names == EMOTIONS and loaded.image_processor.input_size == [3, 160, 160]


# Training windows ---------------------------------------------------------------------------------------------------


def test_a_dialogue_that_fits_is_one_window_equal_to_the_packed_encoding(processor):
    for dialogue in [*DIALOGUES, long_dialogue()]:
        assert processor.encode_windows(dialogue, max_length=1000) == [
            processor.encode_dialogue(dialogue, max_length=1000)
        ]


@pytest.mark.parametrize("max_length", [40, 64, 128, 500])
def test_windows_label_every_response_once_with_the_longest_history_that_fits(processor, max_length):
    dialogue = long_dialogue()
    windows = processor.encode_windows(dialogue, max_length=max_length)
    per_response = [
        processor.encode_dialogue(dialogue[: k + 1], label_turns="last", max_length=max_length)
        for k in range(1, len(dialogue))
    ]
    assert len(windows) > 1 and all(len(window["input_ids"]) <= max_length for window in windows)
    # The labelled text tokens, in order, are those of the per-response view: every response once, none twice.
    assert [t for window in windows for t in labelled(window, "labels")] == [
        t for encoding in per_response for t in labelled(encoding, "labels")
    ]
    spans = window_turns(processor, windows)
    assert [k for _, new in spans for k in new] == list(range(1, len(dialogue)))
    # Each window holds as much history as fits: one more turn before it would not fit.
    lengths = [len(processor.encode_dialogue([turn])["input_ids"]) for turn in dialogue]
    for window, (start, new) in zip(windows, spans):
        assert window["input_ids"] == processor.encode_dialogue(dialogue[start : new[-1] + 1])["input_ids"]
        assert start == 0 or len(window["input_ids"]) + lengths[start - 1] > max_length


def test_windows_label_usage_and_emotion_of_each_turn_once(processor):
    dialogue = long_dialogue()
    windows = processor.encode_windows(dialogue, max_length=64)
    usage = [label for window in windows for label in labelled(window, "usage_labels")]
    assert usage == [int(turn["meme"] is not None) for turn in dialogue[1:]]
    emotions = [label for window in windows for label in labelled(window, "emotion_labels")]
    expected = [EMOTIONS.index(t["emotion"]) for t in dialogue if t["meme"] is not None and t["emotion"]]
    assert emotions == expected
    assert sum(window["meme_ids"].count(MEME_IDS[1]) for window in windows) > 1  # context memes are repeated


def test_a_turn_longer_than_a_window_names_dialogue_and_turn(processor):
    dialogue = [
        *DIALOGUES[0],
        {"speaker": "speaker2", "text": "好" * 40, "meme": None, "emotion": None},
        DIALOGUES[0][0],
    ]
    with pytest.raises(ValueError, match=r"dialogue 7, turn 5: 'text' encodes to 44 tokens.*max_length=30"):
        processor.encode_windows(dialogue, dialogue_index=7, max_length=30)


def test_generation_prompt_never_drops_the_latest_turn(processor):
    dialogue = DIALOGUES[0][:2]
    last_turn_length = len(processor.encode_dialogue(dialogue[-1:])["input_ids"])
    prompt = processor.encode_dialogue(dialogue, add_generation_prompt=True, max_length=last_turn_length + 2)
    assert prompt["input_ids"] == processor.encode_dialogue(dialogue[-1:], add_generation_prompt=True)["input_ids"]
    with pytest.raises(
        ValueError,
        match=rf"turn 1: 'text' encodes to {last_turn_length + 2} tokens with its "
        rf"special tokens and the reply prompt, more than max_length={last_turn_length + 1}",
    ):
        processor.encode_dialogue(dialogue, add_generation_prompt=True, max_length=last_turn_length + 1)


# Bad input ----------------------------------------------------------------------------------------------------------


def with_turn(**fields) -> list[dict]:
    """A two-turn dialogue whose second turn (a meme turn of speaker2) has `fields` changed."""
    turn = {"speaker": "speaker2", "text": "好", "meme": "001", "emotion": None, **fields}
    return [DIALOGUES[0][0], turn]


BAD_TURNS = [
    (with_turn(text=["你好"]), r"turn 1: 'text' must be a string or None, got list \['你好'\]"),
    (with_turn(text=5), r"turn 1: 'text' must be a string or None, got int 5"),
    (with_turn(meme=["001"]), r"turn 1: 'meme' must be a meme id \(a non-empty string\) or None, got list \['001'\]"),
    (with_turn(meme=1), r"turn 1: 'meme' must be a meme id .*, got int 1\."),
    (with_turn(meme=""), r"turn 1: 'meme' must be a meme id .*, got str ''"),
    (with_turn(emotion=2.7), r"turn 1: 'emotion' must be an integer id, a name or None, got float 2.7"),
    (with_turn(emotion=2.0), r"turn 1: 'emotion' must be an integer id, a name or None, got float 2.0"),
    (with_turn(emotion=True), r"turn 1: 'emotion' must be an integer id, a name or None, got bool True"),
    (with_turn(emotion=[1]), r"turn 1: 'emotion' must be an integer id, a name or None, got list \[1\]"),
    (with_turn(emotion="joyful"), r"turn 1: 'emotion' 'joyful' is not a known emotion name \(one of \['happy'"),
    (with_turn(emotion=len(EMOTIONS)), rf"turn 1: 'emotion' id {len(EMOTIONS)} is out of range"),
    (with_turn(meme=None, emotion="happy"), r"turn 1: 'emotion' is given for a turn without a meme, got str 'happy'"),
    (with_turn(img_id="002"), r"turn 1: unknown field\(s\) \['img_id'\]; a turn has the fields \['speaker'"),
    (with_turn(speaker=["speaker2"]), r"turn 1: 'speaker' must be 'speaker1' or 'speaker2', got \['speaker2'\]"),
    ([DIALOGUES[0][0], ["speaker2", "好"]], r"turn 1: a turn must be a dict, got list"),
]


@pytest.mark.parametrize("dialogue, message", BAD_TURNS)
def test_a_bad_field_is_named_with_its_dialogue_and_turn_by_every_entry_point(processor, dialogue, message):
    with pytest.raises(ValueError, match=f"^dialogue 0, {message}"):
        processor(dialogue)
    with pytest.raises(ValueError, match=f"^dialogue 1, {message}"):
        processor([DIALOGUES[1], dialogue])
    with pytest.raises(ValueError, match=f"^dialogue 2, {message}"):
        processor.encode_dialogue(dialogue, dialogue_index=2)
    with pytest.raises(ValueError, match=f"^dialogue 3, {message}"):
        processor.encode_windows(dialogue, dialogue_index=3)
    with pytest.raises(ValueError, match=f"^dialogue 4, {message}"):
        processor.check_dialogue(dialogue, dialogue_index=4)


def test_emotion_ids_are_integers_or_known_names(processor):
    assert processor.emotion_id(2, "here") == 2 == processor.emotion_id(np.int64(2), "here")
    assert processor.emotion_id("sad", "here") == EMOTIONS.index("sad")
    assert processor.emotion_id(None, "here") == IGNORE_INDEX
    for bad in (2.7, 2.0, True, False, "2", [2]):
        with pytest.raises(ValueError, match=r"^here: 'emotion'"):
            processor.emotion_id(bad, "here")


def test_speaker_of_a_non_turn_is_named(processor):
    with pytest.raises(ValueError, match=r"^turn 4: a turn must be a dict, got str 'speaker1'"):
        processor.speaker_of("speaker1", "turn 4")
    assert processor.speaker_of({"speaker": "[speaker2]"}, "turn 4") == "speaker2"


@pytest.mark.parametrize(
    "dialogues, message",
    [
        (5, r"Expected a dialogue .* or a batch of dialogues .*, got int 5"),
        ("你好", r"Expected a dialogue .*, got str '你好'"),
        (DIALOGUES[0][0], r"Expected a dialogue .*, got dict"),
        ([1], r"dialogue 0: a dialogue must be a non-empty list of turns, got int 1"),
        ([DIALOGUES[0], 1], r"dialogue 1: a dialogue must be a non-empty list of turns, got int 1"),
        ([DIALOGUES[0], "hi"], r"dialogue 1: a dialogue must be a non-empty list of turns, got str 'hi'"),
        ([DIALOGUES[0], DIALOGUES[1][0]], r"dialogue 1: a dialogue must be a non-empty list of turns, got dict"),
        ([DIALOGUES[1][0], DIALOGUES[1]], r"dialogue 0, turn 1: a turn must be a dict, got list"),
    ],
)
def test_inputs_of_the_wrong_shape_are_named(processor, dialogues, message):
    with pytest.raises(ValueError, match=message):
        processor(dialogues)


def test_dialogue_encoders_name_a_dialogue_that_is_not_a_list(processor):
    for bad in (None, 5, "你好", DIALOGUES[0][0]):
        with pytest.raises(ValueError, match=r"^dialogue 2: a dialogue must be a non-empty list of turns"):
            processor.encode_dialogue(bad, dialogue_index=2)
        with pytest.raises(ValueError, match=r"^dialogue 2: a dialogue must be a non-empty list of turns"):
            processor.encode_windows(bad, dialogue_index=2)


def test_an_unknown_keyword_is_refused_not_ignored(processor):
    with pytest.raises(TypeError, match="unexpected keyword argument 'add_generation_promt'"):
        processor(DIALOGUES, add_generation_promt=True)


def test_padding_side_is_left_or_right(processor):
    with pytest.raises(ValueError, match=r"padding_side must be one of \('right', 'left'\), got 'middle'"):
        processor(DIALOGUES, padding_side="middle")
