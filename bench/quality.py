"""Time to quality: the default workflow from nothing to held-out scores, and its wall time.

Only with --time-to-quality (about 20 minutes on ISBI 2012). The data come from
$EMSEG_ISBI_MIRROR (else the shared copy beside the repository, else the download); with --quick
the tiny synthetic config stands in, to check the harness in seconds rather than the model.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Settings, Table, isbi_folder, log, merge, workflow_config
from bench.workflow_speed import TINY, snakemake


def _override(settings: Settings) -> tuple[dict[str, Any], str]:
    if settings.quick:
        return TINY, "tiny synthetic config (--quick)"
    folder = isbi_folder()
    if folder is None:
        return {"data": {"source": "isbi2012"}}, "ISBI 2012, downloaded"
    return {"data": {"source": "isbi2012", "mirror": str(folder)}}, f"ISBI 2012 from {folder}"


def run(settings: Settings) -> list[Table]:
    table = Table(
        "Time to quality (default workflow, from nothing to held-out scores)",
        ["data", "run", "wall s", "train s", "iterations", "V_rand", "V_info", "note"],
        notes=[
            "Command: snakemake --cores all -s Snakefile -d <temp dir> --configfile config.yaml"
            " <override>; V_rand / V_info from results/runs/<name>/fold<k>/seed<s>/metrics/"
            "summary.json (held-out slices, best threshold); wall s is the whole workflow.",
        ],
    )
    if not settings.time_to_quality:
        table.add(note="not run: pass --time-to-quality (about 20 minutes on ISBI 2012)")
        return [table]
    override, data = _override(settings)
    name = merge(workflow_config(), override)["model"]["name"]
    with tempfile.TemporaryDirectory(prefix="emseg-bench-quality-") as tmp:
        log(f"time to quality: {data}, model {name}")
        started = time.perf_counter()
        snakemake(Path(tmp), override)
        wall = time.perf_counter() - started
        runs = Path(tmp) / "results" / "runs" / name
        summaries = sorted(runs.glob("**/metrics/summary.json"))
        if not summaries:
            raise FileNotFoundError(f"no metrics/summary.json under {runs}")
        for path in summaries:
            summary = json.loads(path.read_text())
            training = json.loads((path.parent.parent / "train_summary.json").read_text())
            table.add(
                data=data,
                run=str(path.parent.parent.relative_to(runs.parent)),
                **{"wall s": wall, "train s": training["train_seconds"]},
                iterations=training["iterations"],
                V_rand=summary["vrand"],
                V_info=summary["vinfo"],
                note=f"{training['device']}, {training['threads']} threads",
            )
    return [table]
