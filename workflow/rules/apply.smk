# Applying trained models to your own volumes, block by block, locally or as SLURM jobs:
#   snakemake --cores all apply
# plan (header only) -> prepare (check, normalisation, empty OME-Zarr) -> blocks (one job per
# group of blocks) -> finish (upper pyramid levels, optional TIFF)


rule apply:
    """Every volume of apply.volumes as an OME-Zarr (and a TIFF where asked)."""
    input:
        applied_volumes,


rule apply_prepare:
    """Check a volume and its models, fix normalisation and tiles, create the empty OME-Zarr."""
    input:
        volume=lambda wildcards: VOLUMES[wildcards.volume]["input_file"],
        models=lambda wildcards: VOLUMES[wildcards.volume]["models"],
    output:
        plan=APPLY / "{volume}" / "plan.json",
    log:
        LOGS / "apply_prepare_{volume}.log",
    conda:
        "../../envs/emseg.yaml"
    params:
        settings=lambda wildcards: volume_plan_settings(wildcards.volume),
        predict=config["predict"],
        store=lambda wildcards: str(volume_store(wildcards.volume)),
    script:
        "../scripts/apply_prepare.py"


rule apply_blocks:
    """Predict one group of blocks and write their chunks and their own pyramid levels."""
    input:
        plan=APPLY / "{volume}" / "plan.json",
    output:
        done=APPLY / "{volume}" / "jobs" / "{job}.json",
    log:
        LOGS / "apply_{volume}_job{job}.log",
    benchmark:
        BENCH / "apply_{volume}_job{job}.tsv"
    conda:
        "../../envs/emseg.yaml"
    threads: lambda wildcards: int(VOLUMES[wildcards.volume]["threads"])
    resources:
        gpu=apply_gpu(),
    params:
        device=config["predict"]["device"],
    script:
        "../scripts/apply_blocks.py"


rule apply_finish:
    """Build the pyramid levels that span several jobs and mark the OME-Zarr complete."""
    input:
        plan=APPLY / "{volume}" / "plan.json",
        jobs=volume_jobs,
    output:
        record=APPLY / "{volume}" / "{volume}.json",
    log:
        LOGS / "apply_finish_{volume}.log",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/apply_finish.py"


rule apply_tiff:
    """The membrane probability as a multi-page TIFF, for Fiji (apply.tiff: true)."""
    input:
        plan=APPLY / "{volume}" / "plan.json",
        record=APPLY / "{volume}" / "{volume}.json",
    output:
        tiff=APPLY / "{volume}" / "{volume}_membrane_prob.tif",
    log:
        LOGS / "apply_tiff_{volume}.log",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/apply_tiff.py"
