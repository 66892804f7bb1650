"""
What `train.py` uses besides its training loop: the arguments and their checks, the output folder and its run
marker, checkpoints and model saves, hub uploads and the model card, the data and its batches, and the model's set-up.
"""


class ArgumentError(ValueError):
    """A bad argument, or data the arguments name, reported as one line without a traceback (exit status 2)."""


class TrainingError(RuntimeError):
    """Training could not go on (exit status 1)."""
