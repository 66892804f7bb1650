"""Talk to a trained MOD-GPT in the terminal.

    python chat.py --model demo_output/model [--dataset demo_output/data]

`--model` is a saved MOD-GPT folder, or `hf://owner/name` for one on the hub. It is loaded with this package's own
model and processor classes; the code files saved with a model run only with `--trust_remote_code`.

Type a message and press Enter; `#042` (a meme id with `#`) sends meme 042, alone or after text
(`今天好开心 #042`). `/reset` starts a new dialogue, `/memes` lists meme ids, `/quit` leaves.
"""

import argparse
import re
import sys

import datasets
import torch

from pipeline_mod import DTYPES, default_device, device_argument, load_mod_gpt

MEME_PATTERN = re.compile(r"#(\S+)\s*$")


def parse_message(line: str, speaker: str) -> dict:
    """A typed line as a turn: text, with an optional trailing `#meme_id`."""
    match = MEME_PATTERN.search(line)
    meme = match.group(1) if match else None
    text = (line[: match.start()] if match else line).strip() or None
    return {"speaker": speaker, "text": text, "meme": meme, "emotion": None}


def describe_reply(reply: dict, meme_files: dict[str, str]) -> str:
    parts = [reply["text"] or ""]
    if reply["meme"] is not None:
        file_name = meme_files.get(reply["meme"])
        parts.append(f"[meme {reply['meme']}" + (f" ({file_name})" if file_name else "") + "]")
        if reply["emotion"] is not None:
            parts.append(f"(emotion: {reply['emotion']})")
    return " ".join(part for part in parts if part)


def chat(model, processor, meme_files: dict[str, str], lines, write=print, **generate_kwargs) -> None:
    """The chat loop over input `lines`; an error in one turn is reported and the chat goes on."""
    history: list[dict] = []
    write("MOD-GPT chat. /reset for a new dialogue, /memes to list memes, /quit to leave.")
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line == "/quit":
            break
        if line == "/reset":
            history = []
            write("(new dialogue)")
            continue
        if line == "/memes":
            write(" ".join(model.meme_bank.ids))
            continue
        turn = parse_message(line, "speaker1")
        try:
            reply = model.respond(history + [turn], processor, **generate_kwargs)
        except ValueError as error:
            write(f"error: {error}")
            continue
        history += [turn, {key: reply[key] for key in ("speaker", "text", "meme", "emotion")}]
        write(f"MOD-GPT: {describe_reply(reply, meme_files)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A saved MOD-GPT folder, or hf://owner/name on the hub.")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="Load the model with the code files saved in its folder."
    )
    parser.add_argument("--dataset", help="A built MOD dataset, to show meme file names.")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", type=device_argument, help="Where the model runs (default: the accelerator if any, else cpu)."
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="The model's weights and compute.")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        model, processor = load_mod_gpt(args.model, args.trust_remote_code)
    except (OSError, ValueError) as error:
        print(f"chat.py: error: cannot load a model from {args.model!r}: {error}", file=sys.stderr)
        return 2
    model.to(args.device or default_device(), DTYPES[args.dtype])
    meme_files = {}
    if args.dataset:
        memes = next(iter(datasets.load_dataset(args.dataset, "memes").values()))
        meme_files = dict(zip(memes["meme_id"], memes["file_name"]))
    prompt_lines = iter(lambda: input("you: "), None)
    try:
        chat(
            model,
            processor,
            meme_files,
            prompt_lines if sys.stdin.isatty() else sys.stdin,
            max_new_tokens=args.max_new_tokens,
        )
    except (EOFError, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
