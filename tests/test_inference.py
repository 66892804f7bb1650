"""The meme-dialogue pipeline and the terminal chat, on a saved tiny model."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import DIALOGUES, MEME_IDS, REPO_ROOT
from PIL import Image

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
