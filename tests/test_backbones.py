"""Starting points in the layouts users download: CDial-GPT (OpenAI-GPT), CDial-GPT2 (GPT-2) and Qwen2 hub folders,
and modern decoders (Qwen2, Llama) from a config. Random weights at a small width, built offline."""

import json
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, DIALOGUES, EMOTIONS, MEME_IDS, run_script
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    OpenAIGPTConfig,
    OpenAIGPTLMHeadModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from configuration_mod_gpt import MODGPTConfig
from modeling_mod_gpt import MODGPTForMemeDialogue, load_text_config
from pipeline_mod import MemeDialoguePipeline
from processing_mod import MODProcessor

CDIAL_GPT = Path(__file__).parent / "fixtures" / "cdial_gpt"
SMALL = {"n_embd": 32, "n_layer": 2, "n_head": 2}
MOD_KWARGS = {"meme_encoder_name": "test_efficientnet", "meme_feature_size": 256, "num_emotions": len(EMOTIONS)}
TEXT_DIALOGUE = [{**turn, "meme": None, "emotion": None} for turn in DIALOGUES[0] if turn["text"]]


def cdial_gpt_folder(folder: Path, architecture: str) -> Path:
    """CDial-GPT_LCCC-base (OpenAI-GPT) or CDial-GPT2_LCCC-base (GPT-2) as its hub repo lays it out, at a small width:
    the real config keys and vocabulary, random weights pickled in `pytorch_model.bin`."""
    folder.mkdir()
    real = json.loads((CDIAL_GPT / "config.json").read_text())
    if architecture == "openai-gpt":
        config = {**real, **SMALL}  # as the repository ships it: OpenAI-GPT keys, no model_type
        model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(**config))
    else:
        config = GPT2Config(vocab_size=real["vocab_size"], n_positions=real["n_positions"], **SMALL).to_dict()
        model = GPT2LMHeadModel(GPT2Config(**config))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "vocab.txt").write_bytes((CDIAL_GPT / "vocab.txt").read_bytes())
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def qwen2_folder(folder: Path) -> Path:
    """A Qwen2 hub folder: its own byte-level BPE `tokenizer.json` and an untied `lm_head`, in safetensors."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"])
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=False,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def mod_gpt_from(folder: Path) -> tuple[MODGPTForMemeDialogue, MODProcessor]:
    processor = MODProcessor.from_text_backbone(
        str(folder), meme_encoder_name="test_efficientnet", emotion_names=EMOTIONS
    )
    model = MODGPTForMemeDialogue.from_text_backbone(
        str(folder), vocab_size=len(processor.tokenizer), **MOD_KWARGS, **processor.special_token_ids
    )
    model.add_memes(MEME_IDS, pixel_values=torch.randn(len(MEME_IDS), 3, 32, 32))
    return model.eval(), processor


@pytest.fixture(scope="module", params=["openai-gpt", "gpt2"])
def cdial(request, tmp_path_factory):
    folder = cdial_gpt_folder(tmp_path_factory.mktemp("cdial") / f"CDial-{request.param}", request.param)
    return folder, *mod_gpt_from(folder)


def test_cdial_gpt_vocabulary_ids_are_kept_and_its_tokens_reused(cdial):
    folder, _, processor = cdial
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert processor.tokenizer.convert_tokens_to_ids(vocab) == list(range(len(vocab))) == list(range(13088))
    tokens = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[speaker1]", "[speaker2]"]
    assert processor.tokenizer.convert_tokens_to_ids(tokens) == [0, 1, 2, 3, 13086, 13087]
    ids = processor.special_token_ids
    assert (ids["pad_token_id"], ids["speaker1_token_id"], ids["speaker2_token_id"]) == (1, 13086, 13087)
    new = sorted(ids[f"{name}_token_id"] for name in ("bos", "eos", "image", "tag"))
    assert new == [13088, 13089, 13090, 13091] and len(processor.tokenizer) == 13092  # appended, nothing else
    assert processor.tokenizer.tokenize("你好[speaker1]") == ["你", "好", "[speaker1]"]


def test_cdial_gpt_decoder_tensors_are_all_loaded(cdial):
    folder, model, _ = cdial
    saved = torch.load(folder / "pytorch_model.bin", weights_only=True)
    prefix = "transformer."  # the base model of OpenAIGPTLMHeadModel and GPT2LMHeadModel
    decoder = model.model.language_model.state_dict()
    loaded = {name.removeprefix(prefix): tensor for name, tensor in saved.items() if name.startswith(prefix)}
    assert set(loaded) == set(decoder)
    for name, tensor in loaded.items():
        assert torch.equal(decoder[name][: tensor.shape[0]], tensor), name  # embeddings: the old rows, then new ones
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as the checkpoint is
    assert torch.equal(model.lm_head.weight[:13088], saved["lm_head.weight"])


def test_segment_embeddings_start_from_the_speaker_and_image_rows(cdial):
    _, model, processor = cdial
    ids = processor.special_token_ids
    rows = [ids["speaker1_token_id"], ids["speaker2_token_id"], ids["image_token_id"]]
    assert torch.equal(model.model.segment_embeddings.weight, model.get_input_embeddings().weight[rows])


def test_step_zero_computes_what_the_pretrained_model_computes_for_the_speakers(cdial):
    """CDial-GPT takes each position's speaker as `token_type_ids` = the speaker's token id, embedded by the token
    embedding; MOD-GPT's segment embeddings start there, so both give the same logits on the same dialogue."""
    folder, model, processor = cdial
    pretrained = AutoModelForCausalLM.from_pretrained(folder, config=load_text_config(str(folder))).eval()
    pretrained.resize_token_embeddings(len(processor.tokenizer))
    with torch.no_grad():  # the appended rows as MOD-GPT drew them (resizing draws them at random)
        pretrained.get_input_embeddings().weight.copy_(model.get_input_embeddings().weight)
    inputs = processor(TEXT_DIALOGUE, label_turns="all")
    speaker_ids = torch.tensor([processor.token_ids["[speaker1]"], processor.token_ids["[speaker2]"]])
    with torch.no_grad():
        expected = pretrained(inputs["input_ids"], token_type_ids=speaker_ids[inputs["token_type_ids"]]).logits
        logits = model(input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"]).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_a_qwen2_hub_folder_keeps_its_tokenizer_decoder_and_untied_head(tmp_path):
    folder = qwen2_folder(tmp_path / "Qwen2-tiny")
    model, processor = mod_gpt_from(folder)
    original = PreTrainedTokenizerFast.from_pretrained(folder)
    vocab = original.get_vocab()
    assert {token: processor.tokenizer.convert_tokens_to_ids(token) for token in vocab} == vocab
    assert processor.tokenizer.encode("你好啊", add_special_tokens=False) == original.encode("你好啊")
    assert min(processor.special_token_ids.values()) >= len(original)
    assert model.config.tie_word_embeddings is False and model.config.text_config.tie_word_embeddings is False
    reference = Qwen2ForCausalLM.from_pretrained(folder)
    decoder = model.model.language_model.state_dict()
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(decoder[name][: tensor.shape[0]], tensor), name
    assert torch.equal(model.lm_head.weight[: len(original)], reference.lm_head.weight)
    assert not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)

    model.save_pretrained(tmp_path / "saved")
    processor.save_pretrained(tmp_path / "saved")
    reloaded = MODGPTForMemeDialogue.from_pretrained(tmp_path / "saved")
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
    assert MODProcessor.from_pretrained(tmp_path / "saved").tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    reply = reloaded.respond(DIALOGUES[1], processor, max_new_tokens=3)
    assert isinstance(reply["text"], str) and reply["meme"] in (None, *MEME_IDS)
    chat = MemeDialoguePipeline(model=reloaded, processor=processor)  # what the web chat runs
    assert chat(DIALOGUES[1], max_new_tokens=3, use_meme=True)["meme"] in MEME_IDS


