# Data acquisition: every source ends as the same canonical stacks in results/data/.


if SOURCE == "isbi2012":

    rule download_isbi2012:
        """Fetch the ISBI 2012 slices (or copy a local mirror) and verify every SHA-256."""
        input:
            manifest=MANIFEST,
        output:
            record=DATA / "isbi2012" / "fetched.json",
        log:
            LOGS / "download_isbi2012.log",
        conda:
            "../../envs/emseg.yaml"
        params:
            folder=DATA / "isbi2012" / "files",
        script:
            "../scripts/download_isbi2012.py"

    rule import_isbi2012:
        """Stack the verified ISBI slices into canonical TIFFs (labels: 1 = membrane)."""
        input:
            record=DATA / "isbi2012" / "fetched.json",
        output:
            **CANONICAL,
            **test_stack_output(),
        log:
            LOGS / "import_dataset.log",
        conda:
            "../../envs/emseg.yaml"
        params:
            folder=DATA / "isbi2012" / "files",
        script:
            "../scripts/import_isbi2012.py"

elif SOURCE == "files":

    rule import_files:
        """Check the user's training stacks, convert them into canonical TIFFs (1 = membrane)."""
        input:
            train_images=user_files("train_images"),
            train_labels=user_files("train_labels"),
        output:
            **CANONICAL,
        log:
            LOGS / "import_dataset.log",
        conda:
            "../../envs/emseg.yaml"
        params:
            membrane_value=config["data"]["membrane_value"],
        script:
            "../scripts/import_files.py"

    if has_test_images():

        rule import_test_files:
            """Check the user's test stack against the training images and convert it into a
            canonical TIFF: its own job, so another test stack retrains nothing."""
            input:
                test_images=user_files("test_images"),
                train_images=CANONICAL["train_images"],
            output:
                test_images=TEST_STACK,
            log:
                LOGS / "import_test_files.log",
            conda:
                "../../envs/emseg.yaml"
            script:
                "../scripts/import_test_files.py"

else:

    rule make_synthetic:
        """Generate an EM-like stack with exact labels, from a seed."""
        output:
            **CANONICAL,
            **test_stack_output(),
        log:
            LOGS / "import_dataset.log",
        conda:
            "../../envs/emseg.yaml"
        params:
            synthetic=config["data"]["synthetic"],
        script:
            "../scripts/make_synthetic.py"


rule split_slices:
    """Record which labelled slices each fold trains on and which it holds out."""
    input:
        dataset=DATA / "dataset.json",
    output:
        split=DATA / "split.json",
    log:
        LOGS / "split_slices.log",
    conda:
        "../../envs/emseg.yaml"
    params:
        folds=FOLDS,
    script:
        "../scripts/split_slices.py"
