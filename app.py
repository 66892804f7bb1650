"""A web chat with a trained MOD-GPT: its replies show their meme images, as the paper's figures do.

    python app.py --model demo_output/model --dataset demo_output/data [--port 7860] [--host 127.0.0.1]
                  [--concurrency 4] [--max_file_size 10mb]

`--model` is a saved MOD-GPT folder (or `hf://owner/name` on the hub), `--dataset` a dataset folder built by
`python -m mod_dataset build`: its `memes` config gives the meme images, and its memes missing from the model's bank
(the unseen ones) become candidates too. A model folder with this file beside it is a Hugging Face Space.

The page sends text, a meme picked from the gallery, or both; an uploaded image becomes a new meme of this chat
only (encoded by the model's meme encoder once, when it is added, as unseen memes are). The sliders set the paper's
sampling (top-p, temperature) and how many ranked memes are listed with their scores. `--concurrency` chats are
answered at once (one model shared by all), `--max_file_size` bounds an upload.
"""

import argparse
import html
import itertools
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import gradio as gr
import torch
from PIL import Image, UnidentifiedImageError

from pipeline_mod import (
    DTYPES,
    HUB_PREFIX,
    MemeDialoguePipeline,
    default_device,
    device_argument,
    load_mod_gpt,
    load_mod_gpt_config,
)

USER, MODEL = "speaker1", "speaker2"
UPLOAD_PREFIX = "new-"
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_FILE_SIZE = "10mb"
FILE_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


@dataclass
class Sampling:
    top_p: float
    temperature: float
    max_new_tokens: int
    memes_listed: int


@dataclass
class Reply:
    text: str
    meme: str | None
    emotion: str | int | None
    ranked_memes: list[tuple[str, float]]  # (meme id, score), best first: higher scores rank higher


@dataclass(frozen=True)
class Upload:
    """A meme uploaded to one chat: its file (only shown on the page) and its raw feature, encoded once at upload."""

    path: str
    feature: torch.Tensor


@dataclass(frozen=True)
class Chat:
    """
    One session's chat, kept in a `gr.State` (each browser tab or API client has its own): the turns as the pipeline
    takes them, the same as the page shows them, and the chat's uploaded memes by id. Handlers never change one: they
    return a new one, so a refused input leaves the chat as it was.
    """

    dialogue: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    uploads: dict[str, Upload] = field(default_factory=dict)


# The model ----------------------------------------------------------------------------------------------------------


def ask_model(
    pipe: MemeDialoguePipeline,
    dialogue: list[dict],
    chat_memes: Mapping[str, Image.Image | torch.Tensor],
    sampling: Sampling,
) -> Reply:
    """
    The model's reply to `dialogue`, with this chat's own memes (id -> image, or raw feature from
    `pipe.encode_memes`) as candidates too. The only place that knows the pipeline's call arguments and output format.
    """
    output = pipe(
        dialogue,
        memes=dict(chat_memes) or None,
        num_memes=sampling.memes_listed,
        top_p=sampling.top_p,
        temperature=sampling.temperature,
        max_new_tokens=sampling.max_new_tokens,
    )
    ranked = [(entry["meme"], entry["score"]) for entry in output["top_memes"]]
    return Reply(output["text"], output["meme"], output["emotion"], ranked)


def open_meme_image(path: str, image_processor) -> Image.Image:
    """
    The image file at `path` as RGB, once its header has passed `image_processor.check_image` (pixels, size, aspect
    ratio): `Image.open` reads only the header, so a small file holding a huge image is refused before any pixel is
    decoded. A `ValueError` says why the file cannot be a meme. Pillow's `DecompressionBombWarning` is refused too where
    it is an error, as `main` makes it.
    """
    try:
        with Image.open(path) as image:
            image_processor.check_image(image)
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(
            "it is not an image this app can read: an empty image (0 x 0 pixels), a damaged file, or a format Pillow "
            "does not decode (SVG, for one)."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"it is too large to decode: {error}") from None
    except (OSError, EOFError, SyntaxError) as error:  # a damaged file (a ValueError says why on its own)
        raise ValueError(f"its pixels cannot be decoded ({type(error).__name__}: {error}).") from None


# Loading ------------------------------------------------------------------------------------------------------------


