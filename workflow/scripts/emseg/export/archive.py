"""Zip archives that are the same bytes for the same contents: no clock, no machine in them.

bioimageio.spec stamps rdf.yaml with the time it was zipped, and torch.jit.save writes a random
`.data/serialization_id` and, in `.debug_pkl` records, the Python stack of the trace (Snakemake's
temporary script name, absolute paths), so the same run exported twice gave two different
packages. Rewriting an archive with one fixed timestamp, and without the records its reader does
not need, makes the package a function of the run alone.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from emseg.io import atomic_path

TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can hold


def normalize_zip(path: Path, drop_suffixes: tuple[str, ...] = ()) -> None:
    """Rewrite the zip at `path` in place, atomically: the same members in the same order, with
    the same compression, each stamped TIMESTAMP; members whose names end in `drop_suffixes`
    are left out."""
    with (
        zipfile.ZipFile(path) as source,
        atomic_path(path) as tmp,
        zipfile.ZipFile(tmp, "w") as target,
    ):
        for info in source.infolist():
            if info.filename.endswith(drop_suffixes):
                continue
            member = zipfile.ZipInfo(info.filename, TIMESTAMP)
            member.compress_type = info.compress_type
            member.external_attr = info.external_attr
            member.create_system = 3  # as written on Unix, whatever the machine
            target.writestr(member, source.read(info))
