"""Whether a supernet's training fits in memory: its estimate, what the device has, and the refusal before any work."""

from __future__ import annotations

import os

import torch

from latency_model.decomposition import ModelDims
from search_spaces.errors import ResourceError
from search_spaces.reparam import create_model

from ..device import Placement
from ..study import Study

MEMORY_HEADROOM = 0.8  # train only when the estimate fits in this share of the memory available


# ---- memory ---------------------------------------------------------------------------------------------------------
def memory_estimate(study: Study) -> tuple[int, str]:
    """Bytes training the supernet needs (and how they add up): the teacher, the supernet's weights, gradients and
    two AdamW moments, and one subnet's activations at the batch size. Computed on the meta device: nothing is
    allocated."""
    with torch.device("meta"):
        params = sum(p.numel() for p in create_model(study.model).parameters())
    dims = ModelDims.of(study.model)
    batch = study.train.batch_size
    # per token and block, what autograd keeps: about 12 C-wide tensors (norms, projections, residuals), 3 of the
    # MLP's width, and the attention matrix's row
    floats = sum(b.tokens * (12 * b.channels + 3 * b.hidden + b.heads * (b.kv_tokens or b.tokens))
                 for b in dims.blocks)
    weights, activations = 5 * 4 * params, 4 * batch * floats
    return weights + activations, (f"{params / 1e6:.1f} M parameters x 5 copies (teacher, weights, gradients, 2 AdamW "
                                   f"moments) {weights / 2**30:.2f} GiB + activations at batch {batch} "
                                   f"{activations / 2**30:.2f} GiB")


def available_memory(placement: Placement) -> int:
    if placement.device.type == "cuda":
        return torch.cuda.mem_get_info(placement.device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(study: Study, placement: Placement) -> None:
    """Refuse, before anything is loaded, a supernet that would not fit (ResourceError with the estimate)."""
    need, parts = memory_estimate(study)
    have = available_memory(placement)
    if need > MEMORY_HEADROOM * have:
        raise ResourceError("evaluation.mode", f"training this supernet needs about {need / 2**30:.1f} GiB ({parts}); "
                                               f"{placement.device} has {have / 2**30:.1f} GiB available. Use a "
                                               "smaller train.batch_size, a larger machine, or evaluation.mode: "
                                               "finetune")
