"""The package's two weight files: a PyTorch state dict and a TorchScript module.

The state dict belongs to `network.MembraneProbability`, whose code ships beside it
(`standalone.py`). The TorchScript module is traced, not scripted (the networks check their input
sizes in plain Python). Tracing records the operations on one input; if a size were baked into a
crop, the module would be wrong at every other size, so it is compared with the eager network at
the smallest valid sizes and in a batch of two before it is written.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from emseg.export.archive import normalize_zip
from emseg.export.network import MembraneProbability
from emseg.export.tensors import SizeRule

TOLERANCE = 1e-5  # probabilities; the traced and eager graphs run the same kernels
# what torch.jit.save writes that differs from save to save and that torch.jit.load can do
# without: a random id and the trace's Python stack (error-message annotations)
MACHINE_RECORDS = (".data/serialization_id", ".debug_pkl")


def save_state_dict(network: MembraneProbability, path: Path) -> None:
    """The exported network's weights as a plain state dict (loadable with weights_only=True)."""
    torch.save(network.state_dict(), path)


def save_torchscript(
    network: MembraneProbability, example: np.ndarray, rule: SizeRule, path: Path
) -> list[int]:
    """Trace `network` on `example` (one normalised 2-D input), check it and write it.

    Returns the input sizes it was checked at besides the traced one; raises RuntimeError naming
    the size where the traced module and the network differ.
    """
    network = network.eval()
    inputs = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))[None, None]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit, still the spec's format
        traced = torch.jit.trace(network, inputs)
    sizes = [rule.min_input, rule.min_input + rule.step, rule.min_input + 2 * rule.step]
    checked = [size for size in sizes if size != example.shape[0]]
    generator = torch.Generator().manual_seed(0)
    for size in checked:
        probe = torch.rand((2, 1, size, size + rule.step), generator=generator)
        with torch.no_grad():
            expected, got = network(probe), traced(probe)
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=TOLERANCE):
            raise RuntimeError(
                f"TorchScript traced at {example.shape[0]} px differs from the network at "
                f"{size} x {size + rule.step} px"
            )
    traced.save(str(path))
    normalize_zip(path, drop_suffixes=MACHINE_RECORDS)
    return checked
