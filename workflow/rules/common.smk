import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from emseg.apply_settings import apply_volumes, nvidia_gpu_present  # noqa: E402
from emseg.blocks import BlockGrid, halo_jobs, label_job_members  # noqa: E402
from emseg.dataset import user_stack  # noqa: E402
from emseg.errors import ConfigError  # noqa: E402
from emseg.io import slice_files  # noqa: E402
from emseg.models.geometry import geometry_for  # noqa: E402
from emseg.settings import (  # noqa: E402
    check_config,
    check_export,
    coerce_to_schema,
    config_hash,
    describe_schema_error,
    export_run,
    folds,
    labelled_slice_count,
    refuse_braces,
    run_settings,
    training_data,
)

SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
coerce_to_schema(config, SCHEMA)
try:
    validate(config, str(SCHEMA))
except WorkflowError:
    raise WorkflowError(describe_schema_error(config, SCHEMA)) from None
try:
    check_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

RESULTS = Path(config["results"])
DATA = RESULTS / "data"
PRE = RESULTS / "preprocessed"
AUG = RESULTS / "augment"
RUNS = RESULTS / "runs"
RUN = RUNS / "{name}" / "fold{fold}" / "seed{seed}"
# A fold's seed runs averaged on their held-out slices, segmented and scored (cv.ensemble).
SEED_ENSEMBLE = RUNS / "{name}" / "fold{fold}" / "ensemble"
EXPORT_PACKAGE = RUN / "bioimageio" / "{name}_fold{fold}_seed{seed}.zip"
APPLY = RESULTS / "apply"
LOGS = RESULTS / "logs"
BENCH = RESULTS / "benchmarks"
MANIFEST = Path(workflow.basedir) / "workflow" / "resources" / "isbi2012.sha256"
SOURCE = config["data"]["source"]
SETTINGS = run_settings(config)  # model name -> {"model": ..., "train": ...}
FOLDS = folds(config)  # [{"training": [...], "validation": [...]}, ...]
SEEDS = [int(seed) for seed in config["cv"]["seeds"]]
SCORE_SEED_ENSEMBLES = config["cv"]["ensemble"] and len(SEEDS) > 1
try:  # volumes to segment: settings with model files and job counts, planned from headers
    VOLUMES = apply_volumes(config, SETTINGS, len(FOLDS), SEEDS, RUNS)
except ConfigError as error:
    raise WorkflowError(str(error)) from None


wildcard_constraints:
    name="|".join(SETTINGS),
    fold=r"\d+",
    seed=r"\d+",
    index=r"\d+",
    margin=r"\d+",
    job=r"\d+",
    part=r"\d+",
    volume="|".join(VOLUMES) or "(?!)",


def has_test_images():
    """Whether the chosen source brings an unlabelled test stack to predict."""
    if SOURCE == "files":
        return bool(config["data"].get("test_images"))
    if SOURCE == "synthetic":
        return config["data"]["synthetic"].get("test_slices", 0) > 0
    return True


# The training stacks and their record. The test stack is apart: changing it must not retrain.
CANONICAL = {
    "train_images": DATA / "train_images.tif",
    "train_labels": DATA / "train_labels.tif",
    "record": DATA / "dataset.json",
}
TEST_STACK = DATA / "test_images.tif"


def test_stack_output():
    """The test stack, for a source that makes it in the same job as the training stacks."""
    return {"test_images": TEST_STACK} if has_test_images() else {}


def user_files(key):
    """A user's stack as job inputs: a folder's slices one by one, since editing a slice
    leaves the folder's time stamp as it was, and Snakemake would miss it."""
    path = Path(user_stack(config, key))
    if not path.is_dir():
        return path
    files = slice_files(path)
    try:  # each slice's name is now a path Snakemake reads, braces as wildcards
        for file in files:
            refuse_braces(f"data.{key}", str(file))
    except ConfigError as error:
        raise WorkflowError(str(error)) from None
    return files


def margin(wildcards):
    """Pixels the named network's valid convolutions consume per side (0 for padded ones)."""
    return geometry_for(SETTINGS[wildcards.name]["model"]).margin


def padded(stack):
    """Input function: the mirror-padded `stack` ('labelled' or 'test') for the run's network."""
    return lambda wildcards: PRE / f"padded{margin(wildcards)}" / f"{stack}_images.tif"


def all_cores():
    """The cores given to this run; 1 for a command given none (`--report`, `--list-changes`),
    which runs no job: reading workflow.cores would stop it with an error."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def fold_split(wildcards):
    return FOLDS[int(wildcards.fold)]


def run_hash(wildcards):
    """What the run's results depend on, recorded with them and checked when resuming."""
    return hash_of_run(wildcards.name, int(wildcards.fold), int(wildcards.seed))


