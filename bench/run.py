"""Run emseg's speed benchmarks, print their tables (Markdown) and write JSON with the machine.

    python bench/run.py                      # everything on this machine (2 CPU cores: 4-7 min)
    python bench/run.py --quick              # each benchmark once at a tiny size (smoke test)
    python bench/run.py --only metrics --only augmentation --json out.json
    python bench/run.py --only quality --time-to-quality   # the default workflow on ISBI (long)
    python bench/run.py --only apply --apply-slices 16     # block-wise volumes, a quarter timed

Peers (monai, elasticdeform, scikit-image, torch-em) come from `pip install -e '.[bench]'`; a
missing one turns its rows into 'not installed'. Without a GPU the GPU rows say 'not measured: no
GPU'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

# Progress bars of the measured code would interleave with the tables.
os.environ.setdefault("TQDM_DISABLE", "1")
# numpy's BLAS single-threaded, as Snakemake runs the one-thread jobs (augment_slice, score);
# on a busy machine its idle threads spin and make small products 10-50x slower. torch keeps
# its own thread count (--threads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[0:1] = [str(REPO), str(REPO / "workflow" / "scripts")]  # not bench/: no shadowing

import torch  # noqa: E402

from bench import (  # noqa: E402
    apply_speed,
    augment_speed,
    metric_speed,
    precision_speed,
    predict_speed,
    quality,
    recipe,
    segmentation_speed,
    train_speed,
    workflow_speed,
)
from bench.harness import Settings, Table, log, machine_info  # noqa: E402

BENCHMARKS = {
    "training": train_speed.run,
    "prediction": predict_speed.run,
    "precision": precision_speed.run,
    "recipe": recipe.run,
    "augmentation": augment_speed.run,
    "metrics": metric_speed.run,
    "segmentation": segmentation_speed.run,
    "workflow": workflow_speed.run,
    "quality": quality.run,
    "apply": apply_speed.run,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark once, tiny sizes")
    parser.add_argument(
        "--only", action="append", choices=list(BENCHMARKS), help="run only these (repeatable)"
    )
    parser.add_argument(
        "--json", type=Path, default=REPO / "bench" / "latest.json", help="where to write JSON"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of the slow measurements (default 3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="CPU threads for torch (default: every usable core)",
    )
    parser.add_argument(
        "--time-to-quality",
        action="store_true",
        help="run the default workflow on ISBI 2012 (EMSEG_ISBI_MIRROR) and score it; with"
        " --quick a tiny synthetic variant",
    )
    parser.add_argument(
        "--apply-slices",
        type=int,
        help="apply: time only this many of the volume's 64 slices (whole jobs, spread evenly)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or (args.apply_slices or 1) < 1:
        parser.error("--repeats, --threads and --apply-slices must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        quick=args.quick,
        repeats=1 if args.quick else args.repeats,
        warmup=0 if args.quick else 1,
        threads=args.threads,
        time_to_quality=args.time_to_quality,
        apply_slices=args.apply_slices,
    )
    torch.set_num_threads(settings.threads)
    record = {
        "machine": machine_info(),
        "command": " ".join(["python", "bench/run.py", *(argv or sys.argv[1:])]),
        "settings": {"quick": settings.quick, "repeats": settings.repeats},
        "benchmarks": {},
    }
    print(_machine_markdown(record["machine"]))
    failed = []
    for name in args.only or list(BENCHMARKS):
        log(f"{name} ...")
        started = time.perf_counter()
        try:
            tables = BENCHMARKS[name](settings)
        except Exception as error:  # one broken benchmark must not hide the others' tables
            traceback.print_exc()
            failed.append(name)
            tables = [Table(f"{name}: FAILED", ["error"], [{"error": repr(error)}])]
        seconds = time.perf_counter() - started
        for table in tables:
            print(table.markdown())
        sys.stdout.flush()
        record["benchmarks"][name] = {
            "seconds": seconds,
            "tables": [table.to_dict() for table in tables],
        }
        log(f"{name} took {seconds:.0f} s")
    record["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1, default=str) + "\n")
    log(f"wrote {args.json}")
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def _machine_markdown(machine: dict[str, object]) -> str:
    lines = ["### Machine", "", "| key | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in machine.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
