"""An epoch of paper-profile training windows as `train.py` batches them, the per-response examples that learn the
same responses, and what each way of batching computes (tokens counted, nothing run)."""

from dataclasses import dataclass

from mod_training.data import LengthGroupedBatchSampler
from modeling_mod_gpt import IGNORE_INDEX
from processing_mod import MODProcessor

from .synthetic import MAX_LENGTH

Encoding = dict[str, list]


@dataclass
class Window:
    """A training window of a dialogue, and the responses it labels as turn slices `(context start, answer + 1)`."""

    encoding: Encoding
    dialogue_index: int
    responses: list[tuple[int, int]]

    @property
    def length(self) -> int:
        return len(self.encoding["input_ids"])

    def response_lengths(self, speaker_ids: set[int]) -> list[int]:
        """Tokens of each per-response example: the window cut after the response's turn."""
        starts = [i for i, token in enumerate(self.encoding["input_ids"]) if token in speaker_ids] + [self.length]
        return starts[len(starts) - len(self.responses) :]


def response_slices(processor: MODProcessor, windows: list[Encoding]) -> list[list[tuple[int, int]]]:
    """For each window of one dialogue (in `encode_windows` order), the turns `(start, stop)` of the per-response view
    of each response it labels: the window's context and new turns up to that response, which the window holds."""
    speakers = {processor.token_ids["[speaker1]"], processor.token_ids["[speaker2]"]}
    tag = processor.token_ids["[TAG]"]
    slices, end = [], 0
    for window in windows:
        turns = sum(token in speakers for token in window["input_ids"])
        labelled = sum(
            token == tag and usage != IGNORE_INDEX for token, usage in zip(window["input_ids"], window["usage_labels"])
        )
        end = end + labelled if end else turns  # the first window starts at the dialogue's first turn
        slices.append([(end - turns, answer + 1) for answer in range(end - labelled, end)])
    return slices


def epoch_windows(processor: MODProcessor, dialogues: list[list[dict]]) -> list[Window]:
    """Every training window of the dialogues, as `train.py` encodes a split."""
    windows = []
    for index, dialogue in enumerate(dialogues):
        encodings = processor.encode_windows(dialogue, index, max_length=MAX_LENGTH)
        for encoding, responses in zip(encodings, response_slices(processor, encodings)):
            windows.append(Window(encoding, index, responses))
    return windows


def response_examples(processor: MODProcessor, dialogues: list[list[dict]], windows: list[Window]) -> list[Encoding]:
    """The per-response examples of the windows' responses, in window and turn order: each labels its last turn."""
    return [
        processor.encode_dialogue(dialogues[window.dialogue_index][start:stop], label_turns="last")
        for window in windows
        for start, stop in window.responses
    ]


def train_batches(lengths: list[int], batch_size: int, seed: int = 0) -> list[list[int]]:
    """`train.py`'s length-grouped batches of an epoch, and one more of the windows its sampler leaves out."""
    batches = list(LengthGroupedBatchSampler(lengths, batch_size, seed))
    left_out = sorted(set(range(len(lengths))) - {index for batch in batches for index in batch})
    return batches + [left_out] if left_out else batches


def token_budget_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Batches as a length-grouping trainer makes them at a batch size in tokens: longest first, each batch taking
    examples while its padded size (examples x longest) stays within `budget`."""
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if not batches or (len(batches[-1]) + 1) * lengths[batches[-1][0]] > budget:
            batches.append([])
        batches[-1].append(index)
    return batches


def padded_tokens(lengths: list[int], batches: list[list[int]]) -> int:
    """Tokens computed by padded batches: each batch's examples times its longest."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


@dataclass
class EpochCounts:
    """Tokens computed per labelled token over one epoch by each way of batching, the batch size in tokens of
    `train.py`'s batches, and padding's share of what they compute."""

    per_labelled: dict[str, float]
    batch_tokens: int
    padding: float


def count_epoch(windows: list[Window], speaker_ids: set[int], batch_size: int) -> EpochCounts:
    """What each way of batching computes over the epoch of `windows`, counted from the encodings' lengths."""
    lengths = [window.length for window in windows]
    batches = train_batches(lengths, batch_size)
    packed = padded_tokens(lengths, batches)
    batch_tokens = round(packed / len(batches))
    responses = [length for window in windows for length in window.response_lengths(speaker_ids)]
    computed = {
        "per-response, batch size 1": sum(responses),
        "per-response, batched": padded_tokens(responses, token_budget_batches(responses, batch_tokens)),
        "packed windows": packed,
    }
    labelled = sum(label != IGNORE_INDEX for window in windows for label in window.encoding["labels"])
    per_labelled = {way: tokens / labelled for way, tokens in computed.items()}
    return EpochCounts(per_labelled, batch_tokens, padding=1 - sum(lengths) / packed)


def sample_batches(windows: list[Window], batch_size: int, count: int) -> list[list[Window]]:
    """`count` of the epoch's `train.py` batches, at evenly spaced quantiles of their padded size."""
    lengths = [window.length for window in windows]
    batches = sorted(train_batches(lengths, batch_size), key=lambda b: padded_tokens(lengths, [b]))
    picks = [int((k + 0.5) * len(batches) / count) for k in range(count)]
    return [[windows[i] for i in batches[pick]] for pick in picks]
