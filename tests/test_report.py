"""Tests for the HTML run report and its figures (emseg.report, emseg.plots)."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emseg.plots import (
    FALSE_MEMBRANE_RGB,
    MISSED_MEMBRANE_RGB,
    OVERLAY_ALPHA,
    overlay_errors,
    plot_learning_curves,
    to_png_bytes,
)
from emseg.report import write_report

VOID_TAGS = {"meta", "img", "br", "hr", "link", "input", "source", "wbr"}
METRICS = ["pixel_error", "dice", "iou", "vrand", "vrand_split", "vrand_merge", "vinfo"]
NASTY_PATH = 'data/a<b&"c"'


class StrictParser(HTMLParser):
    """Records tags and fails on any end tag that does not close the innermost open element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.in_tbody = False
        self.tbody_rows = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag == "tbody":
            self.in_tbody = True
        if tag == "tr" and self.in_tbody:
            self.tbody_rows += 1
        if tag not in VOID_TAGS:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self.in_tbody = False
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(html)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []
    return parser


def make_run(
    n_slices: int = 3, shape: tuple[int, int] = (20, 24), seed: int = 0
) -> dict[str, object]:
    """Random stacks, a per-slice table and a training log with two validation passes."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n_slices, *shape)).astype(np.float32)
    labels = (rng.random((n_slices, *shape)) < 0.3).astype(np.uint8)
    probs = rng.random((n_slices, *shape)).astype(np.float32)
    slice_ids = [int(i) for i in rng.choice(30, size=n_slices, replace=False)]
    per_slice = pd.DataFrame(
        {"slice": slice_ids, **{m: rng.random(n_slices) for m in METRICS}, "threshold": 0.5}
    )
    steps = np.arange(1, 11)
    train_log = pd.DataFrame(
        {
            "step": steps,
            "elapsed_s": steps * 0.5,
            "lr": 1e-3,
            "train_loss": 1.0 / steps,
            "val_loss": np.where(steps % 5 == 0, 0.5 / steps, np.nan),
            "val_pixel_accuracy": np.where(steps % 5 == 0, 0.9, np.nan),
            "val_dice": np.where(steps % 5 == 0, 0.7, np.nan),
        }
    )
    return {
        "title": "unet <fold 0>",
        "config": {"data": {"root": Path(NASTY_PATH)}, "seed": np.int64(7), "aug": ("flip",)},
        "train_log": train_log,
        "per_slice": per_slice,
        "summary": {"vrand": 0.91234567, "dice": 0.8, "arch": "unet", "seed": 7},
        "images": images,
        "labels": labels,
        "probs": probs,
        "threshold": 0.5,
        "slice_ids": slice_ids,
    }


def inline_pngs(html: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    ]


def test_report_structure_and_escaping(tmp_path: Path) -> None:
    run = make_run()
    out = tmp_path / "report.html"
    write_report(out, **run)
    html = out.read_text(encoding="utf-8")
    parser = parse(html)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    imgs = [attrs for tag, attrs in parser.starts if tag == "img"]
    assert len(imgs) == 1 + 4 * 3
    assert all(attrs["src"].startswith("data:image/png;base64,") for attrs in imgs)
    assert len(inline_pngs(html)) == len(imgs)
    assert parser.tbody_rows == 3 + 1
    assert "a&lt;b&amp;&quot;c&quot;" in html
    assert NASTY_PATH not in html
    assert NASTY_PATH in "".join(parser.text)
    assert "unet &lt;fold 0&gt;" in html
    assert not re.search(r"<(script|link)\b", html)
    assert "0.9123" in html


def test_table_rows_and_mean_match_the_data(tmp_path: Path) -> None:
    run = make_run(n_slices=4)
    out = tmp_path / "r.html"
    write_report(out, **run)
    html = out.read_text(encoding="utf-8")
    per_slice: pd.DataFrame = run["per_slice"]
    tbody = html.split("<tbody>")[1].split("</tbody>")[0]
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr.*?</tr>", tbody)]
    for row, slice_id, dice in zip(rows, per_slice["slice"], per_slice["dice"], strict=False):
        assert row[0] == str(slice_id)
        assert row[2] == f"{dice:.4f}"
    mean = rows[-1]
    assert mean[0] == "mean"
    assert mean[1] == f"{np.mean(per_slice['pixel_error'].to_numpy()):.4f}"
    assert mean[-1] == "0.5000"


def test_report_without_validation_rows_and_with_one_row(tmp_path: Path) -> None:
    run = make_run()
    no_val = run["train_log"].copy()
    no_val[["val_loss", "val_pixel_accuracy", "val_dice"]] = np.nan
    for log in (no_val, no_val.iloc[:1]):
        out = tmp_path / "r.html"
        write_report(out, **{**run, "train_log": log})
        parse(out.read_text(encoding="utf-8"))


def test_thumbnails_are_downscaled_and_report_stays_small(tmp_path: Path) -> None:
    # Pure noise is the worst case for PNG compression.
    run = make_run(n_slices=5, shape=(512, 512))
    out = tmp_path / "big.html"
    write_report(out, **run)
    html = out.read_text(encoding="utf-8")
    assert out.stat().st_size < 3_000_000
    thumbs = inline_pngs(html)[1:]
    assert len(thumbs) == 20
    assert {image.size for image in thumbs} == {(256, 256)}


def test_non_square_thumbnail_keeps_aspect(tmp_path: Path) -> None:
    run = make_run(n_slices=1, shape=(300, 600))
    out = tmp_path / "r.html"
    write_report(out, **run)
    assert {image.size for image in inline_pngs(out.read_text())[1:]} == {(256, 128)}


def test_report_is_byte_reproducible(tmp_path: Path) -> None:
    run = make_run()
    write_report(tmp_path / "a.html", **run)
    write_report(tmp_path / "b.html", **run)
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()


def test_given_curve_png_is_embedded_verbatim(tmp_path: Path) -> None:
    curve = tmp_path / "curve.png"
    curve.write_bytes(to_png_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4)))
    out = tmp_path / "r.html"
    write_report(out, **make_run(), curve_png=curve)
    assert base64.b64encode(curve.read_bytes()).decode() in out.read_text()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"probs": np.zeros((3, 20, 25), np.float32)}, "probs"),
        ({"slice_ids": [1, 2]}, "slice_ids"),
        ({"images": np.zeros((20, 24), np.float32)}, "images"),
    ],
)
def test_bad_stacks_raise_and_write_nothing(tmp_path: Path, change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_report(tmp_path / "r.html", **{**make_run(), **change})
    assert list(tmp_path.iterdir()) == []


def test_curve_png_that_is_not_png_raises(tmp_path: Path) -> None:
    bogus = tmp_path / "curve.png"
    bogus.write_text("not a png")
    with pytest.raises(ValueError, match="curve_png"):
        write_report(tmp_path / "r.html", **make_run(), curve_png=bogus)


def test_overlay_colours_on_hand_made_case() -> None:
    image = np.array([[10, 200, 90], [40, 250, 0]], dtype=np.uint8)
    label = np.array([[0, 1, 0], [1, 1, 0]], dtype=np.uint8)
    prob = np.array([[0.9, 0.2, 0.1], [0.8, 0.5, 0.49]], dtype=np.float32)
    rgb = overlay_errors(image, label, prob, threshold=0.5)
    assert rgb.shape == (2, 3, 3)
    assert rgb.dtype == np.uint8

    def blend(gray: int, colour: tuple[int, int, int]) -> list[int]:
        return [round((1 - OVERLAY_ALPHA) * gray + OVERLAY_ALPHA * c) for c in colour]

    assert rgb[0, 0].tolist() == blend(10, FALSE_MEMBRANE_RGB)
    assert rgb[0, 1].tolist() == blend(200, MISSED_MEMBRANE_RGB)
    r, g, b = rgb[0, 0].astype(int)
    assert r > g and b > g
    r, g, b = rgb[0, 1].astype(int)
    assert g > r and g > b
    # correct cell, correct membrane, membrane exactly at threshold, cell just below it
    for y, x in [(0, 2), (1, 0), (1, 1), (1, 2)]:
        assert rgb[y, x].tolist() == [int(image[y, x])] * 3


def test_overlay_stretches_float_images_to_gray() -> None:
    image = np.array([[-1.0, 0.0, 3.0]])
    rgb = overlay_errors(image, np.zeros((1, 3), np.uint8), np.zeros((1, 3)), 0.5)
    expected = np.round((image - image.min()) / (image.max() - image.min()) * 255)
    assert rgb[..., 0].tolist() == expected.tolist()
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_overlay_rejects_bad_label_and_shape() -> None:
    image = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match="label"):
        overlay_errors(image, np.full((2, 2), 255, np.uint8), np.zeros((2, 2)), 0.5)
    with pytest.raises(ValueError, match="label/prob"):
        overlay_errors(image, np.zeros((2, 3), np.uint8), np.zeros((2, 2)), 0.5)


def test_to_png_bytes_round_trips() -> None:
    gray = Image.open(io.BytesIO(to_png_bytes(np.array([[0.0, 0.5, 1.0]]))))
    assert gray.mode == "L"
    assert np.asarray(gray).tolist() == [[0, 128, 255]]
    raw = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(to_png_bytes(raw)))), raw)
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(to_png_bytes(rgb)))), rgb)
    with pytest.raises(ValueError, match="array"):
        to_png_bytes(np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError, match="image"):
        to_png_bytes(np.array([[np.nan, 1.0]]))


@pytest.mark.parametrize("rows", [1, 10])
def test_plot_learning_curves_writes_png(tmp_path: Path, rows: int) -> None:
    log = make_run()["train_log"].iloc[:rows]
    out = tmp_path / "curves.png"
    plot_learning_curves(log, out)
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size[0] > 500
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_plot_learning_curves_requires_step_and_loss(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_loss"):
        plot_learning_curves(pd.DataFrame({"step": [1]}), tmp_path / "c.png")


def test_headings_and_facts_read_as_words_with_the_csv_keys_on_hover(tmp_path: Path) -> None:
    run = make_run(n_slices=2)
    run["summary"] |= {"vrand_split": 0.95, "seg_vrand": 0.97, "segment_method": "watershed"}
    run["per_slice"] = run["per_slice"].assign(seg_vrand=0.97)
    out = tmp_path / "r.html"
    write_report(out, **run)
    html = out.read_text(encoding="utf-8")
    assert '<th title="pixel_error">pixel error</th>' in html
    assert '<th title="vrand_split">V_rand split</th>' in html
    assert '<th title="seg_vrand">V_rand</th>' in html  # the label image's own table
    header = html.split("</header>")[0]
    assert "network: <b>unet</b>" in header and "segmentation: <b>watershed</b>" in header
    assert "vrand_split" not in header and "V_rand split" not in header  # in the table only
    assert '<div class="name">Dice</div>' in header
    assert "pixel error " in html.split("</header>")[1]  # slice captions in words too
