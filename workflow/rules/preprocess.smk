# Preprocessing: robust intensity scaling fitted on the training slices, then mirror padding by the
# margin that the network's valid convolutions consume.


rule normalize:
    """Scale intensities by percentiles of the training slices; split stacks into train/val/test."""
    input:
        **{key: path for key, path in CANONICAL.items() if key != "record"},
        split=DATA / "split.json",
    output:
        **({"test_images": PRE / "test_images.tif"} if has_test_images() else {}),
        normalization=PRE / "normalization.json",
        train_images=PRE / "train_images.tif",
        train_labels=PRE / "train_labels.tif",
        val_images=PRE / "val_images.tif",
        val_labels=PRE / "val_labels.tif",
    log:
        LOGS / "normalize.log",
    conda:
        "../../envs/emseg.yaml"
    params:
        preprocess=config["preprocess"],
    script:
        "../scripts/normalize.py"


rule mirror_pad:
    """Reflect each slice about its border by the network's margin (the paper's overlap-tile input)."""
    input:
        stack=PRE / "{subset}_images.tif",
    output:
        padded=PRE / "padded{margin}" / "{subset}_images.tif",
    log:
        LOGS / "mirror_pad_{subset}_{margin}.log",
    wildcard_constraints:
        subset="train|val|test",
        margin=r"\d+",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/mirror_pad.py"
