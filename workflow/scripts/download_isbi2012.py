"""Rule download_isbi2012: fetch (or copy from a mirror) and verify the ISBI 2012 slices."""

from pathlib import Path
from typing import Any

from emseg.download import fetch_dataset, read_manifest
from emseg.io import write_json
from emseg.runner import LOG, run_rule
from emseg.settings import isbi_mirror


def main(snakemake: Any) -> None:
    manifest = read_manifest(Path(snakemake.input.manifest))
    folder = Path(snakemake.params.folder)
    # Where the bytes come from is read here, not passed as a param: the manifest's SHA-256 sums
    # pin what they are, so setting or unsetting a mirror must not rerun the whole workflow.
    mirror = isbi_mirror(snakemake.config)
    base_url = None if mirror else snakemake.config["data"]["base_url"]
    LOG.info("fetching %d files from %s", len(manifest), mirror or base_url)
    fetch_dataset(manifest, folder, base_url=base_url, mirror=mirror)
    write_json(
        snakemake.output.record,
        {"origin": str(mirror or base_url), "folder": str(folder), "files": manifest},
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