def file_size(text: str) -> int:
    """`10mb`, `512kb`, `2gb`, `1000b` (gradio's form) as a number of bytes; an `ArgumentTypeError` otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?b)\s*", text.lower())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file size such as 10mb, 512kb or 1gb.")
    return int(match[1]) * FILE_SIZE_UNITS[match[2]]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer.")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo_output/model", help="A saved MOD-GPT folder, or hf://owner/name.")
    parser.add_argument("--dataset", default="demo_output/data", help="A built MOD dataset folder (meme images).")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="Address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1: this machine only).",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        help="How many messages or uploads (of any chats) the model works on at once; more wait in the queue "
        f"(default {DEFAULT_CONCURRENCY}).",
    )
    parser.add_argument(
        "--max_file_size",
        type=file_size,
        default=DEFAULT_MAX_FILE_SIZE,
        help=f"The largest file a user may upload, e.g. 10mb, 512kb (default {DEFAULT_MAX_FILE_SIZE}).",
    )
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="Load the model with the code files saved in its folder."
    )
    parser.add_argument(
        "--device", type=device_argument, help="Where the model runs (default: the accelerator if any, else cpu)."
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="The model's weights and compute.")
    args = parser.parse_args(argv)
    if not args.model.startswith(HUB_PREFIX) and not Path(args.model).is_dir():
        parser.error(f"--model {args.model!r}: no such folder (train one with `make demo`, or name hf://owner/name).")
    if not Path(args.dataset).is_dir():
        parser.error(f"--dataset {args.dataset!r}: no such folder (build one with `python -m mod_dataset build`).")
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: not a port number (1-65535).")
    return args


def load_memes(dataset: str) -> datasets.Dataset:
    """The `memes` table of a built MOD dataset; a `ValueError` if the folder has none with images."""
    try:
        memes = next(iter(datasets.load_dataset(dataset, "memes").values()))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{dataset!r} has no readable `memes` config (is it a built MOD dataset?): {error}"
        ) from error
    if "image" not in memes.column_names:
        raise ValueError(f"{dataset!r}: its `memes` table has no `image` column.")
    return memes


def check_memes_cover_bank(bank_ids: list[str], memes: datasets.Dataset, dataset: str) -> None:
    """Every meme the model can reply with needs an image to show."""
    missing = sorted(set(bank_ids) - set(memes["meme_id"]))
    if missing:
        raise ValueError(
            f"{len(missing)} memes of the model's bank have no image in {dataset!r} (e.g. {missing[:5]}): "
            "give the dataset the model was trained on."
        )


def write_meme_images(memes: datasets.Dataset, folder: Path) -> dict[str, str]:
    """Each meme's image saved as a PNG file in `folder` (the page serves files): meme id -> file path."""
    files = {}
    for index, row in enumerate(memes):
        files[row["meme_id"]] = str(folder / f"meme-{index:05d}.png")
        row["image"].save(files[row["meme_id"]])
    return files


def load_app(args: argparse.Namespace) -> tuple[MemeDialoguePipeline, dict[str, str]]:
    """The pipeline (the dataset's memes in its bank) and meme id -> image file, or a `ValueError`/`OSError`."""
    config = load_mod_gpt_config(args.model, args.trust_remote_code)
    memes = load_memes(args.dataset)
    check_memes_cover_bank(config.meme_bank_ids, memes, args.dataset)
    model, processor = load_mod_gpt(args.model, args.trust_remote_code, config=config)
    device = args.device or default_device()
    pipe = MemeDialoguePipeline(model=model, processor=processor, memes=memes, device=device, dtype=args.dtype)
    return pipe, write_meme_images(memes, Path(tempfile.mkdtemp(prefix="mod-gpt-memes-")))


# The page -----------------------------------------------------------------------------------------------------------


def gallery_items(meme_files: Mapping[str, str]) -> list[tuple[str, str]]:
    return [(path, meme) for meme, path in meme_files.items()]


def meme_content(meme: str, caption: str, meme_files: Mapping[str, str]) -> list:
    """A meme as message content: its image with `caption` as text and alt text."""
    return [{"path": meme_files[meme], "alt_text": caption}, caption]


def user_message(turn: dict, meme_files: Mapping[str, str]) -> dict:
    content = [turn["text"]] if turn["text"] else []
    if turn["meme"] is not None:
        content += meme_content(turn["meme"], f"meme {turn['meme']}", meme_files)
    return {"role": "user", "content": content}


def model_message(reply: Reply, meme_files: Mapping[str, str]) -> dict:
    content = [reply.text] if reply.text else []
    if reply.meme is not None:
        emotion = "" if reply.emotion is None else f" · {reply.emotion}"
        content += meme_content(reply.meme, f"meme {reply.meme}{emotion}", meme_files)
    return {"role": "assistant", "content": content or ["(an empty reply)"]}


