# Training: one job per (model, fold, seed); it uses a GPU when there is one and every core it is
# given otherwise.


rule train:
    """Train a network on tiles from the augmentation cache, resuming from its checkpoints."""
    input:
        shards=shards,
        records=shard_records,
        images=padded("labelled"),
        labels=PRE / "labels.tif",
        normalization=PRE / "normalization.json",
        split=DATA / "split.json",
    output:
        model=RUN / "model.pt",
        log=RUN / "train_log.csv",
        curve=report(
            RUN / "learning_curve.png",
            category="Training",
            subcategory="{name} fold {fold} seed {seed}",
            caption="../report/curve.rst",
        ),
        summary=RUN / "train_summary.json",
    log:
        LOGS / "train_{name}_fold{fold}_seed{seed}.log",
    benchmark:
        BENCH / "train_{name}_fold{fold}_seed{seed}.tsv"
    conda:
        "../../envs/emseg.yaml"
    threads: all_cores()
    resources:
        gpu=lambda wildcards: int(
            SETTINGS[wildcards.name]["train"]["device"] in ("auto", "cuda")
        ),
    params:
        model=lambda wildcards: SETTINGS[wildcards.name]["model"],
        train=lambda wildcards: {
            **SETTINGS[wildcards.name]["train"],
            "seed": int(wildcards.seed),
        },
        validation=lambda wildcards: fold_split(wildcards)["validation"],
        config_hash=run_hash,
        checkpoints=lambda wildcards: str(RUN / "checkpoints").format(**wildcards),
    script:
        "../scripts/train.py"
