"""The package's README: what the model computes, what it was trained on, how it scored, citations.

Every number comes from the run record (geometry, normalisation, split, scores, config hash); the
Model Zoo asks for a '## Validation' section, which holds the held-out scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from emseg import __version__
from emseg.export.record import Metadata, RunRecord
from emseg.export.tensors import Example
from emseg.losses import AUTO_LOSS


@dataclass(frozen=True)
class Citation:
    text: str
    doi: str


UNET = Citation(
    "Ronneberger O, Fischer P, Brox T (2015). U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.",
    "10.1007/978-3-319-24574-4_28",
)
FCN = Citation(
    "Long J, Shelhamer E, Darrell T (2015). Fully Convolutional Networks for Semantic "
    "Segmentation. CVPR 2015, 3431-3440.",
    "10.1109/CVPR.2015.7298965",
)
VNET = Citation(
    "Milletari F, Navab N, Ahmadi SA (2016). V-Net: Fully Convolutional Neural Networks for "
    "Volumetric Medical Image Segmentation. 3DV 2016, 565-571.",
    "10.1109/3DV.2016.79",
)
ISBI_DATA = Citation(
    "Cardona A, Saalfeld S, Preibisch S, Schmid B, Cheng A, Pulokas J, Tomancak P, Hartenstein V "
    "(2010). An Integrated Micro- and Macroarchitectural Analysis of the Drosophila Brain by "
    "Computer-Assisted Serial Section Electron Microscopy. PLoS Biology 8(10): e1000502.",
    "10.1371/journal.pbio.1000502",
)
ISBI_CHALLENGE = Citation(
    "Arganda-Carreras I, Turaga SC, Berger DR, Ciresan D, Giusti A, Gambardella LM, Schmidhuber J, "
    "Laptev D, Dwivedi S, Buhmann JM, et al. (2015). Crowdsourcing the creation of image "
    "segmentation algorithms for connectomics. Frontiers in Neuroanatomy 9: 142.",
    "10.3389/fnana.2015.00142",
)


def citations(record: RunRecord) -> list[Citation]:
    """The network's paper (and the U-Net's, whose training recipe emseg follows), the ISBI 2012
    challenge paper (its scores) and, for the ISBI data, the paper of the data."""
    arch = record.model["arch"]
    cited = [UNET] + ([FCN] if arch == "fcn" else []) + ([VNET] if arch == "vnet" else [])
    if record.dataset.get("source", {}).get("name") == "isbi2012":
        cited.append(ISBI_DATA)
    return [*cited, ISBI_CHALLENGE]


def readme(record: RunRecord, example: Example, metadata: Metadata) -> str:
    """The package's README.md."""
    parts = [
        _intro(record),
        _tensors(record),
        _training(record),
        _validation(record, example),
        _usage(record),
        "## Citations\n\n" + "\n".join(f"- {c.text} doi:{c.doi}" for c in citations(record)),
        _license(metadata),
    ]
    if metadata.documentation.strip():
        parts.append(metadata.documentation.strip())
    return "\n\n".join(parts) + "\n"


def _intro(record: RunRecord) -> str:
    return (
        f"# emseg {record.title}: membrane probability of EM slices\n\n"
        f"A {record.network()} trained with emseg {__version__} on {record.source()}. "
        "It takes one gray-value electron microscopy slice and returns, for every pixel, the "
        "probability that it is membrane (a cell boundary): the map that emseg's `predict` rule "
        "writes as `*_membrane_prob.tif`."
    )


def _tensors(record: RunRecord) -> str:
    rule, norm = record.rule, record.normalization
    text = (
        "## Input and output\n\n"
        "| tensor | axes | size of y and x | values |\n| --- | --- | --- | --- |\n"
        f"| `raw` | batch, channel (1), y, x | {rule.min_input} + n × {rule.step} px "
        "(n = 0, 1, 2, …) | gray values as acquired (8- or 16-bit, or float) |\n"
        f"| `membrane` | batch, channel (1), y, x | the input's size, halo {rule.halo} px | "
        "membrane probability, 0 to 1 |\n\n"
        f"The package's preprocessing (`scale_linear`) maps x to (x − {norm.low:g}) / "
        f"({norm.high:g} − {norm.low:g}), emseg's normalisation: the "
        f"percentiles {norm.lower_percentile:g} and {norm.upper_percentile:g} of the labelled "
        "slices' gray values map to 0 and 1. Give it raw gray values of the same "
        "microscope and contrast, not an image normalised elsewhere. The softmax over the two "
        "classes (cell, membrane) is part of the network; the output is its membrane channel."
    )
    if rule.margin:
        text += (
            "\n\nThe network has unpadded convolutions (Ronneberger et al. 2015), and it "
            f"mirrors its input by {rule.margin} px on every side itself, as emseg's "
            "overlap-tile prediction does, so its output has its input's size."
        )
    return text + "\n\n" + _tiling(record)


def _tiling(record: RunRecord) -> str:
    """How a consumer tiles a large image, why the tiles agree with one pass, and the border."""
    rule = record.rule
    text = (
        f"The output's halo, {rule.halo} px, is how far the network sees: no output pixel "
        f"depends on input more than {rule.halo} px outside its group of {rule.step} × "
        f"{rule.step} px. bioimageio.core (and deepImageJ, which reads the same description) "
        f"cuts a large image into tiles of {rule.min_input} + n × {rule.step} px that overlap by "
        "twice the halo, mirrors the image past its border (the input's `pad: reflect`) and cuts "
        "the halo from each tile's output; the tiles then give the map that one pass over the "
        "whole image gives"
    )
    if record.model.get("norm") == "instance":
        text += (
            " up to the instance normalisation, which normalises each tile by its own "
            "statistics: expect small differences at tile borders."
        )
    else:
        text += ", up to float rounding."
    if not rule.margin:
        text += (
            " At the image border the package reads the image mirrored by the halo, where "
            "emseg's own prediction reads the zeros of the padded convolutions: within the halo "
            "of the border the two maps differ."
        )
    return text


