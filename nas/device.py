"""Where training runs and at which precision: ``train.device`` and ``train.precision`` of a study.

``device``: ``auto`` (CUDA when this process sees a CUDA device, else the CPU, said once), ``cpu``, ``cuda`` or
``cuda:N``. ``precision``: ``fp32``, ``bf16`` (autocast to bfloat16, on CUDA and on the CPU) or ``fp16`` (autocast
to float16 with a gradient scaler, CUDA only).

The study file says what the user wants; :func:`resolve` says what this process gets, once, at an entry point (a
command, a search worker, a Ray trial) and everything that trains or evaluates takes the resulting
:class:`Placement`: the model, the teacher, every batch and the losses live on its device.
"""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from search_spaces.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_said: set[str] = set()


def check_device(value: object, where: str = "train.device") -> str:
    """A device setting's syntax (not whether this machine has it: see :func:`resolve`)."""
    if isinstance(value, str):
        if value in ("auto", "cpu", "cuda"):
            return value
        kind, _, index = value.partition(":")
        if kind == "cuda" and index.isdigit():
            return value
    raise ConfigError(where, f"expected auto, cpu, cuda or cuda:N, got {value!r}")


def check_precision(value: object, where: str = "train.precision") -> str:
    if value not in PRECISIONS:
        raise ConfigError(where, f"expected one of {', '.join(PRECISIONS)}, got {value!r}")
    return value  # type: ignore[return-value]


def cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _no_cuda(where: str, value: str) -> ConfigError:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return ConfigError(where, f"{value}: this machine has no CUDA device torch can use{seen}; use cpu or auto")


def resolve_device(value: str, where: str = "train.device") -> torch.device:
    """The torch device a setting names on this machine. ``auto`` without CUDA is the CPU, said once per process
    on stderr; ``cuda`` without a CUDA device is a :class:`ConfigError` at ``where``."""
    value = check_device(value, where)
    if value == "cpu":
        return torch.device("cpu")
    count = cuda_count()
    if value == "auto":
        if count:
            return torch.device("cuda", 0)
        if "auto" not in _said:
            _said.add("auto")
            print(f"{where}: auto: no CUDA device here, training on the CPU", file=sys.stderr)
        return torch.device("cpu")
    if not count:
        raise _no_cuda(where, value)
    index = int(value.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError(where, f"{value}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Placement:
    """A device and a precision: what a training loop and an evaluation run at."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision", "fp16 needs a CUDA device (its gradient scaler); use bf16 on the "
                                                 "CPU")

    def autocast(self) -> AbstractContextManager:
        """Mixed precision around a forward pass and its loss (a no-op at fp32)."""
        return torch.autocast(self.device.type, dtype=_DTYPES.get(self.precision, torch.float32),
                              enabled=self.precision != "fp32")

    def scaler(self) -> torch.amp.GradScaler:
        """The gradient scaler fp16 needs (disabled otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def put(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Tensors on the device (asynchronous copies from pinned memory on CUDA)."""
        return tuple(t.to(self.device, non_blocking=True) for t in tensors)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return name + ("" if self.precision == "fp32" else f", {self.precision} autocast")


def resolve(device: str, precision: str = "fp32", where: str = "train.device") -> Placement:
    """The placement a study's (or a flag's) settings give on this machine."""
    return Placement(resolve_device(device, where), check_precision(precision))


def worker_device(device: str, worker: int) -> str:
    """The device of local search worker ``worker``: on a machine with several CUDA devices, ``auto`` and ``cuda``
    go round robin over them (one worker per GPU, then sharing); an explicit ``cuda:N`` or ``cpu`` stays."""
    count = cuda_count()
    if device in ("auto", "cuda") and count > 1:
        return f"cuda:{worker % count}"
    return device


__all__ = ["PRECISIONS", "Placement", "check_device", "check_precision", "cuda_count", "resolve", "resolve_device",
           "worker_device"]
