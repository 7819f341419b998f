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
        """Check the user's stacks and convert them into canonical TIFFs (labels: 1 = membrane)."""
        input:
            **user_files(),
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

else:

    rule make_synthetic:
        """Generate an EM-like stack with exact labels, from a seed."""
        output:
            **CANONICAL,
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
