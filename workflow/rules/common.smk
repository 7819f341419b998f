import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from emseg.models.geometry import geometry_for  # noqa: E402
from emseg.settings import (  # noqa: E402
    ConfigError,
    check_config,
    coerce_to_schema,
    config_hash,
    describe_schema_error,
    folds,
    isbi_mirror,
    labelled_slice_count,
    run_settings,
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
LOGS = RESULTS / "logs"
BENCH = RESULTS / "benchmarks"
MANIFEST = Path(workflow.basedir) / "workflow" / "resources" / "isbi2012.sha256"
SOURCE = config["data"]["source"]
SETTINGS = run_settings(config)  # model name -> {"model": ..., "train": ...}
FOLDS = folds(config)  # [{"training": [...], "validation": [...]}, ...]
SEEDS = [int(seed) for seed in config["cv"]["seeds"]]


wildcard_constraints:
    name="|".join(SETTINGS),
    fold=r"\d+",
    seed=r"\d+",
    index=r"\d+",
    margin=r"\d+",


def has_test_images():
    """Whether the chosen source brings an unlabelled test stack to predict."""
    if SOURCE == "files":
        return bool(config["data"].get("test_images"))
    if SOURCE == "synthetic":
        return config["data"]["synthetic"].get("test_slices", 0) > 0
    return True


CANONICAL = {
    "train_images": DATA / "train_images.tif",
    "train_labels": DATA / "train_labels.tif",
    "record": DATA / "dataset.json",
}
if has_test_images():
    CANONICAL["test_images"] = DATA / "test_images.tif"


def user_files():
    """The user's own input stacks (data.source: files), as rule inputs."""
    keys = ["train_images", "train_labels"] + (
        ["test_images"] if has_test_images() else []
    )
    return {key: Path(config["data"][key]).expanduser() for key in keys}


def margin(wildcards):
    """Pixels the named network's valid convolutions consume per side (0 for padded ones)."""
    return geometry_for(SETTINGS[wildcards.name]["model"]).margin


def padded(stack):
    """Input function: the mirror-padded `stack` ('labelled' or 'test') for the run's network."""
    return lambda wildcards: PRE / f"padded{margin(wildcards)}" / f"{stack}_images.tif"


def fold_split(wildcards):
    return FOLDS[int(wildcards.fold)]


def run_hash(wildcards):
    """What the run's results depend on, recorded with them and checked when resuming."""
    settings = SETTINGS[wildcards.name]
    return config_hash(
        config["data"],
        config["preprocess"],
        config["weights"],
        config["augment"],
        settings["model"],
        settings["train"],
        fold_split(wildcards),
        int(wildcards.seed),
    )


def shards(wildcards):
    """The augmentation shards of the run's training slices."""
    return [AUG / f"slice{index}.npy" for index in fold_split(wildcards)["training"]]


def shard_records(wildcards):
    """The JSON records (parameters, checksum) of the run's augmentation shards."""
    return [AUG / f"slice{index}.json" for index in fold_split(wildcards)["training"]]


def all_runs(pattern):
    """`pattern` (a path with {name}, {fold}, {seed}) for every run of the grid."""
    return expand(str(pattern), name=list(SETTINGS), fold=range(len(FOLDS)), seed=SEEDS)


def final_targets():
    targets = all_runs(RUN / "model.pt") + all_runs(RUN / "report.html")
    targets += all_runs(RUN / "metrics" / "summary.json")
    targets += all_runs(RUN / "predict" / "val_membrane_prob.tif")
    if has_test_images():
        targets += all_runs(RUN / "predict" / "test_membrane_prob.tif")
        if SOURCE == "isbi2012":
            targets += all_runs(RUN / "isbi2012_submission.tif")
        if config["cv"]["ensemble"]:
            targets += expand(
                str(RUNS / "{name}" / "ensemble_test_membrane_prob.tif"),
                name=list(SETTINGS),
            )
    if len(SETTINGS) * len(FOLDS) * len(SEEDS) > 1:
        targets += [RESULTS / "comparison.csv", RESULTS / "comparison.html"]
    return targets
