"""Progress bars that suit both a terminal and a log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm:
    """A tqdm bar redrawn every 2 s on a terminal; in a log file (no terminal) a line a minute."""
    interactive = sys.stderr.isatty()
    options.setdefault("mininterval", 2.0 if interactive else 60.0)
    return tqdm(iterable, dynamic_ncols=interactive, **options)
