"""What a measurement ran on, in words: the GPU's name, or the CPU's model name, matrix instruction set and torch's
thread count.

Speed results are only comparable on the same hardware, so answer files record it (``meta.hardware`` and, for
resuming, ``meta.settings.hardware``) and a run refuses to resume a file made on other hardware; greedy-check
records name it too. A model name alone does not tell CPUs apart ("AMD EPYC" is an AVX2-only Zen 3 as well as an
AVX-512 BF16 Zen 4, where bf16 verification costs 4x less), so the best matrix extension the CPU has is named too.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flag -> name, best first: what bf16 and fp32 matrix products can use
MATRIX_EXTENSIONS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"),
                     ("avx2", "AVX2"), ("asimd", "NEON"))
NATIVE_BF16 = ("AMX-BF16", "AVX512-BF16")  # extensions that multiply bf16 matrices natively


def _cpuinfo_value(key: str) -> str | None:
    """The first value of ``key`` in /proc/cpuinfo (Linux), else None."""
    if not CPUINFO.is_file():
        return None
    for line in CPUINFO.read_text(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key and value.strip():
            return value.strip()
    return None


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    return _cpuinfo_value("model name") or platform.processor() or platform.machine()


def matrix_extension(flags: str | None = None) -> str | None:
    """The best matrix instruction set of :data:`MATRIX_EXTENSIONS` among the CPU's flags (default: Linux
    /proc/cpuinfo's ``flags``, or ``Features`` on ARM), e.g. "AVX512-BF16"; None when unknown."""
    if flags is None:
        flags = _cpuinfo_value("flags") or _cpuinfo_value("Features") or ""
    present = set(flags.split())
    return next((name for flag, name in MATRIX_EXTENSIONS if flag in present), None)


def _torch_device(device: torch.device | str) -> torch.device:
    """A torch device; a device map name ("auto", ...) stands for the first GPU if there is one, else the CPU."""
    try:
        return torch.device(device)
    except RuntimeError:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # transformers' device_map names


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot run here (not a device or device map name, a backend this torch lacks, an index past
    the devices present), or None if it can."""
    if device in DEVICE_MAPS:
        return None
    try:
        parsed = torch.device(device)
    except RuntimeError:
        return (f"{device!r} is neither a torch device (cpu, cuda, cuda:1, ...) nor a device map "
                f"({', '.join(DEVICE_MAPS)})")
    backend = getattr(torch, parsed.type, None)
    if parsed.type == "cpu" or not hasattr(backend, "is_available"):
        return None
    if not backend.is_available():
        no_cuda = parsed.type == "cuda" and torch.version.cuda is None
        why = "was built without CUDA" if no_cuda else "sees no such device"
        return f"{device} requested, but this torch ({torch.__version__}) {why}; use cpu"
    count = backend.device_count() if hasattr(backend, "device_count") else None
    if parsed.index is not None and count is not None and parsed.index >= count:
        return f"{device} requested, but only {count} {parsed.type} device(s) are visible"
    return None


def auto_dtype(device: torch.device | str) -> str:
    """The dtype ``model.dtype: auto`` stands for: "bfloat16" on a GPU or on a CPU whose matrix extension
    (:func:`matrix_extension`) multiplies bf16 natively (AMX, AVX512-BF16), else "float32". Without them a
    bf16 product of several rows (tree verification) is emulated and costs several decoding steps, so
    speculation only pays in fp32 (the measurements are in ``docs/cpu.md``)."""
    if _torch_device(device).type != "cpu":
        return "bfloat16"
    return "bfloat16" if matrix_extension() in NATIVE_BF16 else "float32"


def describe(device: torch.device | str) -> str:
    """E.g. "NVIDIA H100 80GB HBM3" or "AMD EPYC CPU (AVX2), 2 threads". A device map name ("auto", ...) stands for
    the first GPU if there is one, else the CPU."""
    device = _torch_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    extension = matrix_extension()
    cpu = f"{cpu_name()} CPU" + (f" ({extension})" if extension else "")
    return f"{cpu}, {threads} thread{'' if threads == 1 else 's'}"


def identical_text_settings(device: torch.device | str) -> tuple[str, bool, str]:
    """(dtype, exact verification, why): the settings under which greedy speculative decoding gives plain decoding's
    text on ``device`` and, as measured per CPU kind (docs/cpu.md), is still faster than plain decoding there.

    * AMX-BF16 CPU: bf16 with exact verification. The bf16 kernels round a row alike alone and in a batch, so exact
      verification costs only one attention call per tree node (bit-identical by construction).
    * other CPUs (AVX512-BF16 without AMX, AVX2, ...): fp32 with batched verification. Exact bf16 verification is
      slower than plain decoding there (one-row bf16 kernels are slow), and fp32 tree logits differ from one-token
      logits by ~1e-6, so only an exact near-tie could flip a token (none in every measured question).
    * a GPU: its automatic dtype with exact verification (row-inconsistent layers then run row by row; unmeasured).
    """
    device = _torch_device(device)
    if device.type != "cpu":
        return auto_dtype(device), True, "GPU: exact verification"
    extension = matrix_extension()
    if extension == "AMX-BF16":
        return "bfloat16", True, "AMX-BF16 CPU: exact bf16 verification"
    return "float32", False, f"{extension or 'this'} CPU: fp32 batched verification"
