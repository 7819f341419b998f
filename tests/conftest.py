"""Longest test files first, so that pytest-xdist's workers (one file each) finish together."""

from __future__ import annotations

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
