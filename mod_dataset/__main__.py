"""Command line: `python -m mod_dataset build|stats|make-sample`."""

import argparse
import sys
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard

from . import (
    InvalidReleaseError,
    OutputFolderError,
    build_dataset,
    format_statistics,
    make_sample,
    push_to_hub,
    statistics,
)
from .card import RECORD_KEY, format_release


def print_stats(out_dir: str) -> None:
    """The statistics of a built folder (or hub id), then what its card records of the release."""
    dialogues = datasets.load_dataset(out_dir, "dialogues")
    memes = next(iter(datasets.load_dataset(out_dir, "memes").values()))
    names = next(iter(dialogues.values())).features["turns"].feature["emotion"].names
    rows = {split: dialogues[split].to_list() for split in dialogues}
    print(format_statistics(statistics(rows, len(memes), len(names))))
    card = Path(out_dir) / "README.md"
    record = DatasetCard.load(card if card.is_file() else out_dir).data.to_dict().get(RECORD_KEY)
    if record:
        print(f"\n{format_release(record)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mod_dataset", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="convert a release into a hub dataset folder")
    build.add_argument("raw_dir")
    build.add_argument("out_dir")
    build.add_argument("--language", choices=["zh", "en"], default="zh")
    build.add_argument(
        "--skip_invalid", "--skip-invalid", action="store_true", help="leave bad rows out instead of failing"
    )
    build.add_argument(
        "--push_to_hub", "--push-to-hub", metavar="REPO_ID", help="upload the built folder as a dataset repo"
    )
    stats = commands.add_parser("stats", help="print the statistics of a built dataset")
    stats.add_argument("out_dir")
    sample = commands.add_parser("make-sample", help="write the synthetic sample release")
    sample.add_argument("out_dir")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()

    if args.command == "make-sample":
        print(f"sample release written to {make_sample(args.out_dir)}")
    elif args.command == "stats":
        print_stats(args.out_dir)
    else:
        # Resolved first: the build replaces the folder, after which "." would name the old, deleted one.
        out_dir = Path(args.out_dir).resolve()
        try:
            result = build_dataset(args.raw_dir, out_dir, args.language, args.skip_invalid)
        except (InvalidReleaseError, OutputFolderError) as error:
            print(f"mod_dataset: error: {error}", file=sys.stderr)
            return 1
        skipped = result["skipped"]
        if skipped:
            print(
                f"left out the rows with {sum(skipped.values())} problem(s): "
                + "; ".join(f"{n} x {r}" for r, n in skipped.items())
            )
        for config, splits in result["counts"].items():
            print(f"{config}: " + ", ".join(f"{split} {n}" for split, n in splits.items()))
        print(format_release(result["release"]))
        if args.push_to_hub:
            print(f"uploaded: {push_to_hub(out_dir, args.push_to_hub)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
