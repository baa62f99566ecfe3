"""report.html from synthetic report.json dictionaries: structure, numbers, escaping, and no network."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qcompile.report import html_format as fmt
from qcompile.report.html import render_html, select_ranges, worst_layers, write_html_report
from qcompile.testing import sample_reports
from qcompile.testing.report_checks import data_cells, expected, resolve, shown_matches

BUILDERS = {
    "classifier": sample_reports.classifier_report,
    "tvm": sample_reports.tvm_report,
    "no_baselines": sample_reports.no_baseline_report,
    "llm": sample_reports.llm_report,
    "minimal": sample_reports.minimal_report,
    "hostile": sample_reports.hostile_report,
}
RESULTS = Path(__file__).parents[2] / "benchmarks" / "results"


@functools.cache
def _page(name: str) -> str:
    """The page of BUILDERS[name]'s report (drawing the charts takes about a second: once per report)."""
    return render_html(BUILDERS[name]())


def _charts(page: str) -> list[str]:
    return re.findall(r'<svg class="chart" data-chart="([^"]+)"', page)


def _table(page: str, css_class: str) -> str:
    return re.search(rf'<table class="{css_class}">(.*?)</table>', page, re.S).group(1)


@pytest.fixture(params=sorted(BUILDERS))
def name(request) -> str:
    return request.param


def test_a_full_report_has_the_four_charts_in_section_order():
    page = _page("classifier")
    assert _charts(page) == ["latency", "per-layer", "per-pass", "ranges"]
    assert page.count("<svg") == 4  # nothing but the charts draws


def test_every_number_on_the_page_is_the_reports_value_shown_to_its_digits(name):
    report, page = BUILDERS[name](), _page(name)
    cells = data_cells(page)
    assert cells
    for cell in cells:
        value = expected(report, cell)
        assert float(cell["value"]) == value, cell
        assert shown_matches(cell["text"], value), cell


def test_each_kind_of_number_has_its_documented_format():
    report = sample_reports.tvm_report()
    shown = {cell["key"]: cell["text"] for cell in data_cells(_page("tvm")) if cell["key"]}
    assert shown["all_metrics.qcompile.top1"] == "80.60"
    assert shown["latency_ms.ort_fp32"] == "138.5"
    assert shown["latency_ms.tvm_int"] == "48.73"
    assert shown["per_layer.55.sqnr_db"] == f"{report['per_layer'][55]['sqnr_db']:.1f}"
    assert shown["per_pass.1.max_abs_err"] == "3.1e-05"
    assert shown["per_pass.0.max_abs_err"] == "0"
    assert shown["per_pass.0.sqnr_vs_float_db"] == "∞"
    assert shown["per_pass.0.seconds"] == "4.818"
    assert shown["calibration_ranges.2.raw_min"] == "-0.1700"  # feeds block 0's fc2, among the worst


def test_the_metric_table_has_drop_and_paired_standard_error_and_the_reference_first():
    cells = data_cells(_page("classifier"))
    se = {cell["label"]: float(cell["value"]) for cell in cells if cell["derived"] == "drop_se"}
    from qcompile.zoo.paired import drop_interval

    assert se["qcompile"] == drop_interval(11, 6, 500)[1]
    assert set(se) == {"qcompile", "ort_int8_static", "ort_int8_dynamic"}
    rows = re.findall(r"<tr[^>]*><td>([^<]+)</td>", _table(_page("classifier"), "metrics"))
    # reference, then worst first: static (5.8), dynamic (1.8), qcompile (1.0)
    assert rows == ["ONNX Runtime FP32", "ONNX Runtime INT8 static", "ONNX Runtime INT8 dynamic", "qcompile"]


def test_every_table_row_has_as_many_cells_as_its_header(name):
    for table in re.findall(r"<table[^>]*>(.*?)</table>", _page(name), re.S):
        head = re.search(r"<thead>(.*?)</thead>", table, re.S).group(1)
        columns = head.count("<th")
        for row in re.findall(r"<tbody>(.*?)</tbody>", table, re.S)[0].split("</tr>")[:-1]:
            assert row.count("<td") == columns, row


def test_the_metric_table_shows_the_runtime_of_each_score():
    page = _page("tvm")
    assert "TVM llvm library (avx512vnni kernels)" in _table(page, "metrics")


