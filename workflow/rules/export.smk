# BioImage Model Zoo export: one trained run as a validated model package that Fiji (deepImageJ),
# napari and bioimageio.core run without emseg.  snakemake --cores all export
rule export:
    """Package the run named in `export:` for the BioImage Model Zoo."""
    input:
        lambda wildcards: export_package(),


rule export_bioimageio:
    """A BioImage Model Zoo package (spec 0.5) of one run, validated and model-tested offline."""
    input:
        unpack(export_inputs),
    output:
        package=EXPORT_PACKAGE,
    log:
        LOGS / "export_bioimageio_{name}_fold{fold}_seed{seed}.log",
    benchmark:
        BENCH / "export_bioimageio_{name}_fold{fold}_seed{seed}.tsv"
    wildcard_constraints:
        name=r"[^/]+",  # any name, so that a run outside the grid gets a message, not "no rule"
    conda:
        "../../envs/export.yaml"
    threads: all_cores()
    params:
        held_out=lambda wildcards: fold_split(wildcards)["validation"],
        training=lambda wildcards: fold_split(wildcards)["training"],
        train=lambda wildcards: {
            **SETTINGS[wildcards.name]["train"],
            "seed": int(wildcards.seed),
        },
        predict=lambda wildcards: {  # the mask threshold is not part of a package
            key: value
            for key, value in SETTINGS[wildcards.name]["predict"].items()
            if key != "threshold"
        },
        export=config.get("export", {}),
    script:
        "../scripts/export_bioimageio.py"
