"""The workflow on a real SLURM cluster through `--profile profiles/slurm`.

CI starts a throwaway one-node cluster with `.ci/slurm-cluster.sh start`; without it (a laptop, a
machine without slurm or without snakemake-executor-plugin-slurm) every test here skips. The test
profile is profiles/slurm with only what a user edits for a cluster changed (partition, account,
memory, CPUs, status polling); the cluster has no GPU, so the tiny run trains and predicts on the
CPU, and the GPU rules' sbatch arguments are read from the call that the real profile makes and
this cluster refuses.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr

from volume_helpers import random_stack, write_model, write_zarr
from workflow_helpers import REPO, jobs_planned, merge, snakemake, write_config

pytestmark = pytest.mark.slow

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
# .ci/slurm-cluster.sh marks the slurm.conf it writes; any other cluster is left alone.
CLUSTER_MARK = "# written by emseg .ci/slurm-cluster.sh"
CPU_ONLY = {"train": {"device": "cpu"}, "predict": {"device": "cpu"}}
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def slurm(*args: str) -> str:
    """Run a SLURM client command and return its output."""
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout


def submissions(output: str) -> dict[str, str]:
    """SLURM job id -> rule, from the executor's 'submitted' lines (the log path names the rule)."""
    jobs = {}
    for job_id, log in SUBMITTED.findall(output):
        rule = next(part for part in Path(log).parts if part.startswith("rule_"))
        jobs[job_id] = rule.removeprefix("rule_")
    return jobs


def controller_log() -> str:
    """The text of slurmctld's log: the cluster's own record of every sbatch and job end."""
    config = slurm("scontrol", "show", "config")
    path = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)", config, re.MULTILINE)
    assert path, "slurmctld logs to a file"
    return Path(path.group(1)).read_text()


def exit_status(log: str, job_id: str) -> int | None:
    """The exit status slurmctld recorded for a batch job, None while it has not ended."""
    match = re.search(rf"_job_complete: JobId={job_id} WEXITSTATUS (\d+)", log)
    return int(match.group(1)) if match else None


def local_rules() -> set[str]:
    """The rules the Snakefile runs on the submitting machine (its `localrules:` block)."""
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", (REPO / "Snakefile").read_text(), re.M)
    assert block, "the Snakefile names its local rules"
    return set(re.findall(r"\w+", block.group(1)))


