"""The HTML report: one self-contained page, its plots, the weight maps behind the heatmap, the
CLI flags, escaping of model-controlled names, and a real headless browser rendering it."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest
from onnx import numpy_helper

import tvm_sparse
from tvm_sparse import cli, models
from tvm_sparse.formats.weight_map import coarse_map, corner_mask, quantize_density, weight_map
from tvm_sparse.report import LayerReport, Report
from tvm_sparse.report_html import layer_time, pick_heatmap_layer, total_time

from .formats.test_weight_map import block_weight, nm_weight

HOSTILE = "<script>alert(1)</script> & \"double\" 'single'"
PLOT_CLASSES = ("plot-density", "plot-macs", "plot-time", "plot-heatmap")
SVG_NS = 'xmlns="http://www.w3.org/2000/svg"'


def _layer(name: str, w: np.ndarray, **fields) -> LayerReport:
    nnz = int(np.count_nonzero(w))
    rows, cols = w.shape
    return LayerReport(
        name=name,
        op="linear",
        input_shape=[1, cols],
        weight_shape=[rows, cols],
        output_shape=[1, rows],
        macs_dense=rows * cols,
        weight_density=nnz / max(w.size, 1),
        weight_nnz=nnz,
        weight_map=weight_map(w),
        **fields,
    )


def hand_report() -> Report:
    """Three layers: measured times, estimates only (and a k-WTA input), no timing at all; the
    first one named to break out of HTML if anything is not escaped."""
    return Report(
        model=f"model {HOSTILE}.onnx",
        target="llvm",
        layers=[
            _layer(
                HOSTILE,
                nm_weight(64, 128),
                chosen="nm",
                measured_ms={"dense": 0.4, "nm": 0.2},
                estimated_ms={"dense": 9.0, "nm": 9.0},
            ),
            _layer(
                "/encoder/layer.0/attention/self/query/MatMul",
                block_weight(96, 192),
                activation={"kind": "kwta", "density": 0.25, "k": 24, "n": 96},
                chosen="bsr",
                estimated_ms={"dense": 0.3, "bsr": 0.1},
            ),
            _layer("fc_dense", np.ones((16, 32), np.float32), chosen="tvm"),
        ],
        notes=[f"note about {HOSTILE}"],
    )


class _Tags(HTMLParser):
    """Start/end tags and text of a page, checking that every element is closed in order."""

    VOID = {"meta", "img", "br", "rect", "line"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.starts: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.starts.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.starts.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID and (not self.stack or self.stack[-1] != tag):
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Tags:
    tags = _Tags()
    tags.feed(page)
    tags.close()
    assert not tags.errors, tags.errors[:5]
    assert not tags.stack, f"unclosed: {tags.stack}"
    return tags


def _svg_classes(tags: _Tags) -> list[str]:
    return [attrs.get("class", "") for tag, attrs in tags.starts if tag == "svg"]


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------
def test_page_is_one_document_with_the_plots_and_the_table():
    report = hand_report()
    page = report.to_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<html") == 1 and page.count("<body>") == 1
    tags = _parse(page)
    classes = _svg_classes(tags)
    for kind in PLOT_CLASSES:
        assert sum(kind in c.split() for c in classes) == 1, (kind, classes)
    rows = [attrs for tag, attrs in tags.starts if tag == "tr"]
    assert len(rows) == 1 + len(report.layers)  # header + one per layer
    for cell in ("MACs sparse-sparse", "est/meas ms", "8,192", "50.0%", "kwta 25.0%", "bsr"):
        assert f">{cell}</" in page, cell
    # every layer has a small heatmap; the large one is the sparse layer with the most MACs
    assert page.count('class="heatmap-small"') == 3
    assert "Sparsity pattern of /encoder/layer.0/attention/self/query" in page


def test_page_fetches_nothing():
    page = hand_report().to_html()
    rest = page.replace(SVG_NS, "")
    assert "http://" not in rest and "https://" not in rest
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def test_model_controlled_text_is_escaped_everywhere():
    page = hand_report().to_html()
    tags = _parse(page)
    assert not [t for t, _ in tags.starts if t == "script"]
    assert "<script" not in page.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;double&quot; &#x27;single&#x27;"
    assert escaped in page
    # tooltips (SVG <title>), table cells, heading, notes: the text reads back as the raw name
    tooltips = re.findall(r"<title>([^<]*)</title>", page)
    assert any("&lt;script&gt;" in t for t in tooltips)
    text = "".join(tags.text)
    assert HOSTILE in text and f"note about {HOSTILE}" in text
    # attributes keep their quotes: a name in title="..." cannot add an attribute
    titled = [a["title"] for _, a in tags.starts if "title" in a]
    assert HOSTILE in titled


def test_timings_measured_first_missing_is_missing():
    layers = hand_report().to_dict()["layers"]
    first, second, third = (layer_time(x) for x in layers)
    assert (first.dense_ms, first.chosen_ms, first.dense_source) == (0.4, 0.2, "measured")
    assert first.speedup == pytest.approx(2.0)
    assert (second.dense_ms, second.chosen_ms, second.chosen_source) == (0.3, 0.1, "estimated")
    assert third.dense_ms is None and third.chosen_ms is None and third.speedup is None
    total = total_time(layers)
    assert (total.dense_ms, total.chosen_ms, total.layers) == pytest.approx((0.7, 0.3, 2))
    assert total.sources == ("estimated", "measured")
    # a measured chosen time with only an estimated dense one: both shown, no speedup
    mixed = layer_time({"chosen": "csr", "measured_ms": {"csr": 1.0}, "estimated_ms": {"dense": 2}})
    assert (mixed.chosen_source, mixed.dense_source, mixed.speedup) == (
        "measured",
        "estimated",
        None,
    )

    page = hand_report().to_html()
    assert "2.00×" in page and "3.00×" in page  # per-layer speedups over the bars
    assert "total over 2 of 3 layers" in page.lower() and "2.33× faster" in page
    assert page.count(">n/a</text>") == 2  # the untimed layer: dense and chosen both missing


def test_layers_without_density_are_drawn_dense_and_say_so():
    page = hand_report().to_html()
    assert "activation density unknown: drawn as 1.0 (dense)" in page
    assert "input activation density unknown: drawn as 100% (dense)" in page
    assert "input activation density 25.0%" in page


def test_heatmap_layer_choice():
    layers = hand_report().to_dict()["layers"]
    assert pick_heatmap_layer(layers) == 1  # sparse, most MACs (96*192 > 64*128)
    dense_only = [dict(x, weight_density=1.0) for x in layers]
    assert pick_heatmap_layer(dense_only) == 1  # none sparse: the largest
    assert pick_heatmap_layer([dict(x, weight_map={}) for x in layers]) is None
    page = hand_report().to_html(heatmap_layer="fc_dense")
    assert "Sparsity pattern of fc_dense" in page
    with pytest.raises(ValueError, match="no layer named"):
        hand_report().to_html(heatmap_layer="missing")


def test_old_reports_without_weight_maps_still_load_and_render():
    data = hand_report().to_dict()
    for layer in data["layers"]:
        del layer["weight_map"]
    old = Report.from_json(json.dumps(data))
    assert all(layer.weight_map == {} for layer in old.layers)
    page = old.to_html()
    _parse(page)
    assert "keeps no weight maps" in page and 'class="plot plot-heatmap empty"' in page
    assert "heatmap-small" not in page


def test_empty_reports_render():
    _parse(Report("empty").to_html())
    empty_weight = _layer("z", np.zeros((4, 0), np.float32))
    _parse(Report("m", "llvm", [empty_weight]).to_html())


def test_weight_map_round_trips_through_json():
    report = hand_report()
    again = Report.from_json(report.to_json())
    assert again.to_dict() == report.to_dict()
    assert again.layers[0].weight_map == report.layers[0].weight_map


# --------------------------------------------------------------------------------------------
# the weight map, filled by the analysis (its own tests: tests/formats/test_weight_map.py)
# --------------------------------------------------------------------------------------------
def test_analysis_fills_the_weight_map_from_the_real_weights():
    model = models.pruned_mlp(layers=2, hidden=64, pattern="nm", nm=(2, 4))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    report = tvm_sparse.analyze(model)
    w = weights["fc0.weight"]  # [out, in], as the report's weight_2d
    wmap = report.layers[0].weight_map
    assert wmap["shape"] == list(w.shape)
    np.testing.assert_array_equal(corner_mask(wmap), w[:32, :64] != 0)
    expected = np.zeros(wmap["grid"])
    cr, cc = wmap["cell"]
    for r in range(expected.shape[0]):
        for c in range(expected.shape[1]):
            expected[r, c] = (w[r * cr : (r + 1) * cr, c * cc : (c + 1) * cc] != 0).mean()
    np.testing.assert_array_equal(coarse_map(wmap), quantize_density(expected))


# --------------------------------------------------------------------------------------------
# a real analysis, and the command line
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return models.save(models.tiny_sparse_cnn(), tmp_path_factory.mktemp("m") / "tiny.onnx")


def test_real_analysis_renders(tiny_onnx):
    report = tvm_sparse.analyze(tiny_onnx)
    page = report.to_html()
    tags = _parse(page)
    classes = _svg_classes(tags)
    for kind in PLOT_CLASSES:
        assert any(kind in c.split() for c in classes), kind
    assert "plot-time empty" in " ".join(classes)  # an analysis has no timings, and says so
    assert "Sparsity pattern of cnn2" in page  # sparse, and the most MACs
    assert page.count('class="heatmap-small"') == len(report.layers) == 4
    for layer in report.layers:
        assert f">{layer.name}</td>" in page


def test_cli_analyze_writes_html(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "sub" / "report.html"
    assert cli.main(["-q", "analyze", tiny_onnx, "--html", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out}" in stdout and "cnn2" in stdout
    page = out.read_text(encoding="utf-8")
    assert all(kind in page for kind in PLOT_CLASSES)

    # with --format json stdout stays one JSON document; the "wrote" line goes to stderr
    out2 = tmp_path / "report2.html"
    assert cli.main(["-q", "analyze", tiny_onnx, "--format", "json", "--html", str(out2)]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["layers"]) == 4
    assert f"wrote {out2}" in captured.err and out2.exists()


def test_cli_html_errors_are_one_line(tiny_onnx, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["-q", "analyze", tiny_onnx, "--html", str(blocker / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the HTML report" in err[0]

    fpga = ["-q", "compile", tiny_onnx, "--target", "fpga", "-o", str(tmp_path / "hls")]
    assert cli.main([*fpga, "--html", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "--html is not supported for the fpga target" in err
    assert not (tmp_path / "hls").exists()  # refused before the HLS run


@pytest.mark.slow
def test_cli_compile_writes_html_with_timings(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "report.html"
    lib = tmp_path / "tiny.so"
    assert cli.main(["-q", "compile", tiny_onnx, "-o", str(lib), "--html", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert "plot-time empty" not in page and "× faster" in page
    assert "chosen vs dense time" in page
    report = tvm_sparse.load(str(lib)).report
    assert all(layer.weight_map for layer in report.layers)  # the manifest keeps the maps


# --------------------------------------------------------------------------------------------
# a real browser
# --------------------------------------------------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(binary: str, profile, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk (no image library needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _png_filtered(data: bytes) -> np.ndarray:
    """The decompressed, still filtered, scanlines: a blank page makes them nearly all zero."""
    chunks, pos = [], 8
    while pos < len(data):
        length, tag = struct.unpack(">I4s", data[pos : pos + 8])
        if tag == b"IDAT":
            chunks.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return np.frombuffer(zlib.decompress(b"".join(chunks)), np.uint8)


@pytest.fixture(scope="module")
def analyzed_report(tiny_onnx):
    return tvm_sparse.analyze(tiny_onnx)


@pytest.mark.parametrize("which", ["hand", "analyzed"])
def test_chromium_renders_the_plots(which, analyzed_report, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium or chromium-browser on PATH (apt-get install chromium)")
    report = hand_report() if which == "hand" else analyzed_report
    page = tmp_path / "report.html"
    page.write_text(report.to_html(), encoding="utf-8")

    dom = _run_chromium(binary, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    for kind in PLOT_CLASSES:
        assert re.search(rf'<svg[^>]*class="plot {kind}', rendered), kind
    assert "<script" not in rendered.lower()  # the hostile layer name stayed text
    assert rendered.count("<rect") > 100

    shot = tmp_path / f"report_{which}.png"
    size = "--window-size=1400,2400"
    proc = _run_chromium(binary, tmp_path / "profile", f"--screenshot={shot}", size, page.as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    blank_page = tmp_path / "blank.html"
    blank_page.write_text("<!DOCTYPE html><html><body></body></html>")
    blank = tmp_path / "blank.png"
    _run_chromium(binary, tmp_path / "profile", f"--screenshot={blank}", size, blank_page.as_uri())

    data = shot.read_bytes()
    assert _png_size(data) == (1400, 2400)
    assert len(data) > 30_000 and len(data) > 5 * blank.stat().st_size
    # a blank page filters to zeros but one byte a row; the plots are ink all over
    ink, blank_ink = _png_filtered(data), _png_filtered(blank.read_bytes())
    assert np.count_nonzero(ink) > 20 * np.count_nonzero(blank_ink)
    assert len(np.unique(ink)) > 64
    stable = os.environ.get("TVM_SPARSE_SCREENSHOT_DIR")
    if stable:
        os.makedirs(stable, exist_ok=True)
        shutil.copy(shot, os.path.join(stable, shot.name))