def ranked_items(reply: Reply, meme_files: Mapping[str, str]) -> list[tuple[str, str]]:
    return [(meme_files[meme], f"{meme} · {score:.3f}") for meme, score in reply.ranked_memes]


def new_meme_id(taken: Collection[str]) -> str:
    """The first id `new-1`, `new-2`, ... not in `taken`."""
    return next(meme for meme in (f"{UPLOAD_PREFIX}{n}" for n in itertools.count(1)) if meme not in taken)


def selection_note(meme: str | None) -> str:
    return f"Meme to send: **{meme}**" if meme else "No meme picked: click one in the gallery to send it."


def refused(message: str, num_outputs: int) -> tuple:
    """
    Show `message` on the page (as text: the warning renders HTML) and leave every output as it was: bad input never
    breaks the chat.
    """
    gr.Warning(html.escape(message, quote=False))
    return (gr.skip(),) * num_outputs


class ChatHandlers:
    """
    The page's event handlers, callable without a browser. Each takes its event's inputs (a session's `Chat` among
    them) and returns its outputs, or `refused(...)`: a warning naming what was wrong, and every output unchanged.
    The pipeline is shared by all sessions (and threads, see `--concurrency`); everything of one chat is in its `Chat`.
    """

    SEND_OUTPUTS, ADD_OUTPUTS, PICK_OUTPUTS = 6, 4, 2

    def __init__(self, pipe: MemeDialoguePipeline, bank_files: Mapping[str, str]):
        self.pipe, self.bank_files = pipe, dict(bank_files)

    def files(self, chat: Chat) -> dict[str, str]:
        """Meme id -> image file of every meme this chat may send or be answered with (the gallery's order)."""
        return {**self.bank_files, **{meme: upload.path for meme, upload in chat.uploads.items()}}

    def pick_meme(self, chat: Chat, event: gr.SelectData):
        """Outputs: picked meme, note."""
        memes, index = list(self.files(chat)), event.index
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(memes):
            return refused(
                f"Gallery item {str(index)[:20]} is not a meme of this chat (it has {len(memes)}): pick one in the "
                "gallery.",
                self.PICK_OUTPUTS,
            )
        return memes[index], selection_note(memes[index])

    def send(self, text, meme, chat: Chat, top_p, temperature, max_new_tokens, memes_listed):
        """Outputs: chat, chatbot, ranked memes, textbox, picked meme, note."""
        text = (text or "").strip() or None
        if text is None and meme is None:
            return refused("Type a message or pick a meme to send.", self.SEND_OUTPUTS)
        if text is not None:
            try:  # before anything else reads it: its length and its Unicode, as the processor would refuse them
                self.pipe.processor.check_text(text, "Your message")
            except ValueError as error:
                return refused(str(error), self.SEND_OUTPUTS)
        files = self.files(chat)
        if meme is not None and meme not in files:
            return refused(
                f"Meme {meme[:40]!r} is not one of this chat's: pick one in the gallery.", self.SEND_OUTPUTS
            )
        turn = {"speaker": USER, "text": text, "meme": meme, "emotion": None}
        sampling = Sampling(float(top_p), float(temperature), int(max_new_tokens), int(memes_listed))
        chat_memes = {meme_id: upload.feature for meme_id, upload in chat.uploads.items()}
        try:
            reply = ask_model(self.pipe, chat.dialogue + [turn], chat_memes, sampling)
        except ValueError as error:
            return refused(f"The model cannot answer this: {error}", self.SEND_OUTPUTS)
        # A turn's emotion is a training label, never read as input: the reply's predicted one is only shown.
        answer = {"speaker": MODEL, "text": reply.text, "meme": reply.meme, "emotion": None}
        messages = chat.messages + [user_message(turn, files), model_message(reply, files)]
        chat = Chat(chat.dialogue + [turn, answer], messages, chat.uploads)
        return chat, messages, ranked_items(reply, files), "", None, selection_note(None)

    def add_meme(self, image_path, chat: Chat):
        """Outputs: chat, gallery, upload, upload note."""
        if image_path is None:
            return refused("Choose an image file to add as a meme first.", self.ADD_OUTPUTS)
        try:
            image = open_meme_image(image_path, self.pipe.processor.image_processor)
            feature = self.pipe.encode_memes({"upload": image})["upload"]
        except ValueError as error:
            return refused(f"The uploaded image cannot be a meme: {error}", self.ADD_OUTPUTS)
        meme = new_meme_id(self.files(chat))
        chat = Chat(chat.dialogue, chat.messages, {**chat.uploads, meme: Upload(image_path, feature)})
        note = f"Added meme **{meme}** to this chat: the model can reply with it, and you can send it."
        return chat, gallery_items(self.files(chat)), None, note

    @staticmethod
    def reset(chat: Chat):
        """A new dialogue, with this chat's uploaded memes. Outputs: chat, chatbot, ranked memes, textbox, picked, note."""
        return Chat(uploads=chat.uploads), [], [], "", None, selection_note(None)


