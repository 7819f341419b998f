"""Rule make_synthetic: generate an EM-like labelled stack (and test slices) from a seed."""

from typing import Any

from emseg.dataset import write_canonical
from emseg.runner import run_rule
from emseg.synthetic import synthetic_stack


def main(snakemake: Any) -> None:
    spec = dict(snakemake.params.synthetic)
    labelled, tests = int(spec["slices"]), int(spec.get("test_slices", 0))
    images, labels = synthetic_stack(
        labelled + tests,
        int(spec["height"]),
        int(spec["width"]),
        seed=int(spec["seed"]),
        cell_size=float(spec["cell_size"]),
    )
    write_canonical(
        snakemake.output,
        train_images=images[:labelled],
        train_labels=labels[:labelled],
        test_images=images[labelled:] if tests else None,
        source={"name": "synthetic", **spec},
        names={
            "train_images": "synthetic",
            "train_labels": "synthetic",
            "test_images": "synthetic",
        },
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
