# Applying trained models to your own volumes, block by block, locally or as SLURM jobs:
#   snakemake --cores all apply
# plan (header only) -> prepare (check, normalisation, empty OME-Zarr) -> blocks (one job per
# group of blocks: the probability) -> from the stored probability: mask: add_mask -> mask (per
# 64 blocks or more); cells: segment (per job, with a halo) -> stitch (ids over the volume) ->
# relabel (per 64 blocks or more) -> finish (upper pyramid levels, preview) -> optional TIFF


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
        predict=plan_predict_settings(),
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
        gpu=lambda wildcards: apply_gpu(),
    params:
        device=config["predict"]["device"],
        precision=config["predict"]["precision"],
    script:
        "../scripts/apply_blocks.py"


rule apply_add_mask:
    """Add the empty membrane mask to the store (again for another predict.threshold)."""
    input:
        plan=APPLY / "{volume}" / "plan.json",
    output:
        added=APPLY / "{volume}" / "mask" / "added.json",
    log:
        LOGS / "apply_add_mask_{volume}.log",
    conda:
        "../../envs/emseg.yaml"
    params:
        threshold=config["predict"]["threshold"],
    script:
        "../scripts/apply_add_mask.py"


rule apply_mask:
    """The membrane mask (p >= predict.threshold) of the blocks of several prediction jobs, and
    its pyramid levels inside them."""
    input:
        plan=APPLY / "{volume}" / "plan.json",
        predicted=label_job_inputs("jobs", "json"),
        added=APPLY / "{volume}" / "mask" / "added.json",
    output:
        done=APPLY / "{volume}" / "mask" / "part{part}.json",
    log:
        LOGS / "apply_mask_{volume}_part{part}.log",
    conda:
        "../../envs/emseg.yaml"
    params:
        threshold=config["predict"]["threshold"],
    script:
        "../scripts/apply_mask.py"


rule apply_segment:
    """Segment one group of blocks into cells (ids local to each block), with a halo."""
    input:
        plan=APPLY / "{volume}" / "plan.json",
        predicted=volume_halo_jobs,
    output:
        record=APPLY / "{volume}" / "cells" / "{job}.npz",
    log:
        LOGS / "apply_segment_{volume}_job{job}.log",
    benchmark:
        BENCH / "apply_segment_{volume}_job{job}.tsv"
    conda:
        "../../envs/emseg.yaml"
    params:
        segment=lambda wildcards: VOLUMES[wildcards.volume]["segment_settings"],
        halo=lambda wildcards: VOLUMES[wildcards.volume]["segment_halo"],
    script:
        "../scripts/apply_segment.py"


rule apply_stitch:
    """Join the cells that cross block borders: one id per cell over the volume."""
    input:
        plan=APPLY / "{volume}" / "plan.json",
        records=lambda wildcards: volume_jobs(wildcards, "cells", "npz"),
    output:
        lut=APPLY / "{volume}" / "cells" / "ids.npz",
    log:
        LOGS / "apply_stitch_{volume}.log",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/apply_stitch.py"


rule apply_relabel:
    """Write the cells of several segment jobs' blocks with the volume's ids, and their levels."""
    input:
        plan=APPLY / "{volume}" / "plan.json",
        lut=APPLY / "{volume}" / "cells" / "ids.npz",
        records=label_job_inputs("cells", "npz"),
    output:
        done=APPLY / "{volume}" / "cells" / "part{part}.json",
    log:
        LOGS / "apply_relabel_{volume}_part{part}.log",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/apply_relabel.py"


rule apply_finish:
    """Build the pyramid levels that span several jobs and mark the OME-Zarr complete (removing
    the mask or cells an earlier run made, when they are no longer asked for)."""
    input:
        plan=APPLY / "{volume}" / "plan.json",
        jobs=volume_jobs,
        mask=volume_label_jobs("mask"),
        cells=volume_label_jobs("cells"),
    output:
        record=APPLY / "{volume}" / "{volume}.json",
        preview=APPLY / "{volume}" / "{volume}_preview.png",
    log:
        LOGS / "apply_finish_{volume}.log",
    conda:
        "../../envs/emseg.yaml"
    params:
        mask=lambda wildcards: VOLUMES[wildcards.volume]["mask"],
        cells=lambda wildcards: VOLUMES[wildcards.volume]["segment"],
        folder=lambda wildcards: str(APPLY / wildcards.volume),
    script:
        "../scripts/apply_finish.py"


rule apply_tiff:
    """The membrane probability as a multi-page TIFF, for Fiji (apply.tiff: true), from level 0
    of the store once every block job has written it."""
    input:
        plan=APPLY / "{volume}" / "plan.json",
        jobs=volume_jobs,
    output:
        tiff=APPLY / "{volume}" / "{volume}_membrane_prob.tif",
    log:
        LOGS / "apply_tiff_{volume}.log",
    conda:
        "../../envs/emseg.yaml"
    script:
        "../scripts/apply_tiff.py"
