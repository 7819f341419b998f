import os
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
    isbi_mirror,
    labelled_slice_count,
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
RUN = RESULTS / "runs" / config["model"]["name"]
LOGS = RESULTS / "logs"
BENCH = RESULTS / "benchmarks"
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"
MANIFEST = Path(workflow.basedir) / "workflow" / "resources" / "isbi2012.sha256"
SOURCE = config["data"]["source"]


def has_test_images():
    """Whether the chosen source brings an unlabelled test stack to predict."""
    if SOURCE == "files":
        return bool(config["data"].get("test_images"))
    if SOURCE == "synthetic":
        return config["data"]["synthetic"].get("test_slices", 0) > 0
    return True


def training_slices():
    """Indices of the labelled slices that train (all but the held-out ones)."""
    return [
        i for i in range(labelled_slice_count(config)) if i not in validation_slices()
    ]


def validation_slices():
    from emseg.settings import validation_slices as held_out

    return held_out(config)


def stacks_to_predict():
    return ["val", "test"] if has_test_images() else ["val"]


def final_targets():
    targets = [
        RUN / "report.html",
        RUN / "metrics" / "summary.json",
        *[
            RUN / "predict" / f"{subset}_membrane_prob.tif"
            for subset in stacks_to_predict()
        ],
    ]
    if SOURCE == "isbi2012":
        targets.append(RUN / "isbi2012_submission.tif")
    return targets


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


MARGIN = geometry_for(config["model"]).margin
RUN_HASH = config_hash(
    config["data"],
    config["split"],
    config["preprocess"],
    config["weights"],
    config["augment"],
    config["model"],
    config["train"],
)
