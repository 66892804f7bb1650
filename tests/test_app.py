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
from PIL import Image, ImageDraw
from playwright.sync_api import expect, sync_playwright

import app
from modeling_mod_gpt import MODGPTForMemeDialogue
from pipeline_mod import MemeDialoguePipeline

SCREENSHOT = os.environ.get("MOD_APP_SCREENSHOT")  # e.g. docs/app.png: where to save a screenshot of the chat
MEMES_LISTED = 4


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


def always_meme_model(processor, sample_dataset: Path, folder: Path) -> Path:
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
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def app_folders(request, tmp_path_factory) -> tuple[str, str]:
    """
    The model and dataset the page runs on: the folders named by MOD_APP_MODEL and MOD_APP_DATASET (the README's
    screenshot uses the `make demo` output; such a model attaches memes only sometimes, so a run passes when one of
    its replies does), else a tiny model that always attaches a meme and the built sample.
    """
    dataset = os.environ.get("MOD_APP_DATASET") or str(request.getfixturevalue("sample_dataset"))
    model = os.environ.get("MOD_APP_MODEL")
    if model is None:
        processor, sample_dataset = request.getfixturevalue("processor"), request.getfixturevalue("sample_dataset")
        model = str(always_meme_model(processor, sample_dataset, tmp_path_factory.mktemp("app") / "model"))
    return model, dataset


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
def chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(
        "no Chromium to drive: /usr/bin/chromium is missing and none is on PATH (Debian: apt-get install chromium)"
    )


@pytest.fixture(scope="module")
def app_url(app_folders, tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("app-log") / "app.log"
    model, dataset = app_folders
    command = [sys.executable, str(REPO_ROOT / "app.py"), "--model", model, "--dataset", dataset, "--port", str(port)]
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
def browser_page(chromium, app_url):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
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


def add_meme(page, path: Path) -> None:
    """Upload the image at `path` as a new meme of this chat."""
    page.get_by_text("Add a meme of your own").click()
    page.locator("#upload input[type=file]").set_input_files(path)
    page.locator("#add-meme").click()


@pytest.mark.slow
def test_chat_in_browser(browser_page, app_folders, tmp_path):
    page = browser_page
    memes = next(iter(datasets.load_dataset(app_folders[1], "memes").values()))
    gallery = page.locator("#memes .thumbnail-item")
    expect(gallery).to_have_count(len(memes))  # the model's bank and the dataset's unseen memes

    listed = page.locator("#memes-listed input[type=number]")
    listed.fill(str(MEMES_LISTED))
    listed.press("Enter")
    send(page, text="今天考试考砸了")
    send(page, meme_index=3)
    sticker = Image.new("RGB", (64, 64), "gold")
    ImageDraw.Draw(sticker).ellipse((8, 8, 56, 56), fill="white", outline="black", width=3)
    sticker.save(tmp_path / "mine.png")
    add_meme(page, tmp_path / "mine.png")
    page.locator("#upload-note", has_text="new-1").wait_for()
    expect(gallery).to_have_count(len(memes) + 1)
    send(page, text="哈哈", meme_index=len(memes))

    sent = page.locator("#dialogue .user-row")
    expect(sent).to_have_count(3)
    assert "meme new-1" in sent.nth(2).inner_text()
    for index in (1, 2):
        assert_loads_as_image(page, sent.nth(index).locator("img").first.get_attribute("src"))
    replies = page.locator("#dialogue .bot-row")
    expect(replies).to_have_count(3)
    with_meme = [reply for reply in replies.all() if "meme " in reply.inner_text()]
    assert with_meme, "no reply with a meme"  # the test model attaches one to every reply
    for reply in with_meme:
        expect(reply.locator("img")).to_have_count(1)
        assert_loads_as_image(page, reply.locator("img").get_attribute("src"))
    expect(page.locator("#ranked .thumbnail-item")).to_have_count(MEMES_LISTED)
    ranked = [item.inner_text().strip() for item in page.locator("#ranked .thumbnail-item").all()]
    scores = [float(caption.split("·")[1]) for caption in ranked]
    assert scores == sorted(scores, reverse=True)
    if SCREENSHOT:
        page.get_by_text("Add a meme of your own").click()  # folded again
        gallery.first.scroll_into_view_if_needed()
        with_meme[-1].scroll_into_view_if_needed()
        page.screenshot(path=SCREENSHOT, full_page=True)

    page.locator("#send").click()  # nothing to send: a message, and the chat goes on
    page.get_by_text("Type a message or pick a meme to send.").wait_for()

    page.locator("#reset").click()
    expect(replies).to_have_count(0)
    send(page, text=DIALOGUES[0][0]["text"])
    expect(replies).to_have_count(1)
