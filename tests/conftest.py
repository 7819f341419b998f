"""Longest test files first, so that pytest-xdist's workers (one file each) finish together;
and the fixture that captures emseg's log."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

# Each holds minutes of real workflow runs (a module fixture or SLURM round trips); the other
# files take seconds to a minute. Scheduled last, test_grid alone kept one worker busy 6 minutes
# after the other had finished.
LONGEST_FIRST = (
    "test_grid.py",
    "test_slurm.py",
    "test_apply.py",
    "test_resume.py",
    "test_segment_workflow.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Stable sort by file: the files above in that order, then the rest as collected."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture
def emseg_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the `emseg` logger once, whether or not runner.setup_logging stopped propagation."""
    logger = logging.getLogger("emseg")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
    logger.propagate = propagate
