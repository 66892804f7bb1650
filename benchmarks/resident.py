"""Resident memory of this process from `/proc/self/status` (Linux), and resetting its peak.

CPU tensors are invisible to `tracemalloc` and torch keeps no CPU allocator statistics, so peak memory is the
process's resident-set high-water mark, `VmHWM`. `getrusage(...).ru_maxrss` would not do: it carries the launching
process's larger mark over fork and exec.
"""

from pathlib import Path


def memory_status_mib(field: str) -> float:
    """A memory field of `/proc/self/status` (`VmRSS`, `VmHWM`), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field} line.")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size to the current one