def _training(record: RunRecord) -> str:
    train, training = record.train, record.training
    loss = AUTO_LOSS[record.model["arch"]] if train["loss"] == "auto" else train["loss"]
    return (
        "## Training\n\n| | |\n| --- | --- |\n"
        f"| run | `results/runs/{record.name}/fold{record.fold}/seed{record.seed}` |\n"
        f"| data | {record.source()} |\n"
        f"| training slices | {_slices(record.training_slices)} |\n"
        f"| held-out slices | {_slices(record.held_out)}: not trained on, scored below |\n"
        f"| network | {record.network()}, dropout {record.model['dropout']} |\n"
        f"| training | {training.get('iterations', train['iterations'])} steps, "
        f"{train['optimizer']} (lr {train['lr']}, {train['schedule']} schedule), batches of "
        f"{train['batch_size']} tiles of {train['tile_size']} px, loss {loss}, seed "
        f"{record.seed}; {training.get('train_seconds', float('nan')):.0f} s on "
        f"{training.get('device', '?')} |\n"
        f"| config hash | `{record.config_hash}`: emseg's hash of the data, preprocess, weights, "
        "augment, model and train settings and the split, recorded with the run's results |"
    )


def _validation(record: RunRecord, example: Example) -> str:
    s, predict = record.scores, record.predict
    tta = "with" if predict.get("tta") else "without"
    crop = example.prob.shape[0] - 2 * example.mirrored
    mirrored = (
        f", mirrored by {example.mirrored} px to the package's smallest input"
        if example.mirrored
        else ""
    )
    return (
        "## Validation\n\n"
        f"Held-out slices {_slices(record.held_out)}, scored by emseg with the ISBI 2012 "
        "challenge's procedure (Arganda-Carreras et al. 2015): V_rand and V_info at the best "
        "threshold t on the cell probability 1 − p, pixel error, Dice and IoU at p ≥ 0.5. "
        f"emseg predicted them with tiles of {predict.get('tile_size')} px {tta} test-time "
        "augmentation.\n\n"
        "| V_rand | V_info | pixel error | Dice | IoU |\n| --- | --- | --- | --- | --- |\n"
        f"| {s['vrand']:.4f} | {s['vinfo']:.4f} | {s['pixel_error']:.4f} | {s['dice']:.4f} | "
        f"{s['iou']:.4f} |\n\n"
        f"Best threshold t: {_thresholds(s)}. "
        "The package runs the network once on its input, without test-time augmentation. Its test "
        f"tensors are a {crop} x {crop} px crop of held-out slice {example.slice_index}{mirrored}, "
        "and emseg's own prediction of it (`emseg.tiling.predict_slice`, one tile, no "
        "augmentation); bioimageio.core's model test reproduces that prediction from the package."
    )


def _usage(record: RunRecord) -> str:
    rule = record.rule
    return (
        "## Use\n\n"
        "**Python** (`pip install bioimageio.core torch`):\n\n"
        "```python\n"
        "import numpy as np\n"
        "from bioimageio.core import predict\n\n"
        f"image = ...  # one slice, (y, x), gray values; sides multiples of {rule.step} px\n"
        "sample = predict(model='<this zip>', inputs=image[np.newaxis, np.newaxis])\n"
        "membrane = sample.members['membrane'].data.values[0, 0]\n"
        "```\n\n"
        f"bioimageio.core mirrors the image by the halo ({rule.halo} px) and runs it in one pass. "
        "For an image too large for that, add `blocksize_parameter=n` to `predict`: tiles of "
        f"{rule.min_input} + n × {rule.step} px give the same map (see *Input and output*).\n\n"
        "**Fiji**: install deepImageJ (update site *DeepImageJ*), install this zip with "
        "*Plugins › DeepImageJ › DeepImageJ Install Model* (from a local file), then run it on an "
        "open 2-D image with *DeepImageJ Run*.\n\n"
        "**napari**: open the image, then in napari's console (with bioimageio.core installed) run "
        "the Python lines above on `viewer.layers[0].data` and add the result with "
        "`viewer.add_image(membrane)`."
    )


def _license(metadata: Metadata) -> str:
    names = ", ".join(author["name"] for author in metadata.authors)
    return f"## License\n\n{metadata.license}. Trained and packaged by {names}."


def _thresholds(scores: Mapping[str, Any]) -> str:
    """The best t of V_rand, and of V_info where the scores record its own."""
    vrand = scores.get("vrand_threshold", scores.get("threshold"))
    vinfo = scores.get("vinfo_threshold")
    if vinfo is None:
        return f"{vrand:.1f}"
    return f"{vrand:.1f} for V_rand, {vinfo:.1f} for V_info"


def _slices(indices: Sequence[int]) -> str:
    """'25–29 (5)' for a contiguous block, '1, 4, 7 (3)' otherwise (0-based slice indices)."""
    if not indices:
        return "none"
    items = sorted(indices)
    if items == list(range(items[0], items[-1] + 1)) and len(items) > 2:
        return f"{items[0]}–{items[-1]} ({len(items)})"
    return f"{', '.join(map(str, items))} ({len(items)})"
