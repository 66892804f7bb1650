"""The data of a run: the splits of a built MOD dataset, its training examples, their batches and collation."""

from collections import Counter

import datasets
import timm
import torch
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import get_length_grouped_indices

from mod_dataset import check_row_counts
from processing_mod import MODProcessor

from . import ArgumentError
from .arguments import TrainArguments

GROUP_BATCHES = 50  # batches per length group: each group is sorted by length, then cut into batches


def load_splits(dataset: str) -> tuple[datasets.DatasetDict, datasets.Dataset]:
    """The `dialogues` splits and the `memes` table of a built MOD dataset, checked against its card."""
    try:
        dialogues = datasets.load_dataset(dataset, "dialogues")
        memes = datasets.load_dataset(dataset, "memes")
    except datasets.exceptions.SplitsVerificationError as error:
        raise ArgumentError(
            f"--dataset {dataset!r}: its files do not hold the rows its card declares ({error}). Rebuild it with "
            "`python -m mod_dataset build`."
        ) from error
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise ArgumentError(f"--dataset {dataset!r} is not a built MOD dataset: {error}") from error
    try:
        check_row_counts(dataset, {"dialogues": dialogues, "memes": memes})
    except ValueError as error:
        raise ArgumentError(f"--dataset {dataset!r}: {error}") from error
    for split in ("train", "validation"):
        if split not in dialogues or len(dialogues[split]) == 0:
            raise ArgumentError(f"--dataset {dataset!r}: its dialogues have no {split!r} split, which training needs.")
    return dialogues, next(iter(memes.values()))


def emotion_names(dialogues: datasets.DatasetDict) -> list[str]:
    return next(iter(dialogues.values())).features["turns"].feature["emotion"].names


def encode_split(split: datasets.Dataset, processor: MODProcessor, max_length: int) -> list[dict[str, list]]:
    """The training examples of a split: every window of every dialogue (one window when the dialogue fits)."""
    return [
        window
        for index, row in enumerate(split)
        for window in processor.encode_windows(row["turns"], index, max_length=max_length)
    ]


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """
    The batches of epoch `epoch`, drawn from `(seed, epoch)` alone so that a resumed run sees the same ones:
    transformers' length grouping (shuffled, then sorted by length within groups of `GROUP_BATCHES` batches) cut
    into batches, an incomplete last one dropped, in shuffled order.

    The loop sets `epoch` itself. The sampler has no `set_epoch`: a prepared data loader would call it with its own
    count of the passes that ran to the end, which stays 0 when the loop leaves each epoch at its last step.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.epoch = 0

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = get_length_grouped_indices(self.lengths, self.batch_size, GROUP_BATCHES, generator)
        starts = range(0, len(self) * self.batch_size, self.batch_size)
        batches = [order[start : start + self.batch_size] for start in starts]
        return iter([batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()])

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size


class DialogueCollator:
    """
    Pads encoded dialogues and looks up the features of their memes (computed once, by meme id); passes on the
    `example_index` of validation examples.
    """

    def __init__(self, processor: MODProcessor, meme_ids: list[str], meme_features: torch.Tensor, images=None):
        self.processor = processor
        self.row_of = {meme_id: row for row, meme_id in enumerate(meme_ids)}
        self.meme_features = meme_features
        self.images = images  # meme id -> image, when the encoder is trained and needs pixels

    def __call__(self, encodings: list[dict[str, list]]) -> dict[str, torch.Tensor]:
        batch = dict(self.processor.pad(encodings))
        meme_ids = batch.pop("meme_ids")
        if self.images is not None:
            pixels = self.processor.image_processor([self.images[m] for m in meme_ids])["pixel_values"]
            batch["pixel_values"] = pixels if meme_ids else None
        else:
            batch["meme_features"] = self.meme_features[[self.row_of[m] for m in meme_ids]] if meme_ids else None
        if "example_index" in encodings[0]:
            batch["example_index"] = torch.tensor([encoding["example_index"] for encoding in encodings])
        return {key: value for key, value in batch.items() if value is not None}


def training_loader(
    encodings: list[dict], collator: DialogueCollator, args: TrainArguments, processes: int
) -> DataLoader:
    """Global batches of similar length (each process takes its share of every one once prepared)."""
    lengths = [len(encoding["input_ids"]) for encoding in encodings]
    sampler = LengthGroupedBatchSampler(lengths, args.per_device_train_batch_size * processes, args.seed)
    return DataLoader(encodings, batch_sampler=sampler, collate_fn=collator)


def validation_loader(
    encodings: list[dict], collator: DialogueCollator, args: TrainArguments, processes: int
) -> DataLoader:
    """
    Validation examples (numbered by `example_index`) in a fixed order, the last batch kept. Prepared, each process
    takes its share of every batch.
    """
    numbered = [{**encoding, "example_index": index} for index, encoding in enumerate(encodings)]
    return DataLoader(numbered, batch_size=args.per_device_eval_batch_size * processes, collate_fn=collator)


def check_training_batches(examples: int, dialogues: int, args: TrainArguments, processes: int) -> None:
    """An epoch must hold at least one optimizer step; an incomplete last batch is dropped."""
    batch_size = args.per_device_train_batch_size * processes
    if examples // batch_size >= args.gradient_accumulation_steps:
        return
    raise ArgumentError(
        f"the train split gives {examples} training examples ({dialogues} dialogues), too few for one optimizer "
        f"step of {batch_size * args.gradient_accumulation_steps} examples (--per_device_train_batch_size "
        f"{args.per_device_train_batch_size} x {processes} processes x --gradient_accumulation_steps "
        f"{args.gradient_accumulation_steps}). Lower them, or train on more dialogues."
    )


def retrieval_negatives(encodings: list[dict[str, list]], bank_size: int, seed: int) -> torch.Tensor:
    """
    The 9 random bank rows that each meme a validation example attaches is ranked against, `(examples, memes of the
    example with most, 9)`: drawn once, so R10@1 depends neither on batching nor on the number of processes.
    """
    most = max(max(encoding["usage_labels"].count(1) for encoding in encodings), 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(bank_size, (len(encodings), most, 9), generator=generator)


def imfe_examples(args: TrainArguments) -> tuple[list, list[int], list[str]]:
    """Images, labels and label names: an imagefolder dataset, or the memes labelled by their most frequent emotion."""
    if args.imfe_dataset is not None:
        folder = datasets.load_dataset("imagefolder", data_dir=args.imfe_dataset, split="train")
        return folder["image"], folder["label"], folder.features["label"].names
    dialogues, memes = load_splits(args.dataset)
    counts: dict[str, Counter] = {}
    for turns in dialogues["train"]["turns"]:
        for turn in turns:
            if turn["meme"] is not None and turn["emotion"] is not None:
                counts.setdefault(turn["meme"], Counter())[turn["emotion"]] += 1
    labelled = [i for i, meme in enumerate(memes["meme_id"]) if meme in counts]
    rows = memes.select(labelled)
    labels = [counts[meme].most_common(1)[0][0] for meme in rows["meme_id"]]
    return rows["image"], labels, emotion_names(dialogues)


def imfe_loader(images: list, labels: list[int], encoder: torch.nn.Module, batch_size: int) -> DataLoader:
    """Shuffled batches of `(pixel_values, labels)`, the images augmented as timm trains `encoder`."""
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=encoder), is_training=True)

    def collate(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_values = torch.stack([transform(image.convert("RGB")) for image, _ in batch])
        return pixel_values, torch.tensor([label for _, label in batch])

    return DataLoader(list(zip(images, labels)), batch_size=batch_size, shuffle=True, collate_fn=collate)
