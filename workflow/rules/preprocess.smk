# Preprocessing: robust intensity scaling fitted on the labelled slices, then mirror padding by the
# margin that each network's valid convolutions consume.


rule normalize:
    """Scale intensities by percentiles of the labelled slices (no labels used), as float32."""
    input:
        **{key: path for key, path in CANONICAL.items() if key != "record"},
    output:
        **({"test_images": PRE / "test_images.tif"} if has_test_images() else {}),
        normalization=PRE / "normalization.json",
        labelled_images=PRE / "labelled_images.tif",
        labels=PRE / "labels.tif",
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
        stack=PRE / "{stack}_images.tif",
    output:
        padded=PRE / "padded{margin}" / "{stack}_images.tif",
    log:
        LOGS / "mirror_pad_{stack}_{margin}.log",
    wildcard_constraints:
        stack="labelled|test",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/mirror_pad.py"