def hash_of_run(name, fold, seed):
    settings = SETTINGS[name]
    return config_hash(
        training_data(config["data"]),
        config["preprocess"],
        config["weights"],
        config["augment"],
        settings["model"],
        settings["train"],
        FOLDS[fold],
        seed,
    )


def run_config(wildcards):
    """The config that made one run, as its report shows it: the run's own model, train and
    segment settings, without the sections of other work (apply, export, the grid's other
    models), so that adding a volume or an author rewrites no report."""
    settings = SETTINGS[wildcards.name]
    others = ("apply", "export", "models")
    return {key: value for key, value in config.items() if key not in others} | {
        "model": settings["model"],
        "segment": settings["segment"],
        "train": {**settings["train"], "seed": int(wildcards.seed)},
    }


def seed_ensemble_hash(wildcards):
    """What a fold's seed ensemble depends on: the runs it averages."""
    fold = int(wildcards.fold)
    return config_hash([hash_of_run(wildcards.name, fold, seed) for seed in SEEDS])


def shards(wildcards):
    """The augmentation shards of the run's training slices."""
    return [AUG / f"slice{index}.npy" for index in fold_split(wildcards)["training"]]


def shard_records(wildcards):
    """The JSON records (parameters, checksum) of the run's augmentation shards."""
    return [AUG / f"slice{index}.json" for index in fold_split(wildcards)["training"]]


def all_runs(pattern):
    """`pattern` (a path with {name}, {fold}, {seed}) for every run of the grid."""
    return expand(str(pattern), name=list(SETTINGS), fold=range(len(FOLDS)), seed=SEEDS)


def seed_ensembles(pattern):
    """`pattern` (a path with {name}, {fold}) for every model and fold whose seeds are averaged
    on their shared held-out slices (cv.ensemble with several seeds); none otherwise."""
    if not SCORE_SEED_ENSEMBLES:
        return []
    return expand(str(pattern), name=list(SETTINGS), fold=range(len(FOLDS)))


def run_seeds(pattern):
    """`pattern` (a path with {name}, {fold}, {seed}) for each seed of one model and fold."""
    return lambda wildcards: expand(
        str(pattern), name=wildcards.name, fold=wildcards.fold, seed=SEEDS
    )


def final_targets():
    targets = all_runs(RUN / "model.pt") + all_runs(RUN / "report.html")
    targets += all_runs(RUN / "metrics" / "summary.json")
    for kind in ("membrane_prob", "mask", "segmentation"):
        targets += all_runs(RUN / "predict" / f"val_{kind}.tif")
        if has_test_images():
            targets += all_runs(RUN / "predict" / f"test_{kind}.tif")
    if has_test_images():
        if SOURCE == "isbi2012":
            targets += all_runs(RUN / "isbi2012_submission.tif")
        if config["cv"]["ensemble"]:
            targets += expand(
                str(RUNS / "{name}" / "ensemble_test_{kind}.tif"),
                name=list(SETTINGS),
                kind=["membrane_prob", "mask", "segmentation"],
            )
    targets += seed_ensembles(SEED_ENSEMBLE / "metrics" / "summary.json")
    targets += seed_ensembles(SEED_ENSEMBLE / "predict" / "val_segmentation.tif")
    targets += seed_ensembles(SEED_ENSEMBLE / "predict" / "val_mask.tif")
    if len(SETTINGS) * len(FOLDS) * len(SEEDS) > 1:
        targets += [RESULTS / "comparison.csv", RESULTS / "comparison.html"]
    if config.get("export", {}).get("with_default_target"):
        targets.append(export_package())
    return targets


def export_package():
    """The package of the run named in `export:` (default: the first run, fold 0, seed 0)."""
    try:
        name, fold, seed = export_run(config)
    except ConfigError as error:
        raise WorkflowError(str(error)) from None
    return str(EXPORT_PACKAGE).format(name=name, fold=fold, seed=seed)


def export_inputs(wildcards):
    """The run's model and records; a run outside the grid, or missing metadata, stops the DAG."""
    try:
        check_export(config, wildcards.name, int(wildcards.fold), int(wildcards.seed))
    except ConfigError as error:
        raise WorkflowError(str(error)) from None
    run = {
        "model": RUN / "model.pt",
        "scores": RUN / "metrics" / "summary.json",
        "training": RUN / "train_summary.json",
    }
    inputs = {key: str(path).format(**wildcards) for key, path in run.items()}
    inputs |= {"images": CANONICAL["train_images"], "dataset": CANONICAL["record"]}
    documentation = config.get("export", {}).get("documentation")
    if documentation:
        inputs["documentation"] = Path(documentation).expanduser()
    return inputs


