# The augmentation cache: N deformed samples per training slice with their weight maps, one shard
# (and so one parallel job) per slice, shared by every model trained on these slices.


rule augment_slice:
    """Elastically deform one training slice N times and compute each sample's U-Net weight map."""
    input:
        images=PRE / "train_images.tif",
        labels=PRE / "train_labels.tif",
        normalization=PRE / "normalization.json",
    output:
        shard=AUG / "slice{index}.npy",
        record=AUG / "slice{index}.json",
    log:
        LOGS / "augment_slice{index}.log",
    benchmark:
        BENCH / "augment_slice{index}.tsv"
    wildcard_constraints:
        index=r"\d+",
    conda:
        "../../envs/emseg.yaml"
    params:
        augment=config["augment"],
        weights=config["weights"],
    script:
        "../scripts/augment_slice.py"
