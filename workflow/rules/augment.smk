# The augmentation cache: N deformed samples per labelled slice with their weight maps, one shard
# (and so one parallel job) per slice, shared by every model, fold and seed that trains on it.


rule augment_slice:
    """Elastically deform one labelled slice N times and compute each sample's U-Net weight map."""
    input:
        images=PRE / "labelled_images.tif",
        labels=PRE / "labels.tif",
    output:
        shard=AUG / "slice{index}.npy",
        record=AUG / "slice{index}.json",
    log:
        LOGS / "augment_slice{index}.log",
    benchmark:
        BENCH / "augment_slice{index}.tsv"
    conda:
        "../../envs/emseg.yaml"
    params:
        augment=config["augment"],
        weights=config["weights"],
    script:
        "../scripts/augment_slice.py"