def text(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def one(folder: Path, pattern: str) -> Path:
    """The single file under results/ matching `pattern`, relative to the working directory."""
    found = sorted((folder / "results").rglob(pattern))
    assert len(found) == 1, f"{pattern}: {found}"
    return found[0].relative_to(folder)


@pytest.fixture(scope="module")
def partition() -> str:
    """The default partition of the cluster from .ci/slurm-cluster.sh; skip when there is none."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed")
    conf = Path("/etc/slurm/slurm.conf")
    if not conf.is_file() or CLUSTER_MARK not in conf.read_text():
        pytest.skip("no cluster of .ci/slurm-cluster.sh is running (.ci/slurm-cluster.sh start)")
    result = subprocess.run(
        ["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=30, check=False
    )
    usable = [line.split() for line in result.stdout.splitlines() if "*" in line]
    if result.returncode != 0 or not usable or usable[0][1] not in ("idle", "mixed"):
        pytest.skip(f"the SLURM cluster does not answer or has no idle node: {text(result)}")
    return usable[0][0].rstrip("*")


def real_profile() -> dict[str, Any]:
    return yaml.safe_load(PROFILE.read_text())


def without_account(settings: dict[str, Any]) -> dict[str, Any]:
    """What a user of a cluster without accounts does: delete the slurm_account line."""
    del settings["default-resources"]["slurm_account"]
    return settings


def write_profile(folder: Path, settings: dict[str, Any]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    return folder


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory, partition: str) -> Path:
    """profiles/slurm edited for this one-node cluster of 2 CPUs and no accounting database."""
    settings = without_account(real_profile())
    cluster = {"slurm_partition": partition, "mem_mb": 1000, "runtime": 10}
    settings["default-resources"].update(cluster)
    for resources in settings["set-resources"].values():
        resources.update(cluster)
    settings["set-threads"] = dict.fromkeys(settings["set-threads"], 1)
    settings.update(
        {
            "jobs": 2,
            "retries": 0,  # a failing job fails once, not three times
            "latency-wait": 5,
            # No sacct without accounting; squeue sees jobs for MinJobAge = 300 s after their end.
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 2,
        }
    )
    return write_profile(tmp_path_factory.mktemp("profile") / "slurm", settings)


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, profile: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A working directory in which the whole workflow ran through the SLURM executor."""
    folder = tmp_path_factory.mktemp("slurm-run")
    config = write_config(folder, CPU_ONLY)
    result = snakemake(folder, "--profile", str(profile), config=config, timeout=900)
    assert result.returncode == 0, text(result)[-5000:]
    return folder, result


def test_every_cluster_job_went_through_sbatch(
    finished: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    folder, result = finished
    jobs = submissions(text(result))
    submitted = {rule: list(jobs.values()).count(rule) for rule in set(jobs.values())}
    local = local_rules()
    remote = {rule: count for rule, count in jobs_planned(result).items() if rule not in local}
    assert submitted == remote, f"one sbatch per job of every rule but the local ones {local}"
    assert {"train", "predict", "augment_slice"} <= set(submitted)
    log = controller_log()
    for job_id, rule in jobs.items():
        assert f"_slurm_rpc_submit_batch_job: JobId={job_id} " in log, rule
        assert exit_status(log, job_id) == 0, rule
        slurm_log = folder / ".snakemake" / "slurm_logs" / f"rule_{rule}"
        assert list(slurm_log.rglob(f"{job_id}.log")), f"the sbatch log of {rule} is kept"


def test_outputs_are_complete_and_up_to_date(
    finished: tuple[Path, subprocess.CompletedProcess[str]], profile: Path
) -> None:
    folder, _ = finished
    for pattern in ["model.pt", "report.html", "summary.json", "*_membrane_prob.tif"]:
        found = list((folder / "results").rglob(pattern))
        assert found and all(path.stat().st_size > 0 for path in found), pattern
    assert len(list((folder / "results").rglob("*_membrane_prob.tif"))) == 2, "val and test"
    again = snakemake(folder, "-n", "--profile", str(profile), config=folder / "test_config.yaml")
    assert again.returncode == 0 and "Nothing to be done" in text(again), text(again)[-3000:]


def test_a_failing_job_is_reported_as_failed(
    finished: tuple[Path, subprocess.CompletedProcess[str]], profile: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(finished[0], folder)
    for stack in (folder / "results" / "data").glob("*.tif"):
        stack.write_bytes(b"not a TIFF")
    result = snakemake(
        folder,
        "--profile",
        str(profile),
        "--forcerun",
        "normalize",
        "--until",
        "normalize",
        config=folder / "test_config.yaml",
        timeout=300,
    )
    assert result.returncode != 0
    assert "Error in rule normalize" in text(result)
    assert "SLURM status is: 'FAILED'" in text(result)
    [(job_id, rule)] = submissions(text(result)).items()
    assert rule == "normalize"
    assert exit_status(controller_log(), job_id) not in (None, 0)


@pytest.mark.parametrize(
    ("rule", "target"), [("train", "model.pt"), ("predict", "val_membrane_prob.tif")]
)
def test_gpu_rules_ask_slurm_for_a_gpu(
    finished: tuple[Path, subprocess.CompletedProcess[str]],
    tmp_path: Path,
    rule: str,
    target: str,
) -> None:
    """The real profile's sbatch call for a GPU rule; this cluster has no such partition or GPU."""
    folder = tmp_path / "copy"
    shutil.copytree(finished[0], folder)
    settings = without_account(real_profile())
    # Only how soon Snakemake first polls: it waits that long before it exits.
    settings["slurm-init-seconds-before-status-checks"] = 2
    profile = write_profile(tmp_path / "gpu-profile", settings)
    config = write_config(folder, {**CPU_ONLY, rule: {"device": "auto"}})
    result = snakemake(
        folder,
        str(one(folder, target)),
        "--profile",
        str(profile),
        "--forcerun",
        rule,
        "--cores",  # the profile's, not the test helper's --cores 2 that caps every job's threads
        str(settings["cores"]),
        config=config,
        timeout=300,
    )
    assert result.returncode != 0, "a GPU job cannot be placed on this cluster"
    calls = re.findall(r"^\s*(sbatch --parsable .*)$", text(result), re.MULTILINE)
    assert calls, text(result)[-3000:]
    call = calls[0].split()
    wanted = settings["set-resources"][rule]
    assert "--gpus=1" in call
    assert call[call.index("-p") + 1] == wanted["slurm_partition"]
    assert call[call.index("-t") + 1] == str(wanted["runtime"])
    assert call[call.index("--mem") + 1] == str(wanted["mem_mb"])
    assert f"--cpus-per-task={settings['set-threads'][rule]}" in call
    assert "--requeue" in call
    assert "-A" not in call


def test_a_requeued_training_resumes_from_its_checkpoint(
    finished: tuple[Path, subprocess.CompletedProcess[str]], profile: Path, tmp_path: Path
) -> None:
    """Preemption: SLURM kills the running training job and starts it again under the same id."""
    folder = tmp_path / "copy"
    shutil.copytree(finished[0], folder)
    for checkpoints in (folder / "results").rglob("checkpoints"):
        shutil.rmtree(checkpoints)
    # About ten seconds of training on one CPU, a checkpoint every few tenths of a second.
    longer = {"train": {"iterations": 1500, "val_every": 1500, "checkpoint_every": 25}}
    config = write_config(folder, merge(CPU_ONLY, longer))
    target = str(one(folder, "model.pt"))
    outcome: list[subprocess.CompletedProcess[str]] = []
    run = threading.Thread(
        target=lambda: outcome.append(
            snakemake(folder, target, "--profile", str(profile), config=config, timeout=600)
        )
    )
    run.start()
    job_id = requeue_after_first_checkpoint(folder, run)
    run.join()
    [result] = outcome
    assert job_id is not None, "the training job ended before it could be requeued"
    assert result.returncode == 0, requeue_report(result, job_id)
    assert "Restarts=1" in slurm("scontrol", "show", "job", job_id), "SLURM ran it twice"
    train_log = (folder / one(folder, "train_*.log")).read_text()
    assert re.search(r"resuming from \S*last\.pt at step [1-9]\d* of 1500", train_log), train_log
    assert sorted(submissions(text(result)).values()) == ["train"], "submitted once"


def requeue_after_first_checkpoint(folder: Path, run: threading.Thread) -> str | None:
    """Once the running training job has written a checkpoint, requeue it and let it restart."""
    while run.is_alive():
        running = slurm("squeue", "-h", "-t", "running", "-o", "%i %k")
        train = re.findall(r"^(\d+) rule_train(?:_wildcards|$)", running, re.MULTILINE)
        if train and list((folder / "results").rglob("checkpoints/last.pt")):
            slurm("scontrol", "requeue", train[0])
            start_now(train[0])
            return train[0]
        time.sleep(0.2)
    return None


def start_now(job_id: str) -> None:
    """A requeued job may start again only two minutes later; start it once its first run is gone.

    The wait lets a loaded node finish the first run (its batch script reports its end after the
    job is already pending again); starting the second run before that can make SLURM end it.
    Then two more seconds: slurmd revokes the first run's credential with a time in whole seconds
    and refuses a new one created in that same second ("Job credential revoked", seen in CI).
    """
    deadline = time.monotonic() + 60
    while not first_run_gone(job_id):
        assert time.monotonic() < deadline, f"job {job_id} was not requeued"
        time.sleep(0.2)
    time.sleep(2)
    slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def first_run_gone(job_id: str) -> bool:
    """The job waits to run again, and the node runs no process of its first run any more."""
    pending = slurm("squeue", "-h", "-j", job_id, "-o", "%T").strip() == "PENDING"
    return pending and not processes_of(job_id)


def processes_of(job_id: str) -> list[str]:
    """The processes the node still runs for a job (`scontrol listpids`; none once it has ended)."""
    listed = subprocess.run(
        ["scontrol", "listpids", job_id], capture_output=True, text=True, timeout=30, check=False
    )
    return listed.stdout.splitlines()[1:] if listed.returncode == 0 else []


def requeue_report(result: subprocess.CompletedProcess[str], job_id: str) -> str:
    """Why a requeued run failed: the executor's verdict and the controller's record of the job."""
    verdicts = [line for line in text(result).splitlines() if "SLURM-job" in line]
    record = re.findall(rf"^.*JobId={job_id}\b.*$", controller_log(), re.MULTILINE)
    return "\n".join([*verdicts, *record, text(result)[-3000:]])


def apply_section(folder: Path) -> dict[str, Any]:
    """A volume of 2 x 48 x 64 voxels in blocks of 32 px: 8 blocks, 4 jobs of 2; no cells.

    The cells' jobs (tests/test_apply.py) run the same way as the mask's; leaving them out keeps
    the sbatch round trips, seconds each, to ten.
    """
    model = write_model(folder / "model.pt")
    write_zarr(folder / "volume.zarr", random_stack((2, 48, 64)))
    return {
        "model": str(model),
        "block": [1, 32, 32],
        "chunks": [1, 16, 16],
        "blocks_per_job": 2,
        "threads": 1,
        "segment": False,
        "volumes": {"vol": {"input": str(folder / "volume.zarr")}},
    }


def test_an_applied_volume_runs_as_sbatch_jobs_and_equals_the_local_run(
    profile: Path, tmp_path: Path
) -> None:
    apply = apply_section(tmp_path)
    stores = {}
    for name, extra in (("cluster", ["--profile", str(profile)]), ("local", [])):
        folder = tmp_path / name
        folder.mkdir()
        config = write_config(folder, {**CPU_ONLY, "apply": apply})
        result = snakemake(folder, "apply", *extra, config=config, timeout=900)
        assert result.returncode == 0, text(result)[-5000:]
        stores[name] = folder / "results/apply/vol/vol.ome.zarr"
        if name == "cluster":
            jobs = submissions(text(result))
            # 8 blocks: 4 prediction jobs of 2 blocks, and 1 mask job (64 blocks or more each)
            expected = ["apply_blocks"] * 4 + ["apply_finish"] + ["apply_mask"]
            assert sorted(jobs.values()) == [*expected, "apply_prepare"]  # apply_add_mask: local
            log = controller_log()
            assert all(exit_status(log, job_id) == 0 for job_id in jobs)
    for level in ("0", "1", "labels/mask/0"):
        cluster = zarr.open_array(stores["cluster"] / level, mode="r")[:]
        np.testing.assert_array_equal(
            cluster, zarr.open_array(stores["local"] / level, mode="r")[:]
        )


def test_block_jobs_ask_slurm_for_a_gpu(profile: Path, tmp_path: Path) -> None:
    """With predict.device auto, the real profile's sbatch call for a block job asks for a GPU."""
    apply = apply_section(tmp_path)
    config = write_config(tmp_path, {**CPU_ONLY, "apply": apply})
    prepared = snakemake(
        tmp_path, "results/apply/vol/plan.json", "--profile", str(profile), config=config
    )
    assert prepared.returncode == 0, text(prepared)[-3000:]
    settings = without_account(real_profile())
    settings["slurm-init-seconds-before-status-checks"] = 2
    gpu_profile = write_profile(tmp_path / "gpu-profile", settings)
    config = write_config(tmp_path, {**CPU_ONLY, "predict": {"device": "auto"}, "apply": apply})
    result = snakemake(
        tmp_path,
        "results/apply/vol/jobs/0.json",
        "--profile",
        str(gpu_profile),
        "--cores",
        str(settings["cores"]),
        config=config,
        timeout=300,
    )
    assert result.returncode != 0, "a GPU job cannot be placed on this cluster"
    calls = re.findall(r"^\s*(sbatch --parsable .*)$", text(result), re.MULTILINE)
    assert calls, text(result)[-3000:]
    call = calls[0].split()
    assert "--gpus=1" in call
    assert (
        call[call.index("-p") + 1] == settings["set-resources"]["apply_blocks"]["slurm_partition"]
    )
    assert f"--cpus-per-task={settings['set-threads']['apply_blocks']}" in call
