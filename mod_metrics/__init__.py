"""The paper's metrics as `evaluate` modules kept in this repository and loaded by local path, never from the hub.

from mod_metrics import load_metric
load_metric("mod_text").compute(predictions=[...], references=[...])
"""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent
NAMES = ("mod_text", "mod_retrieval", "mod_usage", "mod_emotion")


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load one of this folder's `evaluate` modules by its local path."""
    if name not in NAMES:
        raise ValueError(f"Unknown metric {name!r}: choose one of {NAMES}.")
    return evaluate.load(str(METRICS_DIR / name))


__all__ = ["METRICS_DIR", "NAMES", "load_metric"]
