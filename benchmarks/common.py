"""What every benchmark script shares."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """The CPU, its cores, torch and its threads, Python: the line each benchmark table is quoted with."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def peak_rss_mb() -> float:
    """This process's peak RSS. Not ru_maxrss: exec keeps that, so a worker's would start at its parent's peak."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
