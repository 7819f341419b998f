"""What every benchmark shares: timing statistics, tables, machine facts, configs and test data."""

from __future__ import annotations

import copy
import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import yaml
from snakemake.utils import update_config

REPO = Path(__file__).resolve().parents[1]
NO_GPU = "not measured: no GPU"
NOT_INSTALLED = "not installed"
DISTRIBUTIONS = {"skimage": "scikit-image"}  # import name -> pip name


@dataclass(frozen=True)
class Settings:
    """How hard to measure: `quick` shrinks every problem and runs it once (the smoke test)."""

    quick: bool
    repeats: int
    warmup: int
    threads: int
    time_to_quality: bool = False
    apply_slices: int | None = None  # timed slices of the apply benchmark (None: all)

    @property
    def gpu(self) -> torch.device | None:
        return torch.device("cuda") if torch.cuda.is_available() else None


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed run (after the warm-up runs, which are not kept)."""

    runs: tuple[float, ...]

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def max(self) -> float:
        return max(self.runs)

    def columns(self, unit: str = "s", scale: float = 1.0) -> dict[str, float]:
        """min/median/max as table cells, e.g. unit 'ms' with scale 1e3."""
        return {
            f"min {unit}": self.min * scale,
            f"median {unit}": self.median * scale,
            f"max {unit}": self.max * scale,
        }


def measure(
    fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device | None = None
) -> Timing:
    """Time `fn` `repeats` times after `warmup` untimed calls; a CUDA device is synchronised."""
    return measure_many({"fn": fn}, repeats, warmup, device)["fn"]


def measure_many(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    device: torch.device | None = None,
) -> dict[str, Timing]:
    """Time several functions round-robin, so that load from other processes hits them alike."""

    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            sync()
            runs[name].append(time.perf_counter() - started)
    return {name: Timing(tuple(times)) for name, times in runs.items()}


@dataclass
class Table:
    """One printed table: rows are dicts of numbers or strings, missing cells print as '-'."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, **cells: Any) -> None:
        unknown = set(cells) - set(self.columns)
        if unknown:
            raise ValueError(f"table {self.title!r}: unknown columns {sorted(unknown)}")
        self.rows.append(cells)

    def add_row(self, cells: Mapping[str, Any]) -> None:
        self.add(**cells)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join(" --- " for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(row.get(c)) for c in self.columns) + " |")
        lines.extend(["", *(f"- {note}" for note in self.notes)])
        return "\n".join(lines).rstrip() + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "notes": self.notes,
        }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.2e}"
    return str(value)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPU, library versions, load and the commit: what a number depends on."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "git_commit": _git_commit(),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    result = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None


def package_version(name: str) -> str | None:
    """Version of an optional peer package, or None when it is not installed (or won't import)."""
    try:
        __import__(name)
    except Exception:  # a broken binary wheel raises ImportError or worse; both mean 'not usable'
        return None
    return importlib.metadata.version(DISTRIBUTIONS.get(name, name))


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base`, by Snakemake's own rule for config files."""
    merged = copy.deepcopy(dict(base))
    update_config(merged, copy.deepcopy(dict(override)))
    return merged


def workflow_config(*extra: str) -> dict[str, Any]:
    """config.yaml merged with the named files (e.g. 'config/paper.yaml'), as the workflow does."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for name in extra:
        config = merge(config, yaml.safe_load((REPO / name).read_text()))
    return config


def isbi_folder() -> Path | None:
    """The local ISBI 2012 copy: $EMSEG_ISBI_MIRROR, else shared/ beside the repository."""
    for candidate in (os.environ.get("EMSEG_ISBI_MIRROR"), REPO.parent / "shared/data/isbi2012"):
        if candidate and (Path(candidate) / "train" / "label").is_dir():
            return Path(candidate)
    return None


def em_slices(count: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """`count` (image float32 in ~[0,1], label uint8 1 = membrane) slices cropped to size x size.

    Real ISBI 2012 training slices when a local copy exists, else the synthetic EM stack.
    """
    from emseg.io import read_stack

    folder = isbi_folder()
    if folder is not None:
        images = np.stack([read_stack(folder / f"train/image/{i}.png")[0] for i in range(count)])
        labels = np.stack([read_stack(folder / f"train/label/{i}.png")[0] for i in range(count)])
        labels, source = (labels == 0).astype(np.uint8), f"ISBI 2012 ({folder})"
    else:
        from emseg.synthetic import synthetic_stack

        images, labels = synthetic_stack(count, max(size, 64), max(size, 64), seed=0)
        source = "synthetic EM stack (no ISBI copy found)"
    images = images[:, :size, :size].astype(np.float32)
    low, high = (float(v) for v in np.percentile(images, [1, 99]))
    normalised = ((images - low) / max(high - low, 1e-6)).astype(np.float32)
    return normalised, labels[:, :size, :size], source


@contextmanager
def peak_rss(interval: float = 0.005) -> Iterator[dict[str, float]]:
    """Peak resident memory above the level at entry (MiB), sampled by a background thread."""
    process = psutil.Process()
    start = process.memory_info().rss
    result = {"peak_mib": 0.0}
    done = threading.Event()

    def sample() -> None:
        peak = start
        while not done.wait(interval):
            peak = max(peak, process.memory_info().rss)
        result["peak_mib"] = (max(peak, process.memory_info().rss) - start) / 2**20

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the tables."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)
