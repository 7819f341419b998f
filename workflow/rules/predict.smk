# Prediction, scores and the report: what the user came for.


rule predict:
    """Overlap-tile prediction of a whole stack: membrane probability and a binary mask."""
    input:
        model=RUN / "model.pt",
        images=PRE / f"padded{MARGIN}" / "{subset}_images.tif",
    output:
        prob=RUN / "predict" / "{subset}_membrane_prob.tif",
        mask=RUN / "predict" / "{subset}_mask.tif",
    log:
        LOGS / f"predict_{config['model']['name']}_{{subset}}.log",
    benchmark:
        BENCH / f"predict_{config['model']['name']}_{{subset}}.tsv"
    wildcard_constraints:
        subset="val|test",
    conda:
        "../../envs/emseg.yaml"
    threads: workflow.cores
    resources:
        gpu=1 if config["predict"]["device"] in ("auto", "cuda") else 0,
    params:
        predict=config["predict"],
    script:
        "../scripts/predict.py"


rule isbi_submission:
    """The ISBI 2012 challenge format: a 32-bit stack of cell-interior probability (1 - membrane)."""
    input:
        prob=RUN / "predict" / "test_membrane_prob.tif",
    output:
        submission=RUN / "isbi2012_submission.tif",
    log:
        LOGS / f"isbi_submission_{config['model']['name']}.log",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/isbi_submission.py"


rule score:
    """ISBI 2012 scores (V_rand, V_info) and pixel scores on the held-out slices."""
    input:
        prob=RUN / "predict" / "val_membrane_prob.tif",
        labels=PRE / "val_labels.tif",
        split=DATA / "split.json",
    output:
        per_slice=report(RUN / "metrics" / "per_slice.csv", category="Scores"),
        thresholds=RUN / "metrics" / "thresholds.csv",
        summary=RUN / "metrics" / "summary.json",
    log:
        LOGS / f"score_{config['model']['name']}.log",
    conda:
        "../../envs/emseg.yaml"
    params:
        run={
            "name": config["model"]["name"],
            "arch": config["model"]["arch"],
            "config_hash": RUN_HASH,
            "seed": config["train"]["seed"],
            "fold": 0,
        },
    script:
        "../scripts/score.py"


rule report:
    """One self-contained HTML page: config, learning curves, scores and every held-out slice."""
    input:
        train_log=RUN / "train_log.csv",
        curve=RUN / "learning_curve.png",
        per_slice=RUN / "metrics" / "per_slice.csv",
        summary=RUN / "metrics" / "summary.json",
        images=PRE / "val_images.tif",
        labels=PRE / "val_labels.tif",
        prob=RUN / "predict" / "val_membrane_prob.tif",
        split=DATA / "split.json",
    output:
        html=report(
            RUN / "report.html", category="Report", caption="../report/report.rst"
        ),
    log:
        LOGS / f"report_{config['model']['name']}.log",
    conda:
        "../../envs/emseg.yaml"
    params:
        config=config,
    script:
        "../scripts/write_report.py"
