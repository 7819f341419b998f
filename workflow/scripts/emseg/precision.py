"""The arithmetic a network runs in: autocast dtype and memory format, chosen per device.

bf16 autocast halves the time of a training step on CPUs that compute bf16 in hardware
(AVX512-BF16 or AMX-BF16: recent Xeon and EPYC), but on a CPU without them (AVX2 only) every
bf16 operation is emulated and the step gets slower. So `auto` asks the CPU which it has instead
of assuming, and says why it chose what it chose; `fp32`, `bf16` and `fp16` force a choice on any
device. CUDA keeps bf16 autocast and channels-last. On the CPU channels-last (NHWC) is used as
well: oneDNN's convolutions are faster in it (BENCHMARKS.md, "Precision and memory format").
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

LOG = logging.getLogger("emseg")

DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
NATIVE_BF16_FEATURES = ("amx_bf16", "avx512_bf16")  # x86 features that compute bf16 in hardware


@dataclass(frozen=True)
class Precision:
    """How a network runs on one device: `autocast` None means plain fp32."""

    autocast: torch.dtype | None
    channels_last: bool
    reason: str

    @property
    def name(self) -> str:
        return next(key for key, dtype in DTYPES.items() if dtype == self.autocast)

    @property
    def label(self) -> str:
        """The arithmetic in a few words, e.g. `bf16, channels-last`."""
        return f"{self.name}, {'channels-last' if self.channels_last else 'contiguous'}"

    def describe(self) -> str:
        return f"{self.label} ({self.reason})"

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model in the memory format its inputs will have (a no-op for contiguous)."""
        if self.channels_last:
            return model.to(memory_format=torch.channels_last)
        return model

    def autocast_context(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        """The autocast region of the forward pass (nothing to do for fp32)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)

    def as_dict(self) -> dict[str, object]:
        return {"precision": self.name, "channels_last": self.channels_last, "reason": self.reason}


def native_bf16_feature() -> str | None:
    """The CPU feature that computes bf16 in hardware (`amx_bf16`, `avx512_bf16`), else None."""
    capabilities = torch.cpu.get_capabilities()
    return next((flag for flag in NATIVE_BF16_FEATURES if capabilities.get(flag)), None)


def choose_precision(requested: str, device: torch.device, key: str) -> Precision:
    """The precision for `device` from a config value (`auto`, `fp32`, `bf16`, `fp16`) at `key`."""
    if requested != "auto" and requested not in DTYPES:
        raise ValueError(f"{key}: unknown precision {requested!r}, use auto, {', '.join(DTYPES)}")
    channels_last = device.type in ("cuda", "cpu")
    if requested != "auto":
        reason = f"{key}: {requested}"
        if requested == "bf16" and device.type == "cpu" and native_bf16_feature() is None:
            reason += ", emulated on this CPU: slower than fp32"
        return Precision(DTYPES[requested], channels_last, reason)
    if device.type == "cuda":
        return Precision(torch.bfloat16, True, "auto: bf16 autocast on CUDA")
    if device.type != "cpu":
        return Precision(None, False, f"auto: fp32 on {device.type}")
    feature = native_bf16_feature()
    if feature is not None:
        return Precision(torch.bfloat16, True, f"auto: this CPU computes bf16 natively ({feature})")
    return Precision(
        None,
        True,
        "auto: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is emulated and slower",
    )
