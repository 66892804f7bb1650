"""MODProcessor: vocabulary, sequence layout, truncation, padding, decoding."""

import torch
from conftest import DIALOGUES, EMOTIONS

from processing_mod import IGNORE_INDEX, MODProcessor


def tokens(processor, ids):
    return processor.tokenizer.convert_ids_to_tokens(ids)


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
