"""What compute is here, found without importing torch when there is plainly no GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

DEFAULT_GPU_MEMORY_GB = 8.0


def _maybe_nvidia() -> bool:
    return Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (torch is imported only if an NVIDIA driver is present)."""
    if not _maybe_nvidia():
        return False
    import torch

    return bool(torch.cuda.is_available())


def default_gpu_memory_gb() -> float:
    """Memory of CUDA device 0 in GB when there is one, else 8 (the planning reference)."""
    if not cuda_available():
        return DEFAULT_GPU_MEMORY_GB
    import torch

    return round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
