# Preprocessing: robust intensity scaling fitted on the labelled slices, then mirror padding by the
# margin that each network's valid convolutions consume.


rule normalize:
    """Scale intensities by percentiles of the labelled slices (no labels used), as float32."""

    # A source that makes the test stack in the same job keeps it an input, as before the test
    # stack had its own scaling job: results of an older emseg are then not retrained.
    input:
        **({} if SOURCE == "files" else test_stack_output()),
        train_images=CANONICAL["train_images"],
        train_labels=CANONICAL["train_labels"],
    output:
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


rule normalize_test:
    """Scale the test slices as the labelled ones were: its own job, so that another test stack
    retrains nothing."""
    input:
        normalization=PRE / "normalization.json",
        test_images=TEST_STACK,
    output:
        test_images=PRE / "test_images.tif",
    log:
        LOGS / "normalize_test.log",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/normalize_test.py"


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
