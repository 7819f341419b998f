"""Rule score: V_rand, V_info and pixel scores of the held-out slices at the best threshold."""

from typing import Any

from emseg.io import atomic_path, read_stack, write_json
from emseg.metrics import score_stack
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    probs = read_stack(snakemake.input.prob)
    slices = list(snakemake.params.slices)
    labels = read_stack(snakemake.input.labels)[slices]
    best, per_slice, per_threshold = score_stack(probs, labels)
    per_slice["slice"] = slices
    means = per_slice.drop(columns=["slice", "threshold"]).mean().to_dict()
    summary = {**means, "threshold": best, "n_slices": len(per_slice), **snakemake.params.run}
    LOG.info(
        "held-out V_rand %.4f, V_info %.4f, pixel error %.4f, dice %.4f"
        " (threshold %.1f, %d slices)",
        *(summary[key] for key in ("vrand", "vinfo", "pixel_error", "dice")),
        best,
        len(per_slice),
    )
    with atomic_path(snakemake.output.per_slice) as tmp:
        per_slice.to_csv(tmp, index=False)
    with atomic_path(snakemake.output.thresholds) as tmp:
        per_threshold.to_csv(tmp, index=False)
    write_json(snakemake.output.summary, summary)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
