"""What this process sees of the machine's accelerators."""

from __future__ import annotations

import os


def cuda_visible() -> bool:
    """Whether this process sees a CUDA device (Ray gives a process without GPUs CUDA_VISIBLE_DEVICES="")."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
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
