"""The meme-dialogue pipeline and the terminal chat, on a saved tiny model."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import DIALOGUES, MEME_IDS, REPO_ROOT
from PIL import Image
from test_processor import long_dialogue

import chat
from pipeline_mod import MemeDialoguePipeline


@pytest.fixture
def saved_model(model, processor, tmp_path):
    folder = tmp_path / "saved"
    MemeDialoguePipeline(model=model, processor=processor).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_pipeline_loads_from_saved_folder_in_fresh_process(saved_model, tmp_path):
    assert json.loads((saved_model / "config.json").read_text())["custom_pipelines"]["meme-dialogue"]
    script = textwrap.dedent(
        f"""
        import json
        import torch
        from PIL import Image
        from transformers import pipeline
        torch.manual_seed(0)
        chat = pipeline(model={str(saved_model)!r}, trust_remote_code=True, memes={{"new": Image.new("RGB", (40, 40))}})
        assert type(chat).__module__.startswith("transformers_modules."), type(chat).__module__
        dialogues = {DIALOGUES!r}
        one = chat(dialogues[0], max_new_tokens=4, top_k=3)
        many = chat(dialogues, batch_size=2, max_new_tokens=4)
        assert len(many) == 3 and "new" in chat.model.meme_bank_ids
        for reply in [one, *many]:
            assert set(reply) == {{"speaker", "text", "meme", "meme_image", "emotion", "top_memes"}}, reply
        assert len(one["top_memes"]) == 3
        errors = []
        for bad in ([], [{{"speaker": "speaker1", "text": "hi", "meme": "999"}}]):
            try:
                chat(bad)
            except ValueError as error:
                errors.append(str(error))
        print(json.dumps(errors))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert "non-empty list" in errors[0] and "turn 0: 'meme' '999'" in errors[1]


def test_pipeline_returns_meme_image_for_chosen_meme(model, processor):
    images = {meme: Image.new("RGB", (32, 32), (i * 20, 0, 0)) for i, meme in enumerate(MEME_IDS)}
    model.usage_head.out_proj.bias.data[:] = model.usage_head.out_proj.bias.data.new_tensor([-50.0, 50.0])
    reply = MemeDialoguePipeline(model=model, processor=processor, memes=images)(DIALOGUES[1], max_new_tokens=3)
    assert reply["meme"] in MEME_IDS and reply["meme_image"] is images[reply["meme"]]


def test_chat_keeps_running_after_bad_input_and_resets(model, processor):
    lines = ["你好", "看这个 #999", "/memes", "哈哈 #001", "/reset", "在吗", "/quit", "never read"]
    written = []
    chat.chat(model, processor, {"001": "happy.png"}, lines, write=written.append, max_new_tokens=3)
    replies = [line for line in written if line.startswith("MOD-GPT:")]
    assert len(replies) == 3
    assert any(line.startswith("error:") and "'999'" in line for line in written)
    assert " ".join(MEME_IDS) in written and "(new dialogue)" in written
    assert chat.parse_message("太好了 #042", "speaker1") == {
        "speaker": "speaker1",
        "text": "太好了",
        "meme": "042",
        "emotion": None,
    }
    assert chat.parse_message("#042", "speaker1")["text"] is None


def test_chat_cli_in_terminal_session(saved_model):
    """chat.py as a user runs it: lines on stdin, replies on stdout, an error does not end it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "chat.py"), "--model", str(saved_model), "--max_new_tokens", "3"],
        input="你好\n#999\n今天好开心\n/quit\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("MOD-GPT:") == 2 and "error:" in result.stdout


# Long histories -----------------------------------------------------------------------------------------------------


@pytest.fixture
def recorded_lengths(model, monkeypatch):
    """The prompt lengths `generate` gets, with its `max_new_tokens`, and the largest position the decoder embeds."""
    recorded = {"prompts": [], "positions": []}
    generate = model.generate

    def recording_generate(**kwargs):
        recorded["prompts"].append((kwargs["input_ids"].shape[1], kwargs["max_new_tokens"]))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    hook = model.transformer.wpe.register_forward_hook(
        lambda module, args, output: recorded["positions"].append(int(args[0].max()) + 1)
    )
    yield recorded
    hook.remove()


@pytest.mark.parametrize("max_new_tokens", [8, 32])
def test_long_history_keeps_the_latest_turns_that_fit_the_decoder(model, processor, recorded_lengths, max_new_tokens):
    history = long_dialogue()  # over 800 tokens, beyond the processor's max_length and the decoder's 256 positions
    positions = model.config.text_config.n_positions
    model.usage_head.out_proj.bias.data = torch.tensor([-50.0, 50.0])  # attach a meme: the longest closing pass
    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    reply = model.respond(history, processor, **kwargs)
    pipeline_reply = MemeDialoguePipeline(model=model, processor=processor)(history, **kwargs)
    assert reply["meme"] is not None and pipeline_reply["meme"] is not None
    limit = positions - max_new_tokens
    expected = processor.encode_dialogue(history, add_generation_prompt=True, max_length=limit)["input_ids"]
    assert recorded_lengths["prompts"] == [(len(expected), max_new_tokens)] * 2
    assert len(expected) > limit - max(len(processor.encode_dialogue([turn])["input_ids"]) for turn in history)
    assert max(recorded_lengths["positions"]) <= positions


def test_overlong_latest_turn_is_an_error_with_its_numbers(model, processor):
    long_turn = {"speaker": "speaker1", "text": "好" * 236, "meme": None, "emotion": None}  # 240 tokens, +2 prompt
    dialogue = [*DIALOGUES[1], long_turn]
    message = r"dialogue 0, turn 2: 'text' encodes to 242 tokens .*more than max_length=240"
    with pytest.raises(ValueError, match=message):
        model.respond(dialogue, processor, max_new_tokens=16)
    with pytest.raises(ValueError, match=message):
        MemeDialoguePipeline(model=model, processor=processor)(dialogue, max_new_tokens=16)
    assert model.respond(dialogue, processor, max_new_tokens=14)["speaker"] == "speaker2"


def test_chat_reports_an_overlong_message_and_keeps_the_dialogue(model, processor, monkeypatch):
    dialogues = []
    respond = model.respond
    monkeypatch.setattr(
        model, "respond", lambda dialogue, *a, **k: dialogues.append(dialogue) or respond(dialogue, *a, **k)
    )
    lines = ["你好", "好" * 300, "哈哈哈"]
    written = []
    chat.chat(model, processor, {}, lines, write=written.append, max_new_tokens=4)
    errors = [line for line in written if line.startswith("error:")]
    assert len(errors) == 1 and "turn 2: 'text' encodes to 306 tokens" in errors[0] and "max_length=252" in errors[0]
    assert len([line for line in written if line.startswith("MOD-GPT:")]) == 2
    assert [turn["text"] for turn in dialogues[-1][::2]] == ["你好", "哈哈哈"] and len(dialogues[-1]) == 3