def test_the_worst_ten_layers_table_lists_the_lowest_sqnr_layers_worst_first():
    report = sample_reports.classifier_report()
    layers = report["per_layer"]
    lowest = sorted((item["sqnr_db"], item["node"]) for item in layers)[:10]
    table = _table(_page("classifier"), "worst-layers")
    names = [re.sub(r"<wbr>", "", name) for name in re.findall(r'<td class="name">(.*?)</td>', table)]
    assert names == [node for _, node in lowest]
    assert [layers[i]["node"] for i in worst_layers(report)] == names


def test_identical_layers_are_never_among_the_worst_and_are_shown_as_infinite():
    report = sample_reports.classifier_report()
    report["per_layer"] = [{"node": "a", "sqnr_db": 1e9}, {"node": "b", "sqnr_db": 31.0}]
    assert worst_layers(report) == [1]
    assert fmt.decibels(1e9) == "∞"


def test_ranges_feeding_the_worst_layers_come_first_then_the_most_clipped():
    report = sample_reports.classifier_report()
    ranges = report["calibration_ranges"]
    chosen = select_ranges(report)
    worst_nodes = [report["per_layer"][i]["node"] for i in worst_layers(report)]
    feeding = [i for i in chosen if set(ranges[i]["consumers"]) & set(worst_nodes)]
    assert chosen[: len(feeding)] == feeding and len(chosen) == 12
    # the worst layer's input comes first
    assert worst_nodes[0] in ranges[chosen[0]]["consumers"]
    rest = chosen[len(feeding) :]
    spans = [(ranges[i]["raw_max"] - ranges[i]["raw_min"]) / (ranges[i]["hi"] - ranges[i]["lo"]) for i in rest]
    assert spans == sorted(spans, reverse=True)


def test_no_resource_is_fetched_from_outside_the_file(name):
    page = _page(name)
    assert not re.search(r"<script|<link|<iframe|<img|<object|<embed|@import|url\((?!#)", page, re.I)
    assert re.findall(r"\bsrc\s*=", page, re.I) == []
    for target in re.findall(r'\bhref\s*=\s*"([^"]*)"', page, re.I):
        assert target.startswith("#"), target
    # the only URLs are the SVG namespaces
    for url in re.findall(r"https?://[^\s\"'<>]+", page):
        assert url.startswith(("http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink")), url


def test_hostile_strings_are_escaped_everywhere():
    page = _page("hostile")
    assert "<script" not in page.lower()
    assert sample_reports.HOSTILE not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<table") == page.count("</table>")
    assert page.count("<td") == page.count("</td>")


def test_a_tvm_report_times_the_library_and_names_its_kernels():
    page = _page("tvm")
    latency = _table(page, "latency")
    assert "qcompile · TVM library (avx512vnni)" in latency
    assert 'data-key="latency_ms.tvm_int"' in latency
    chart = re.search(r'<svg class="chart" data-chart="latency".*?</svg>', page, re.S).group(0)
    assert "TVM kernels: avx512vnni" in chart
    assert "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz" in chart
    assert "bit-exact" in page


def test_a_report_without_baselines_shows_only_the_float_model_and_qcompile():
    page = _page("no_baselines")
    rows = re.findall(r"<tr[^>]*><td>([^<]+)</td>", _table(page, "metrics"))
    assert rows == ["ONNX Runtime FP32", "qcompile"]
    assert "INT8" not in _table(page, "latency")


def test_a_lower_is_better_metric_is_an_increase_and_generations_are_escaped():
    page = _page("llm")
    metrics = _table(page, "metrics")
    assert "increase vs FP32" in metrics and "drop vs FP32" not in metrics
    degradation = {c["label"]: float(c["value"]) for c in data_cells(page) if c["derived"] == "degradation"}
    assert degradation["qcompile"] == pytest.approx(14.687 - 13.912)
    # worst first under lower-is-better: dynamic (15.304) before qcompile (14.687)
    rows = re.findall(r"<tr[^>]*><td>([^<]+)</td>", metrics)
    assert rows == ["ONNX Runtime FP32", "ONNX Runtime INT8 dynamic", "qcompile"]
    assert "lost" not in metrics  # no paired counts for perplexity
    generations = _table(page, "generations")
    assert "&lt;b&gt;bold&lt;/b&gt;" in generations and "<b>bold" not in generations
    # lowest agreement first
    assert generations.index("if (a &lt; b") < generations.index("The capital of France")
    assert len(_charts(page)) == 4  # ort_int8_static's latency is None: skipped, not drawn