def applied_volumes(wildcards):
    """The outputs of `snakemake apply`: every volume's finished record, and TIFF where asked."""
    if not VOLUMES:
        raise WorkflowError(
            "apply: no volumes to segment; name them under apply.volumes in your config"
            " (README: Segment your own volumes)"
        )
    for name in VOLUMES:
        check_store_kept(name)
    targets = [APPLY / name / f"{name}.json" for name in VOLUMES]
    targets += [
        APPLY / name / f"{name}_membrane_prob.tif"
        for name, settings in VOLUMES.items()
        if settings["tiff"]
    ]
    return targets


def check_store_kept(volume):
    """Stop when a volume's OME-Zarr was deleted or moved after its jobs finished: their records
    would otherwise tell Snakemake there is nothing to do, and a later mask or cells job fails.
    """
    plan, store = APPLY / volume / "plan.json", volume_store(volume)
    if plan.exists() and not store.exists():
        raise WorkflowError(
            f"{store}: missing, though {plan} records it as made (deleted or moved?);"
            f" delete {APPLY / volume} to apply the volume anew"
        )


def volume_store(volume):
    """The OME-Zarr an applied volume is written to."""
    return APPLY / volume / f"{volume}.ome.zarr"


def volume_plan_settings(volume):
    """What the plan of a volume depends on: not how its jobs run, nor the mask, the cells or the
    TIFF, which are made from the stored probability (changing them predicts nothing again).
    """
    skip = (
        "threads",
        "mask",
        "segment",
        "segment_halo",
        "segment_settings",
        "tiff",
        "label_jobs",
    )
    return {key: value for key, value in VOLUMES[volume].items() if key not in skip}


def prediction_settings(name):
    """A model's predict keys that its probabilities depend on: all but the threshold, which
    only the binary masks use (another threshold predicts nothing again)."""
    return {
        key: value
        for key, value in SETTINGS[name]["predict"].items()
        if key != "threshold"
    }


def plan_predict_settings():
    """The predict keys a volume's plan depends on (not the device, which only the jobs use, nor
    the threshold, which only the mask uses)."""
    keys = ("tile_size", "batch_size", "overlap", "tta")
    return {key: config["predict"][key] for key in keys}


def volume_jobs(wildcards, folder="jobs", suffix="json"):
    """One record per job of a volume: its blocks predicted (jobs/) or segmented (cells/)."""
    count = VOLUMES[wildcards.volume]["jobs"]
    return [
        APPLY / wildcards.volume / folder / f"{job}.{suffix}" for job in range(count)
    ]


def volume_halo_jobs(wildcards):
    """The predicted jobs a segmentation job reads: its own and its neighbours' in the halo."""
    settings = VOLUMES[wildcards.volume]
    grid = BlockGrid(tuple(settings["shape"]), tuple(settings["block"]))
    jobs = halo_jobs(
        grid,
        int(settings["blocks_per_job"]),
        int(wildcards.job),
        settings["segment_halo"],
    )
    return [APPLY / wildcards.volume / "jobs" / f"{job}.json" for job in jobs]


def volume_label_jobs(label):
    """Every mask or relabel job's record of label image `label` (mask, cells) of a volume, when
    asked for."""
    switch = {"mask": "mask", "cells": "segment"}[label]

    def records(wildcards):
        settings = VOLUMES[wildcards.volume]
        if not settings[switch]:
            return []
        folder = APPLY / wildcards.volume / label
        return [folder / f"part{part}.json" for part in range(settings["label_jobs"])]

    return records


def label_job_inputs(folder, suffix):
    """The records of the prediction (jobs/) or segment (cells/) jobs whose blocks one mask or
    relabel job writes: whole jobs, 64 blocks or more (emseg.blocks.label_job_members).
    """

    def records(wildcards):
        settings = VOLUMES[wildcards.volume]
        members = label_job_members(
            settings["jobs"], int(settings["blocks_per_job"]), int(wildcards.part)
        )
        return [
            APPLY / wildcards.volume / folder / f"{job}.{suffix}" for job in members
        ]

    return records


def apply_gpu():
    """1 when block jobs should get a GPU: predict.device cuda, or auto with a GPU in reach.

    `auto` asks for one when the jobs go to a cluster, or when this machine has an NVIDIA GPU;
    a CPU-only workstation then runs several CPU jobs side by side instead of one at a time.
    """
    device = config["predict"]["device"]
    if device != "auto":
        return int(device == "cuda")
    return int(not workflow.local_exec or nvidia_gpu_present())
