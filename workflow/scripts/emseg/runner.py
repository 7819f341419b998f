"""The shared entry point of the rule scripts: logging to the rule's log file and plain errors.

A rule script calls `run_rule(main, snakemake)`. Messages go to the rule's `log:` file and to the
terminal; an expected failure (bad input, bad config) becomes one line naming the file or key and a
non-zero exit instead of a traceback, and unexpected errors keep their traceback in the log.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emseg.download import DownloadError
from emseg.errors import ConfigError, TrainingDiverged
from emseg.io import InputError, OutputError

LOG = logging.getLogger("emseg")
EXPECTED_ERRORS = (InputError, OutputError, ConfigError, DownloadError, TrainingDiverged)


def run_rule(main: Callable[[Any], None], snakemake: Any) -> None:
    """Run `main(snakemake)` with logging; expected errors exit 1 with a one-line message."""
    log_files = [Path(str(f)) for f in snakemake.log]
    setup_logging(log_files[0] if log_files else None)
    LOG.info("rule %s started", snakemake.rule)
    try:
        main(snakemake)
    except EXPECTED_ERRORS as error:
        LOG.error("error: %s", error)
        sys.exit(1)
    except Exception:
        LOG.error("unexpected error in rule %s:\n%s", snakemake.rule, traceback.format_exc())
        sys.exit(1)
    LOG.info("rule %s finished", snakemake.rule)


def setup_logging(log_file: Path | None, level: int = logging.INFO) -> None:
    """Send `emseg` log records to stderr and, when given, to `log_file` (truncated)."""
    LOG.setLevel(level)
    LOG.handlers.clear()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    for handler in handlers:
        handler.setFormatter(formatter)
        LOG.addHandler(handler)
    LOG.propagate = False