@pytest.mark.parametrize(
    "text_config",
    [
        Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, max_position_embeddings=512),
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, max_position_embeddings=512),
    ],
    ids=["qwen2", "llama"],
)  # fmt: skip
def test_modern_decoders_train_generate_and_reload(text_config, processor, tmp_path):
    config = MODGPTConfig(
        text_config={**text_config.to_dict(), "vocab_size": len(processor.tokenizer)},
        **MOD_KWARGS,
        emotion_names=EMOTIONS,
        meme_bank_ids=[],
        **processor.special_token_ids,
    )
    model = MODGPTForMemeDialogue(config)
    assert model.config.tie_word_embeddings is False  # as the decoder's config says
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    model.add_memes(MEME_IDS, pixel_values=torch.randn(len(MEME_IDS), 3, 32, 32))
    inputs = processor(DIALOGUES, label_turns="all")
    model(**inputs).loss.backward()
    assert model.lm_head.weight.grad is not None and model.model.segment_embeddings.weight.grad is not None
    model.eval().save_pretrained(tmp_path)
    reloaded = MODGPTForMemeDialogue.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)
    reply = reloaded.respond(DIALOGUES[0], processor, max_new_tokens=3)
    assert isinstance(reply["text"], str) and reply["meme"] in (None, *MEME_IDS)


@pytest.mark.slow
def test_train_and_evaluate_from_a_qwen2_hub_folder_and_from_a_llama_config(sample_dataset, tmp_path):
    qwen2 = qwen2_folder(tmp_path / "Qwen2-tiny")
    llama = tmp_path / "llama.json"
    llama.write_text(
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2).to_json_string()
    )
    common = ["--dataset", str(sample_dataset), "--meme_encoder", "test_efficientnet", "--max_steps", "2"]
    for name, start in (("qwen2", ["--init_from", str(qwen2)]), ("llama", ["--model_config", str(llama)])):
        run = tmp_path / name
        trained = run_script("train.py", *common, *start, "--output_dir", str(run))
        assert trained.returncode == 0, trained.stderr[-3000:]
        evaluated = run_script(
            "evaluate_mod.py", "--model", str(run), "--dataset", str(sample_dataset), "--max_new_tokens", "4", "--limit", "8",
            "--output", str(tmp_path / f"{name}_results.json"),
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        assert "Table 5" in evaluated.stdout
    saved = json.loads((tmp_path / "qwen2" / "config.json").read_text())
    assert saved["text_config"]["model_type"] == "qwen2" and saved["tie_word_embeddings"] is False
    assert json.loads((tmp_path / "llama" / "config.json").read_text())["text_config"]["model_type"] == "llama"
