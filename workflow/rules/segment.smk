# Cells from membranes: a label image per probability stack (segment:), scored and shown.


rule segment:
    """Label image of a run's probability stack: each cell its own id, 0 on boundaries."""
    input:
        prob=RUN / "predict" / "{subset}_membrane_prob.tif",
    output:
        labels=RUN / "predict" / "{subset}_segmentation.tif",
    log:
        LOGS / "segment_{name}_fold{fold}_seed{seed}_{subset}.log",
    benchmark:
        BENCH / "segment_{name}_fold{fold}_seed{seed}_{subset}.tsv"
    wildcard_constraints:
        subset="val|test",
    conda:
        "../../envs/emseg.yaml"
    params:
        segment=lambda wildcards: SETTINGS[wildcards.name]["segment"],
    script:
        "../scripts/segment.py"


# A model's ensemble of test probabilities (cv.ensemble).
use rule segment as segment_ensemble with:
    input:
        prob=RUNS / "{name}" / "ensemble_test_membrane_prob.tif",
    output:
        labels=RUNS / "{name}" / "ensemble_test_segmentation.tif",
    log:
        LOGS / "segment_ensemble_{name}.log",
    benchmark:
        BENCH / "segment_ensemble_{name}.tsv"


# A fold's seed ensemble on its held-out slices (cv.ensemble, several seeds).
use rule segment as segment_held_out_ensemble with:
    input:
        prob=SEED_ENSEMBLE / "predict" / "val_membrane_prob.tif",
    output:
        labels=SEED_ENSEMBLE / "predict" / "val_segmentation.tif",
    log:
        LOGS / "segment_ensemble_{name}_fold{fold}.log",
    benchmark:
        BENCH / "segment_ensemble_{name}_fold{fold}.tsv"
