"""Output folders that a tool writes only where it may: a new path, an empty folder, or a folder it wrote before,
recognised by the JSON marker file it leaves there. Anything else is refused before any work, and never deleted."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_marker(folder: Path, name: str) -> dict[str, Any] | None:
    """The JSON object in the marker file `folder / name`, or None when there is none (missing, unreadable, other)."""
    try:
        marker = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def why_not_writable(folder: Path, marker: str, writer: str, is_ours: Callable[[Path], bool]) -> str | None:
    """
    Why `writer` may not write into `folder`, as the end of a sentence that names it: a path that is a file, or a
    folder that is neither empty nor `is_ours` (it has `writer`'s `marker`). None when it may.
    """
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    if folder.is_dir() and any(folder.iterdir()) and not is_ours(folder):
        found = ", ".join(sorted(path.name for path in folder.iterdir())[:5])
        return f"is not empty and was not written by {writer} (it has no {marker}; it holds {found}, ...)"
    return None
