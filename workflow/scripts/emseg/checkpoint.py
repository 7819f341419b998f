"""Atomic, resumable checkpoints that load without unpickling arbitrary objects.

A checkpoint holds everything a killed training job needs to continue as if it never stopped: the
model, optimiser, scheduler and gradient-scaler states, the step, the torch random states and the
log so far. It is written to a temporary name and renamed, so a kill mid-write leaves the previous
checkpoint intact, and it is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from emseg.io import InputError, atomic_path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise in memory first, so a full disk surfaces as the OSError that io reports plainly."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: Path, advice: str = "delete it to start over") -> dict[str, Any]:
    """Load a checkpoint saved by `save_checkpoint`; a damaged file raises InputError naming it.

    torch's own message runs to several lines of unpickling advice that does not apply to a
    file emseg never wrote, so only its first line is kept.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        reason = (str(error).strip().splitlines() or [""])[0]
        raise InputError(
            f"{path}: cannot load checkpoint ({type(error).__name__}: {reason}); {advice}"
        ) from error
