# Training: one job per model; it uses a GPU when there is one and every core it is given otherwise.


rule train:
    """Train the configured network on tiles from the augmentation cache, resuming from checkpoints."""
    input:
        shards=expand(AUG / "slice{index}.npy", index=training_slices()),
        records=expand(AUG / "slice{index}.json", index=training_slices()),
        val_images=PRE / f"padded{MARGIN}" / "val_images.tif",
        val_labels=PRE / "val_labels.tif",
    output:
        model=RUN / "model.pt",
        log=RUN / "train_log.csv",
        curve=report(
            RUN / "learning_curve.png",
            category="Training",
            caption="../report/curve.rst",
        ),
        summary=RUN / "train_summary.json",
    log:
        LOGS / f"train_{config['model']['name']}.log",
    benchmark:
        BENCH / f"train_{config['model']['name']}.tsv"
    conda:
        "../../envs/emseg.yaml"
    threads: workflow.cores
    resources:
        gpu=1 if config["train"]["device"] in ("auto", "cuda") else 0,
    params:
        model=config["model"],
        train=config["train"],
        config_hash=RUN_HASH,
        checkpoints=RUN / "checkpoints",
    script:
        "../scripts/train.py"