def test_a_minimal_report_says_what_was_not_recorded():
    page = _page("minimal")
    assert _charts(page) == ["latency"]
    for text in (
        "no calibration ranges recorded",
        "no per-layer SQNR recorded",
        "no passes recorded",
        "command, versions and CPU not recorded",
        "CPU not recorded",
    ):
        assert text in page
    assert "Generations" not in page


@pytest.mark.parametrize(
    "path",
    sorted(p for p in RESULTS.glob("*.json") if {"model", "metric", "latency_ms"} <= set(json.loads(p.read_text()))),
)
def test_the_benchmark_reports_in_the_repository_render(path):
    report = json.loads(path.read_text())
    page = render_html(report)
    charts = _charts(page)
    assert "latency" in charts and ("per-layer" in charts) == bool(report.get("per_layer"))
    for cell in data_cells(page):
        assert shown_matches(cell["text"], expected(report, cell)), cell


def test_write_html_report_writes_utf8_and_returns_the_path(tmp_path):
    path = write_html_report(sample_reports.llm_report(), tmp_path / "report.html")
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Generations" in text


def test_importing_the_builder_does_not_import_matplotlib():
    code = "import sys, qcompile.report.html; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_charts_are_reproducible_svg_with_unique_ids():
    page = _page("tvm")
    assert page == render_html(sample_reports.tvm_report())
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("function", "value", "text"),
    [
        (lambda v: fmt.fixed(v, 2), -0.001, "0.00"),
        (lambda v: fmt.fixed(v, 2), 80.6, "80.60"),
        (fmt.significant, 0.034149, "0.03415"),
        (fmt.significant, 1594.02, "1594"),
        (fmt.significant, 3.41912e-10, "3.419e-10"),
        (fmt.significant, -2.5e8, "-2.500e+08"),
        (fmt.significant, 0.001, "0.001000"),
        (fmt.significant, None, "-"),
        (fmt.decibels, 26.2877, "26.3"),
        (fmt.decibels, 1e9, "∞"),
        (fmt.exponent, 1.0728836e-06, "1.1e-06"),
        (fmt.ratio, 2.8431, "2.84×"),
    ],
)
def test_number_formats(function, value, text):
    assert function(value) == text


def test_resolve_walks_dotted_paths_through_lists():
    report = sample_reports.classifier_report()
    assert resolve(report, "per_layer.2.sqnr_db") == report["per_layer"][2]["sqnr_db"]


def test_names_with_glyphs_the_chart_font_lacks_draw_without_warnings(recwarn):
    render_html(sample_reports.hostile_report())  # CJK and emoji in value, node and CPU names
    assert [str(w.message) for w in recwarn.list if "Glyph" in str(w.message)] == []


def test_rendering_writes_nothing_under_home_or_the_temp_folder(tmp_path):
    """matplotlib's font cache and config go to a private temporary folder, removed when the process ends."""
    home, temp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    temp.mkdir()
    script = (
        "from qcompile.report.html import write_html_report\n"
        "from qcompile.testing.sample_reports import classifier_report\n"
        f"write_html_report(classifier_report(), __import__('pathlib').Path({str(tmp_path / 'r.html')!r}))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), TMPDIR=str(temp), XDG_CONFIG_HOME=str(home / ".config"))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=120)
    assert (tmp_path / "r.html").stat().st_size > 10_000
    assert list(home.iterdir()) == [] and list(temp.iterdir()) == []


def test_range_panel_titles_drop_the_shared_folders_and_the_output_suffix():
    from qcompile.report.html import panel_titles

    names = ["/backbone/encoder/layer.3/mlp/fc1/MatMul_output_0", "/backbone/encoder/layer.10/attn/Softmax_output_0"]
    assert panel_titles(names) == ["layer.3/mlp/fc1/MatMul", "layer.10/attn/Softmax"]
    assert panel_titles(["x", "ln1.out"]) == ["x", "ln1.out"]  # nothing shared: kept
    assert panel_titles(["/a/b_output_0"]) == ["b"]


def test_a_failed_rebuild_leaves_the_earlier_page_whole(tmp_path, monkeypatch):
    import qcompile.report.html as page_module

    path = write_html_report(sample_reports.minimal_report(), tmp_path / "report.html")
    before = path.read_bytes()

    def broken(report):
        raise RuntimeError("chart failed")

    monkeypatch.setattr(page_module, "render_html", broken)
    with pytest.raises(RuntimeError, match="chart failed"):
        page_module.write_html_report(sample_reports.classifier_report(), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
