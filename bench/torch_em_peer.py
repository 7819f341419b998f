"""torch-em's `predict_with_halo`, the block-wise prediction EM users run, set up like emseg's.

torch-em's package `__init__` imports its trainers and transforms, which import torchvision, and
torchvision's PyPI wheels do not load against a CPU build of torch ("operator torchvision::nms
does not exist"). `predict_with_halo` itself needs no torchvision, so this benchmark process, and
only it, imports torch-em behind stand-in `torchvision` modules that hold the two names the
import chain touches (`torchvision.utils.make_grid`, `torchvision.transforms`); they are taken out
of `sys.modules` again right after the import.

`predict_with_halo` hands the network each block plus halo in one forward pass, as a (1, 1, z, y,
x) tensor for a 3-D volume. A 2-D network cannot take that, so `slices_as_batch` moves z into the
batch axis (the usual way to run a 2-D network on a volume) and returns the membrane
probability; the halo is mirrored at the volume border (torch-em's `np.pad(mode="reflect")`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from emseg.blockwise import Member
from emseg.omezarr import quantize

PredictWithHalo = Callable[..., Any]


def import_predict_with_halo() -> tuple[PredictWithHalo | None, str]:
    """torch-em's predict_with_halo and a note on how it was imported (None: not installed)."""
    try:
        version = importlib.metadata.version("torch-em")
    except importlib.metadata.PackageNotFoundError:
        return None, "torch-em not installed"
    saved = {name: module for name, module in sys.modules.items() if _is_torchvision(name)}
    try:
        from torch_em.util.prediction import predict_with_halo
    except Exception:  # torchvision's wheel fails to load on CPU torch: RuntimeError, OSError
        _forget("torch_em")
        with _torchvision_stand_in(saved):
            from torch_em.util.prediction import predict_with_halo
        return predict_with_halo, f"torch-em {version} (imported past torchvision: stand-in)"
    return predict_with_halo, f"torch-em {version}"


@contextlib.contextmanager
def _torchvision_stand_in(saved: dict[str, types.ModuleType]) -> Any:
    """Stand-in torchvision modules while torch-em imports; then `saved` (the state before)."""
    _forget("torchvision")

    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("torchvision stand-in of bench/torch_em_peer.py: not usable")

    root = types.ModuleType("torchvision")
    utils = types.ModuleType("torchvision.utils")
    transforms = types.ModuleType("torchvision.transforms")
    utils.make_grid = unavailable  # type: ignore[attr-defined]
    root.utils, root.transforms = utils, transforms  # type: ignore[attr-defined]
    sys.modules.update({m.__name__: m for m in (root, utils, transforms)})
    try:
        yield
    finally:
        _forget("torchvision")
        sys.modules.update(saved)


def _is_torchvision(name: str) -> bool:
    return name == "torchvision" or name.startswith("torchvision.")


def _forget(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def slices_as_batch(autocast: torch.dtype | None) -> Callable[[torch.nn.Module, torch.Tensor], Any]:
    """prediction_function of a 2-D network: (1, 1, z, y, x) -> membrane probability, alike."""

    def predict(net: torch.nn.Module, block: torch.Tensor) -> torch.Tensor:
        planes = block[0].transpose(0, 1)  # (z, 1, y, x): the slices as a batch
        context = (
            torch.autocast(planes.device.type, dtype=autocast)
            if autocast is not None
            else contextlib.nullcontext()
        )
        with context:
            logits = net(planes)
        return torch.softmax(logits.float(), dim=1)[:, 1][None, None]

    return predict


def membrane_uint8(prediction: np.ndarray) -> np.ndarray:
    """postprocess: (1, z, y, x) probability -> (z, y, x) stored as emseg stores it (p x 255)."""
    return quantize(prediction[0], "uint8")


def run_predict_with_halo(
    predict_with_halo: PredictWithHalo,
    volume: Any,
    output: Any,
    member: Member,
    block: tuple[int, int, int],
    halo: tuple[int, int, int],
    slices: range,
    device: torch.device,
) -> None:
    """Predict `slices` of `volume` into `output` with the network and scaling of `member`."""
    predict_with_halo(
        volume,
        member.model,
        gpu_ids=[str(device)],
        block_shape=block,
        halo=halo,
        output=output,
        preprocess=member.normalization.apply,
        postprocess=membrane_uint8,
        prediction_function=slices_as_batch(member.options.autocast),
        disable_tqdm=True,
        roi=(slice(slices.start, slices.stop), slice(None), slice(None)),
    )
