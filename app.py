"""A web chat with a trained MOD-GPT: its replies show their meme images, as the paper's figures do.

    python app.py --model demo_output/model --dataset demo_output/data [--port 7860] [--host 127.0.0.1]

`--model` is a saved MOD-GPT folder (or `hf://owner/name` on the hub), `--dataset` a dataset folder built by
`python -m mod_dataset build`: its `memes` config gives the meme images, and its memes missing from the model's bank
(the unseen ones) become candidates too. A model folder with this file beside it is a Hugging Face Space.

The page sends text, a meme picked from the gallery, or both; an uploaded image becomes a new meme of this chat
only (encoded by the model's meme encoder, as unseen memes are). The sliders set the paper's sampling (top-p,
temperature) and how many ranked memes are listed with their scores.
"""

import argparse
import itertools
import os
import sys
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets
import gradio as gr
import torch
from PIL import Image

from pipeline_mod import HUB_PREFIX, MemeDialoguePipeline, load_mod_gpt, load_mod_gpt_config

USER, MODEL = "speaker1", "speaker2"
UPLOAD_PREFIX = "new-"


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


# The model ----------------------------------------------------------------------------------------------------------


def ask_model(
    pipe: MemeDialoguePipeline, dialogue: list[dict], chat_memes: Mapping[str, Image.Image], sampling: Sampling
) -> Reply:
    """
    The model's reply to `dialogue`, with this chat's own memes (id -> image) as candidates too. The only place that
    knows the pipeline's call arguments and output format.
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


def check_meme_image(pipe: MemeDialoguePipeline, image: Image.Image) -> None:
    """Encode `image` as a meme once, so that a model or image that cannot do it fails at upload."""
    pixel_values = pipe.processor.image_processor([image])["pixel_values"]
    with torch.no_grad():
        pipe.model.get_meme_features(pixel_values.to(pipe.model.device))


# Loading ------------------------------------------------------------------------------------------------------------


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
        "--trust_remote_code", action="store_true", help="Load the model with the code files saved in its folder."
    )
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
    pipe = MemeDialoguePipeline(model=model, processor=processor, memes=memes)
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
    """Show `message` on the page and leave every output as it was: bad input never breaks the chat."""
    gr.Warning(message)
    return (gr.skip(),) * num_outputs


def build_page(pipe: MemeDialoguePipeline, bank_files: dict[str, str]) -> gr.Blocks:
    generation = pipe.model.generation_config

    def chat_files(uploads: dict[str, str]) -> dict[str, str]:
        return {**bank_files, **uploads}

    def pick_meme(uploads: dict[str, str], event: gr.SelectData):
        meme = list(chat_files(uploads))[event.index]
        return meme, selection_note(meme)

    def send(text, meme, dialogue, uploads, messages, top_p, temperature, max_new_tokens, memes_listed):
        text = (text or "").strip() or None
        if text is None and meme is None:
            return refused("Type a message or pick a meme to send.", len(after_send))
        turn = {"speaker": USER, "text": text, "meme": meme, "emotion": None}
        sampling = Sampling(float(top_p), float(temperature), int(max_new_tokens), int(memes_listed))
        chat_memes = {meme_id: Image.open(path).convert("RGB") for meme_id, path in uploads.items()}
        try:
            reply = ask_model(pipe, dialogue + [turn], chat_memes, sampling)
        except ValueError as error:
            return refused(f"The model cannot answer this: {error}", len(after_send))
        files = chat_files(uploads)
        # A turn's emotion is a training label, never read as input: the reply's predicted one is only shown.
        answer = {"speaker": MODEL, "text": reply.text, "meme": reply.meme, "emotion": None}
        messages = messages + [user_message(turn, files), model_message(reply, files)]
        return messages, dialogue + [turn, answer], ranked_items(reply, files), "", None, selection_note(None)

    def add_meme(image_path, uploads):
        if image_path is None:
            return refused("Choose an image file to add as a meme first.", len(after_add))
        try:
            with Image.open(image_path) as image:
                check_meme_image(pipe, image.convert("RGB"))
        except (OSError, ValueError) as error:
            return refused(f"This image cannot be used as a meme: {error}", len(after_add))
        meme = new_meme_id(chat_files(uploads))
        uploads = {**uploads, meme: image_path}
        note = f"Added meme **{meme}** to this chat: the model can reply with it, and you can send it."
        return uploads, gallery_items(chat_files(uploads)), None, note

    def reset():
        return [], [], [], "", None, selection_note(None)

    with gr.Blocks(title="MOD-GPT meme chat") as page:
        gr.Markdown("# MOD-GPT meme chat\nTalk with text, memes, or both; the model answers the same way.")
        dialogue, uploads, picked = gr.State([]), gr.State({}), gr.State(None)
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
                    upload = gr.Image(type="filepath", sources=["upload"], label="Image", height=160, elem_id="upload")
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

        after_add = [uploads, gallery, upload, upload_note]
        gallery.select(pick_meme, [uploads], [picked, note])
        unpick_button.click(lambda: (None, selection_note(None)), None, [picked, note])
        sent = [textbox, picked, dialogue, uploads, chatbot, top_p, temperature, max_new_tokens, memes_listed]
        after_send = [chatbot, dialogue, ranked, textbox, picked, note]
        send_button.click(send, sent, after_send)
        textbox.submit(send, sent, after_send)
        add_button.click(add_meme, [upload, uploads], after_add)
        reset_button.click(reset, None, [chatbot, dialogue, ranked, textbox, picked, note])
    return page


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pipe, bank_files = load_app(args)
    except (OSError, ValueError) as error:
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    page = build_page(pipe, bank_files)
    page.queue().launch(server_name=args.host, server_port=args.port, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