def build_page(
    pipe: MemeDialoguePipeline, bank_files: dict[str, str], concurrency: int = DEFAULT_CONCURRENCY
) -> gr.Blocks:
    """
    The page; its events that run the model (a message, an upload) share one queue slot pool of `concurrency`, so
    that many chats are answered at once and no more.
    """
    generation = pipe.model.generation_config
    handlers = ChatHandlers(pipe, bank_files)
    on_model = {"concurrency_limit": concurrency, "concurrency_id": "model"}

    with gr.Blocks(title="MOD-GPT meme chat") as page:
        gr.Markdown("# MOD-GPT meme chat\nTalk with text, memes, or both; the model answers the same way.")
        chat, picked = gr.State(Chat()), gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Dialogue", height=540, elem_id="dialogue")
                with gr.Row():
                    textbox = gr.Textbox(placeholder="Type a message", show_label=False, scale=4, elem_id="message")
                    send_button = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                with gr.Row():
                    note = gr.Markdown(selection_note(None), elem_id="picked")
                    unpick_button = gr.Button("No meme", size="sm", scale=0)
                    reset_button = gr.Button("New dialogue", size="sm", scale=0, elem_id="reset")
                ranked = gr.Gallery(
                    label="Memes the model ranked for its last reply (score: higher ranks first)",
                    columns=5,
                    height=190,
                    allow_preview=False,
                    elem_id="ranked",
                )
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    gallery_items(bank_files),
                    label="Memes: click one to send it",
                    columns=4,
                    height=300,
                    allow_preview=False,
                    elem_id="memes",
                )
                with gr.Accordion("Add a meme of your own", open=False):
                    # A file, not a gr.Image: gradio would decode a non-RGB image to convert it before `add_meme`
                    # checks its size.
                    upload = gr.File(
                        label="Image file", file_types=["image"], type="filepath", height=120, elem_id="upload"
                    )
                    add_button = gr.Button("Add to this chat's memes", size="sm", elem_id="add-meme")
                    upload_note = gr.Markdown(elem_id="upload-note")
                top_p = gr.Slider(0.05, 1.0, value=generation.top_p or 0.9, step=0.05, label="top-p")
                temperature = gr.Slider(0.05, 2.0, value=generation.temperature or 0.7, step=0.05, label="temperature")
                max_new_tokens = gr.Slider(
                    1, 128, value=generation.max_new_tokens or 32, step=1, label="max new tokens"
                )
                memes_listed = gr.Slider(
                    1, 10, value=5, step=1, label="memes listed (with their scores)", elem_id="memes-listed"
                )

        gallery.select(handlers.pick_meme, [chat], [picked, note])
        unpick_button.click(lambda: (None, selection_note(None)), None, [picked, note], api_name="unpick")
        gr.on(
            [send_button.click, textbox.submit],
            handlers.send,
            [textbox, picked, chat, top_p, temperature, max_new_tokens, memes_listed],
            [chat, chatbot, ranked, textbox, picked, note],
            api_name="send",
            **on_model,
        )
        add_button.click(
            handlers.add_meme, [upload, chat], [chat, gallery, upload, upload_note], api_name="add_meme", **on_model
        )
        reset_button.click(handlers.reset, [chat], [chat, chatbot, ranked, textbox, picked, note], api_name="reset")
    return page


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pipe, bank_files = load_app(args)
    except (OSError, ValueError) as error:
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    # A file past Pillow's decompression-bomb threshold is refused at upload, never decoded (see `open_meme_image`).
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    page = build_page(pipe, bank_files, args.concurrency)
    page.queue(default_concurrency_limit=args.concurrency).launch(
        server_name=args.host, server_port=args.port, show_error=True, max_file_size=args.max_file_size
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
