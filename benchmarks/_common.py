"""What the training benchmarks record about the machine they ran on (one helper for all scripts)."""

from __future__ import annotations


def training_machine() -> dict:
    """CPU model, accelerator, torch threads and versions, for a results file's ``machine`` entry."""
    import torch

    from lowbit.bench import cpu_info

    info = cpu_info()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"cpu": info["cpu"], "device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": info["python"]}
