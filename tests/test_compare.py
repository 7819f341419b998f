"""The comparison page as a person reads it: whole seconds, no GPU column without a GPU."""

from __future__ import annotations

import re

from emseg.compare import comparison_table, render_comparison


def _runs(device: str) -> tuple[list[dict], list[dict]]:
    summaries = [
        {"name": name, "arch": "unet", "fold": 0, "seed": 0, "vrand": vrand, "vinfo": 0.98}
        for name, vrand in (("unet", 0.9839), ("fcn", 0.9701))
    ]
    trainings = [
        {"train_seconds": 575.123456, "device": device, "parameters": 1_940_000},
        {"train_seconds": 321.5, "device": device, "parameters": 3_000_000},
    ]
    return summaries, trainings


def _runs_table(page: str) -> str:
    return page[page.index("<h2>Runs</h2>") :]


def test_runs_on_a_cpu_show_whole_seconds_and_no_gpu_column() -> None:
    page = render_comparison(comparison_table(*_runs("cpu")))
    runs = _runs_table(page)
    assert "GPU (s)" not in runs and "<th>training (s)</th>" in runs
    assert "<td>575</td>" in runs and "<td>322</td>" in runs  # not 575.1235
    assert not re.search(r"<td>575\.\d", runs)
    assert '<td class="best">0.9839 (1) ★</td>' in page  # V_rand: unet's is marked
    assert '<td class="best">0.9701' not in page


def test_runs_on_a_gpu_keep_the_gpu_column() -> None:
    runs = _runs_table(render_comparison(comparison_table(*_runs("cuda:0"))))
    assert "<th>GPU (s)</th>" in runs and runs.count("<td>575</td>") == 2  # wall and GPU
