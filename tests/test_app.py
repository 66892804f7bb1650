"""The web chat (app.py): its one call into the pipeline, its argument checks, and the page in a real browser."""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import datasets
import pytest
import torch
from conftest import DIALOGUES, REPO_ROOT, run_script, tiny_config
from PIL import Image
from playwright.sync_api import expect, sync_playwright

import app
from modeling_mod_gpt import MODGPTForMemeDialogue
from pipeline_mod import MemeDialoguePipeline

SCREENSHOT = os.environ.get("MOD_APP_SCREENSHOT")  # e.g. docs/app.png: where to save a screenshot of the chat
MEMES_LISTED = 4


def find_chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_ask_model_offers_the_chats_memes_without_keeping_them(model, processor):
    pipe = MemeDialoguePipeline(model=model, processor=processor)
    bank_ids, bank_features = model.meme_bank_ids, model.meme_bank_features.clone()
    chat_memes = {"new-1": Image.new("RGB", (48, 48), "red"), "new-2": Image.new("RGB", (48, 48), "blue")}
    dialogue = [{"speaker": "speaker1", "text": "你好", "meme": "new-2", "emotion": None}]
    sampling = app.Sampling(top_p=0.9, temperature=0.7, max_new_tokens=3, memes_listed=len(bank_ids) + 2)

    reply = app.ask_model(pipe, dialogue, chat_memes, sampling)

    ranked_ids = [meme for meme, _ in reply.ranked_memes]
    scores = [score for _, score in reply.ranked_memes]
    assert sorted(ranked_ids) == sorted(bank_ids + list(chat_memes))
    assert scores == sorted(scores, reverse=True)
    assert model.meme_bank_ids == bank_ids
    assert torch.equal(model.meme_bank_features, bank_features)
    with pytest.raises(ValueError, match="new-2"):
        app.ask_model(pipe, dialogue, {}, sampling)  # the next chat does not see this chat's memes


@pytest.mark.slow
@pytest.mark.parametrize("missing", ["--model", "--dataset"])
def test_app_refuses_a_missing_folder_before_loading(missing, tmp_path):
    folders = {"--model": str(tmp_path), "--dataset": str(tmp_path), missing: str(tmp_path / "absent")}
    result = run_script("app.py", *(item for pair in folders.items() for item in pair))
    assert result.returncode == 2
    assert missing in result.stderr and str(tmp_path / "absent") in result.stderr
    assert "Loading weights" not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def always_meme_model(processor, sample_dataset, tmp_path_factory) -> Path:
    """
    A tiny saved MOD-GPT whose usage head always attaches a meme; its bank holds the sample's seen memes, so the app
    adds the unseen ones from the dataset.
    """
    torch.manual_seed(0)
    model = MODGPTForMemeDialogue(tiny_config(processor)).eval()
    memes = next(iter(datasets.load_dataset(str(sample_dataset), "memes").values()))
    model.add_new_memes(memes.filter(lambda row: row["seen"]), processor.image_processor)
    with torch.no_grad():
        model.usage_head.out_proj.weight.zero_()
        model.usage_head.out_proj.bias.copy_(torch.tensor([-10.0, 10.0]))
    folder = tmp_path_factory.mktemp("app") / "model"
    MemeDialoguePipeline(model=model, processor=processor).save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"app.py exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"app.py did not answer at {url} within {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def app_url(always_meme_model, sample_dataset, tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("app-log") / "app.log"
    command = [sys.executable, str(REPO_ROOT / "app.py"), "--model", str(always_meme_model)]
    command += ["--dataset", str(sample_dataset), "--port", str(port)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "0"}
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment, cwd=REPO_ROOT)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", server, log)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser_page(app_url):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not found (/usr/bin/chromium, or chromium on PATH): install Debian's chromium package")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(app_url)
        yield page
        browser.close()


def send(page, text: str = "", meme_index: int | None = None) -> None:
    """Send a message from the page (text, and the gallery's meme `meme_index`), and wait for the reply."""
    replies = page.locator("#dialogue .bot-row").count()
    if meme_index is not None:
        thumbnail = page.locator("#memes .thumbnail-item").nth(meme_index)
        meme = thumbnail.inner_text().strip()
        thumbnail.click()
        page.locator("#picked", has_text=meme).wait_for()
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()
    page.locator("#dialogue .bot-row").nth(replies).wait_for(timeout=120_000)


def assert_loads_as_image(page, source: str) -> None:
    response = page.request.get(source)
    assert response.status == 200, source
    assert response.headers["content-type"].startswith("image/"), response.headers
    assert Image.open(io.BytesIO(response.body())).size[0] > 0


@pytest.mark.slow
def test_chat_in_browser(browser_page, sample_dataset, tmp_path):
    page = browser_page
    memes = next(iter(datasets.load_dataset(str(sample_dataset), "memes").values()))
    expect(page.locator("#memes .thumbnail-item")).to_have_count(len(memes))  # seen memes and unseen ones

    page.locator("#send").click()  # nothing to send: a message, and the chat goes on
    page.get_by_text("Type a message or pick a meme to send.").wait_for()

    listed = page.locator("#memes-listed input[type=number]")
    listed.fill(str(MEMES_LISTED))
    listed.press("Enter")
    send(page, text="今天考试考砸了")
    send(page, meme_index=3)

    user_images = page.locator("#dialogue .user-row").nth(1).locator("img")
    assert user_images.count() == 1
    assert_loads_as_image(page, user_images.first.get_attribute("src"))
    replies = page.locator("#dialogue .bot-row")
    expect(replies).to_have_count(2)
    for index in range(replies.count()):  # the test model attaches a meme to every reply
        reply = replies.nth(index)
        assert "meme " in reply.inner_text()
        assert reply.locator("img").count() == 1
        assert_loads_as_image(page, reply.locator("img").first.get_attribute("src"))

    expect(page.locator("#ranked .thumbnail-item")).to_have_count(MEMES_LISTED)
    ranked = [item.inner_text().strip() for item in page.locator("#ranked .thumbnail-item").all()]
    scores = [float(caption.split("·")[1]) for caption in ranked]
    assert scores == sorted(scores, reverse=True)
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT)

    # A new meme from a file: in this chat's gallery, sent, and shown in the dialogue.
    Image.new("RGB", (64, 64), "purple").save(tmp_path / "mine.png")
    page.get_by_text("Add a meme of your own").click()
    page.locator("#upload input[type=file]").set_input_files(tmp_path / "mine.png")
    page.locator("#add-meme").click()
    page.locator("#upload-note", has_text="new-1").wait_for()
    expect(page.locator("#memes .thumbnail-item")).to_have_count(len(memes) + 1)
    send(page, meme_index=len(memes))
    sent = page.locator("#dialogue .user-row").last
    assert "meme new-1" in sent.inner_text()
    assert_loads_as_image(page, sent.locator("img").first.get_attribute("src"))

    page.locator("#reset").click()
    expect(replies).to_have_count(0)
    send(page, text=DIALOGUES[0][0]["text"])
    expect(replies).to_have_count(1)
