"""What this process sees of the machine's accelerators."""

from __future__ import annotations

import glob
import os

# Device files a GPU driver creates (NVIDIA; Jetson; ROCm, whose torch answers torch.cuda; WSL). Without
# any, torch.cuda.is_available() is False: no torch import to learn it (seconds and ~200 MB in each
# process that asks, e.g. every engine actor on a Ray node whose GPUs are declared, not real).
DRIVER_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvhost-ctrl", "/dev/kfd", "/dev/dxg")


def gpu_driver_present() -> bool:
    return any(os.path.exists(p) for p in DRIVER_FILES) or bool(glob.glob("/dev/nvidia[0-9]*"))


def cuda_visible() -> bool:
    """Whether this process sees a CUDA device (Ray gives a process without GPUs CUDA_VISIBLE_DEVICES="")."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    if not gpu_driver_present():
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def gpu_names() -> list[str]:
    """The name of every CUDA device this process sees."""
    if not cuda_visible():
        return []
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
