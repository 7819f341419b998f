# Prediction, scores and the report: what the user came for.


rule predict:
    """Overlap-tile prediction of a stack: the membrane probability."""
    input:
        model=RUN / "model.pt",
        images=lambda wildcards: padded(
            "labelled" if wildcards.subset == "val" else "test"
        )(wildcards),
    output:
        prob=RUN / "predict" / "{subset}_membrane_prob.tif",
    log:
        LOGS / "predict_{name}_fold{fold}_seed{seed}_{subset}.log",
    benchmark:
        BENCH / "predict_{name}_fold{fold}_seed{seed}_{subset}.tsv"
    wildcard_constraints:
        subset="val|test",
    conda:
        "../../envs/emseg.yaml"
    threads: all_cores()
    resources:
        gpu=int(config["predict"]["device"] in ("auto", "cuda")),
    params:
        predict=lambda wildcards: prediction_settings(wildcards.name),
        slices=lambda wildcards: (
            fold_split(wildcards)["validation"] if wildcards.subset == "val" else None
        ),
    script:
        "../scripts/predict.py"


rule mask:
    """The binary membrane mask of a probability stack, for Fiji: 255 where p >= predict.threshold
    (made from the stored probability, so another threshold predicts nothing again)."""
    input:
        prob=RUN / "predict" / "{subset}_membrane_prob.tif",
    output:
        mask=RUN / "predict" / "{subset}_mask.tif",
    log:
        LOGS / "mask_{name}_fold{fold}_seed{seed}_{subset}.log",
    wildcard_constraints:
        subset="val|test",
    conda:
        "../../envs/emseg.yaml"
    params:
        threshold=lambda wildcards: SETTINGS[wildcards.name]["predict"]["threshold"],
    script:
        "../scripts/mask.py"


use rule mask as mask_ensemble with:
    input:
        prob=RUNS / "{name}" / "ensemble_test_membrane_prob.tif",
    output:
        mask=RUNS / "{name}" / "ensemble_test_mask.tif",
    log:
        LOGS / "mask_ensemble_{name}.log",


use rule mask as mask_held_out_ensemble with:
    input:
        prob=SEED_ENSEMBLE / "predict" / "val_membrane_prob.tif",
    output:
        mask=SEED_ENSEMBLE / "predict" / "val_mask.tif",
    log:
        LOGS / "mask_ensemble_{name}_fold{fold}.log",


rule isbi_submission:
    """The ISBI 2012 challenge format: a 32-bit stack of cell-interior probability (1 - membrane)."""
    input:
        prob=RUN / "predict" / "test_membrane_prob.tif",
    output:
        submission=RUN / "isbi2012_submission.tif",
    log:
        LOGS / "isbi_submission_{name}_fold{fold}_seed{seed}.log",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/isbi_submission.py"


rule ensemble:
    """Average the test probabilities of a model's fold and seed runs, as CV frameworks do."""
    input:
        probs=lambda wildcards: expand(
            str(RUN / "predict" / "test_membrane_prob.tif"),
            name=wildcards.name,
            fold=range(len(FOLDS)),
            seed=SEEDS,
        ),
    output:
        prob=RUNS / "{name}" / "ensemble_test_membrane_prob.tif",
    log:
        LOGS / "ensemble_{name}.log",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/ensemble.py"


# A fold's seed runs share its held-out slices (cv.ensemble, several seeds): their average is
# scored like one run.
use rule ensemble as ensemble_held_out with:
    input:
        probs=run_seeds(RUN / "predict" / "val_membrane_prob.tif"),
    output:
        prob=SEED_ENSEMBLE / "predict" / "val_membrane_prob.tif",
    log:
        LOGS / "ensemble_{name}_fold{fold}.log",


rule score:
    """ISBI 2012 scores (V_rand, V_info) and pixel scores on the held-out slices."""
    input:
        prob=RUN / "predict" / "val_membrane_prob.tif",
        segmentation=RUN / "predict" / "val_segmentation.tif",
        labels=PRE / "labels.tif",
        train_summary=RUN / "train_summary.json",
    output:
        per_slice=report(
            RUN / "metrics" / "per_slice.csv",
            category="Scores",
            subcategory="{name} fold {fold} seed {seed}",
        ),
        thresholds=RUN / "metrics" / "thresholds.csv",
        summary=RUN / "metrics" / "summary.json",
    log:
        LOGS / "score_{name}_fold{fold}_seed{seed}.log",
    conda:
        "../../envs/emseg.yaml"
    params:
        slices=lambda wildcards: fold_split(wildcards)["validation"],
        segment_method=lambda wildcards: SETTINGS[wildcards.name]["segment"]["method"],
        run=lambda wildcards: {
            "name": wildcards.name,
            "arch": SETTINGS[wildcards.name]["model"]["arch"],
            "config_hash": run_hash(wildcards),
            "seed": int(wildcards.seed),
            "fold": int(wildcards.fold),
        },
    script:
        "../scripts/score.py"


# A fold's seed ensemble, scored on the held-out slices as a single run is.
use rule score as score_ensemble with:
    input:
        prob=SEED_ENSEMBLE / "predict" / "val_membrane_prob.tif",
        segmentation=SEED_ENSEMBLE / "predict" / "val_segmentation.tif",
        labels=PRE / "labels.tif",
    output:
        per_slice=report(
            SEED_ENSEMBLE / "metrics" / "per_slice.csv",
            category="Scores",
            subcategory="{name} fold {fold} seed ensemble",
        ),
        thresholds=SEED_ENSEMBLE / "metrics" / "thresholds.csv",
        summary=SEED_ENSEMBLE / "metrics" / "summary.json",
    log:
        LOGS / "score_ensemble_{name}_fold{fold}.log",
    params:  # only `run` differs; `slices` and `segment_method` are score's
        run=lambda wildcards: {
            "name": wildcards.name,
            "arch": SETTINGS[wildcards.name]["model"]["arch"],
            "config_hash": seed_ensemble_hash(wildcards),
            "fold": int(wildcards.fold),
            "ensemble_seeds": SEEDS,
        },


rule report:
    """One self-contained HTML page: config, learning curves, scores and every held-out slice."""
    input:
        train_log=RUN / "train_log.csv",
        curve=RUN / "learning_curve.png",
        per_slice=RUN / "metrics" / "per_slice.csv",
        summary=RUN / "metrics" / "summary.json",
        images=PRE / "labelled_images.tif",
        labels=PRE / "labels.tif",
        prob=RUN / "predict" / "val_membrane_prob.tif",
        segmentation=RUN / "predict" / "val_segmentation.tif",
    output:
        html=report(
            RUN / "report.html",
            category="Report",
            subcategory="{name} fold {fold} seed {seed}",
            caption="../report/report.rst",
        ),
    log:
        LOGS / "report_{name}_fold{fold}_seed{seed}.log",
    conda:
        "../../envs/emseg.yaml"
    params:
        slices=lambda wildcards: fold_split(wildcards)["validation"],
        config=run_config,
    script:
        "../scripts/write_report.py"


rule compare:
    """Gather every run of the grid into one table and a comparison page."""
    input:
        summaries=all_runs(RUN / "metrics" / "summary.json"),
        train_summaries=all_runs(RUN / "train_summary.json"),
        ensembles=seed_ensembles(SEED_ENSEMBLE / "metrics" / "summary.json"),
    output:
        table=report(RESULTS / "comparison.csv", category="Comparison"),
        page=report(RESULTS / "comparison.html", category="Comparison"),
    log:
        LOGS / "compare.log",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/compare.py"
