"""What a measurement ran on, in words: the GPU's name, or the CPU's model name and torch's thread count.

Speed results are only comparable on the same hardware, so answer files record it (``meta.hardware`` and, for
resuming, ``meta.settings.hardware``) and a run refuses to resume a file made on other hardware; greedy-check
records name it too.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def describe(device: torch.device | str) -> str:
    """E.g. "NVIDIA H100 80GB HBM3" or "AMD EPYC CPU, 2 threads". A device map name ("auto", ...) stands for the
    first GPU if there is one, else the CPU."""
    try:
        device = torch.device(device)
    except RuntimeError:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{cpu_name()} CPU, {threads} thread{'' if threads == 1 else 's'}"
