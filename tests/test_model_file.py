"""Model files hold architecture, normalisation and tile size; every wrong file is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emseg.checkpoint import save_checkpoint
from emseg.io import InputError
from emseg.model_file import load_model_file
from volume_helpers import CPU, write_model


def test_a_model_file_rebuilds_the_network_it_was_saved_from(tmp_path: Path) -> None:
    path = write_model(tmp_path / "model.pt", "valid", low=12.5)
    loaded = load_model_file(path)
    assert loaded.spec["padding"] == "valid" and loaded.train_tile_size == 32
    assert (loaded.normalization.low, loaded.normalization.high) == (12.5, 230.0)
    assert loaded.geometry.margin == 20
    model = loaded.build(CPU)
    assert not model.training
    again = load_model_file(path).build(CPU)
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 44, 44), dtype=np.float32))
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x))


def test_wrong_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"gone\.pt: model file does not exist"):
        load_model_file(tmp_path / "gone.pt")
    (tmp_path / "text.pt").write_text("not a model")
    with pytest.raises(InputError, match=r"text\.pt: cannot load checkpoint"):
        load_model_file(tmp_path / "text.pt")
    torch.save({"where": Path("/elsewhere")}, tmp_path / "foreign.pt")  # a pickle emseg never wrote
    with pytest.raises(InputError, match=r"foreign\.pt: cannot load checkpoint") as refused:
        load_model_file(tmp_path / "foreign.pt")
    assert "\n" not in str(refused.value), "torch's multi-line unpickling advice leaked through"
    assert str(refused.value).endswith("not an emseg model file? give the model.pt of a run")
    save_checkpoint(
        tmp_path / "last.pt", {"model": {}, "model_spec": {}, "step": 3, "optimizer": {}}
    )
    with pytest.raises(InputError, match=r"last\.pt: this is a training checkpoint"):
        load_model_file(tmp_path / "last.pt")
    save_checkpoint(tmp_path / "other.pt", {"weights": {}})
    with pytest.raises(InputError, match=r"other\.pt: not an emseg model file"):
        load_model_file(tmp_path / "other.pt")
    state = torch.load(write_model(tmp_path / "cut.pt"), weights_only=True)
    state["model_spec"]["base_channels"] = 8  # weights of a 4-channel network
    save_checkpoint(tmp_path / "cut.pt", state)
    with pytest.raises(InputError, match=r"cut\.pt: weights do not fit the architecture"):
        load_model_file(tmp_path / "cut.pt").build(CPU)
    state["model_spec"]["arch"] = "resnet"
    save_checkpoint(tmp_path / "arch.pt", state)
    with pytest.raises(InputError, match=r"arch\.pt: unusable architecture"):
        load_model_file(tmp_path / "arch.pt")
