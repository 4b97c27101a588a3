"""The A/B report: decision first (terminal, HTML, JSON), MDE, latency intervals, strict
JSON, labelled offline metrics, and the CLI's errors for empty logs and bad --out."""
from __future__ import annotations

import html
import html.parser
import json
import math

import numpy as np
import pytest
from scipy import stats

import matta_tf  # noqa: F401
from serving import analysis
from serving.ab_orchestration import build_report, print_report

Z80 = stats.norm.ppf(0.8)


def _events(spec, n_items=5):
    """spec: arm -> (units, clicked units); one list per unit, one item click per clicked list."""
    events = []
    for arm, (n, clicked) in spec.items():
        for i in range(n):
            rid = f"{arm}-{i}"
            events.append({"type": "exposure", "request_id": rid, "unit_id": f"{arm}-u{i}",
                           "arm": arm, "served_arm": arm, "fallback": False,
                           "latency_ms": 1.0 + (i % 50) / 10, "n_items": n_items})
            events.append({"type": "outcome", "request_id": rid, "arm": arm,
                           "clicked": int(i < clicked), "clicks": int(i < clicked)})
    return events


def _report(spec, control="c", shares=None, costs=None, **kw):
    arms = list(spec)
    shares = shares or {a: 1.0 / len(arms) for a in arms}
    info = {a: {"params": p, "madds_per_example": m} for a, (p, m) in costs.items()} if costs else None
    return analysis.summarize(_events(spec), arms, control, shares, model_info=info, **kw)


class _FirstBodyElement(html.parser.HTMLParser):
    """The first element inside <body>: its tag, attributes and text."""

    def __init__(self):
        super().__init__()
        self.in_body = False
        self.depth = 0
        self.tag = None
        self.attrs = {}
        self.text = ""
        self.done = False

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.in_body = True
        elif self.in_body and not self.done:
            if self.tag is None:
                self.tag, self.attrs = tag, dict(attrs)
            self.depth += 1

    def handle_endtag(self, tag):
        if self.in_body and self.tag is not None and not self.done:
            self.depth -= 1
            self.done = self.depth == 0

    def handle_data(self, data):
        if self.in_body and not self.done:
            if self.tag is None and data.strip():
                raise AssertionError(f"text before the first element of <body>: {data!r}")
            if self.tag is not None:
                self.text += data


def _first_body_element(page: str) -> _FirstBodyElement:
    parser = _FirstBodyElement()
    parser.feed(page)
    return parser


def _terminal(report, capsys) -> list[str]:
    capsys.readouterr()
    print_report(report)
    return capsys.readouterr().out.splitlines()


def _assert_decision_first(report, tmp_path, capsys, text_start):
    assert next(iter(report)) == "decision"
    assert report["decision"]["text"].startswith(text_start)
    lines = _terminal(report, capsys)
    assert lines[0] == f"decision: {report['decision']['text']}"
    paths = analysis.write_report(report, str(tmp_path))
    with open(paths["json"]) as f:
        assert next(iter(json.load(f))) == "decision"
    with open(paths["html"]) as f:
        first = _first_body_element(f.read())
    assert first.attrs.get("id") == "decision"
    assert " ".join(first.text.split()) == f"Decision: {report['decision']['text']}"
    return lines


# ------------------------------------------------------------------------------ decisions

COSTS = {"c": (292_000, 280_000), "a": (449_000, 430_000), "b": (612_000, 600_000)}


def test_decision_winner_first_with_lift_ci_and_cost(tmp_path, capsys):
    report = _report({"c": (2000, 200), "a": (2000, 260), "b": (2000, 205)}, costs=COSTS)
    d = report["decision"]
    assert (d["outcome"], d["arm"]) == ("winner", "a")
    vc = report["arms"]["a"]["vs_control"]
    # Holm over 2 treatment arms: a's p-value is the smallest, so it is doubled.
    assert vc["p_holm"] == pytest.approx(2 * vc["p_value"], rel=1e-12) and vc["p_holm"] < 0.05
    assert not report["arms"]["b"]["vs_control"]["significant"]
    _assert_decision_first(report, tmp_path, capsys, "winner: a - CTR +30.0% vs c (95% CI ")
    assert "449,000 params (1.54x c)" in d["text"] and "430,000 multiply-adds/example" in d["text"]
    assert d["lift"] == pytest.approx(0.3) and d["ci95"] == [vc["ci95_low"], vc["ci95_high"]]


def test_decision_several_winners_takes_the_largest_lift(tmp_path, capsys):
    report = _report({"c": (3000, 300), "a": (3000, 390), "b": (3000, 420)}, costs=COSTS)
    d = report["decision"]
    assert (d["outcome"], d["arm"]) == ("winner", "b")
    assert d["text"].endswith("also significantly better: a")
    _assert_decision_first(report, tmp_path, capsys, "winner: b - CTR +40.0% vs c")


def test_decision_no_difference_keeps_the_cheapest(tmp_path, capsys):
    costs = {"c": (1000, 900), "a": (10, 9), "b": (100, 90)}
    report = _report({"c": (2000, 200), "a": (2000, 210), "b": (2000, 195)}, costs=costs)
    d = report["decision"]
    assert (d["outcome"], d["arm"]) == ("no_difference", "a")
    _assert_decision_first(report, tmp_path, capsys,
                           "no significant difference - keep the cheapest (a: 10 params, "
                           "9 multiply-adds/example)")
    mdes = sorted(report["arms"][a]["vs_control"]["mde_rel"] for a in ("a", "b"))
    assert d["text"].endswith(f"80% power to detect CTR lifts of {mdes[0] * 100:.1f}% or more")


def test_decision_without_costs_keeps_the_control_and_says_why():
    report = _report({"c": (2000, 200), "a": (2000, 210)})
    d = report["decision"]
    assert (d["outcome"], d["arm"]) == ("no_difference", "c")
    assert "arm costs unknown (give --model-config), so keep the control (c)" in d["text"]


def test_significantly_worse_arm_is_not_a_candidate_for_cheapest():
    costs = {"c": (1000, 900), "a": (10, 9), "b": (100, 90)}
    report = _report({"c": (2000, 300), "a": (2000, 200), "b": (2000, 305)}, costs=costs)
    d = report["decision"]
    assert d["outcome"] == "no_difference" and d["arm"] == "b"
    assert d["text"].startswith("no significant improvement (a significantly worse) - keep the "
                                "cheapest (b: 100 params")


def test_decision_sample_ratio_mismatch(tmp_path, capsys):
    report = _report({"c": (1000, 100), "t": (1300, 180)}, shares={"c": 0.5, "t": 0.5})
    assert report["srm"]["mismatch"]
    assert report["decision"]["outcome"] == "srm"
    lines = _assert_decision_first(report, tmp_path, capsys,
                                   "inconclusive: sample ratio mismatch (units chi2 = 39.1, p = ")
    assert any("<-- SAMPLE RATIO MISMATCH" in line for line in lines)


def test_decision_not_enough_data():
    report = _report({"c": (60, 6), "t": (2000, 200)}, shares={"c": 60, "t": 2000})
    d = report["decision"]
    assert d["outcome"] == "not_enough_data"
    assert d["text"] == ("not enough data: c has 60 units (need >= 100 units and >= 10 clicked "
                         "and unclicked lists per arm)")
    few_clicks = _report({"c": (500, 5), "t": (500, 50)})["decision"]
    assert few_clicks["outcome"] == "not_enough_data" and "c has 5 clicked and 495 unclicked" in few_clicks["text"]


# ------------------------------------------------------------------------------ statistics

def test_holm_adjustment_closed_form():
    adj = analysis.holm_adjust({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adj == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    adj = analysis.holm_adjust({"a": 0.4, "b": float("nan")})
    assert adj["a"] == pytest.approx(0.8) and math.isnan(adj["b"])


def test_mde_against_closed_form_and_its_power():
    z975 = 1.959963984540054
    # The pooled z-test's power in closed form, at the MDE: exactly 80%.
    mde_abs, mde_rel = analysis.minimum_detectable_effect(0.1, 10_000, 10_000)
    p_t, q = 0.1 + mde_abs, 0.1 + mde_abs / 2
    s0 = math.sqrt(q * (1 - q) * 2 / 10_000)
    s1 = math.sqrt((p_t * (1 - p_t) + 0.09) / 10_000)
    power = stats.norm.cdf((mde_abs - z975 * s0) / s1) + stats.norm.cdf((-mde_abs - z975 * s0) / s1)
    assert power == pytest.approx(0.80, abs=1e-9)
    assert mde_abs == pytest.approx(0.01220, abs=1e-5) and mde_rel == pytest.approx(mde_abs / 0.1)
    # Close to (and a little above) the textbook (z_0.975 + z_0.80) sqrt(2 p (1 - p) / n),
    # at which the test has only 78% power.
    textbook = (z975 + Z80) * math.sqrt(2 * 0.1 * 0.9 / 10_000)
    assert textbook == pytest.approx(0.011886, abs=1e-6) and 1.0 < mde_abs / textbook < 1.04
    assert analysis.power_two_proportion(textbook, 0.1, 10_000, 10_000) == pytest.approx(0.779, abs=1e-3)
    # Small effects (large n): the two agree; design effects scale the variances.
    big, _ = analysis.minimum_detectable_effect(0.1, 5e6, 1e7, deff_t=2.0, deff_c=3.0)
    assert big == pytest.approx((z975 + Z80) * math.sqrt(0.09 * (2 / 5e6 + 3 / 1e7)), rel=2e-3)
    assert analysis.power_two_proportion(big, 0.1, 5e6, 1e7, 2.0, 3.0) == pytest.approx(0.8, abs=1e-9)
    # Undefined without traffic or at a degenerate control rate.
    assert all(math.isnan(v) for v in analysis.minimum_detectable_effect(0.0, 100, 100))
    assert all(math.isnan(v) for v in analysis.minimum_detectable_effect(0.1, 0, 100))
    # Power check by simulation: a true difference of one MDE is detected ~80% of the time.
    rng = np.random.default_rng(3)
    n = 10_000
    c_c = rng.binomial(n, 0.1, 20_000)
    c_t = rng.binomial(n, 0.1 + mde_abs, 20_000)
    pooled = (c_c + c_t) / (2 * n)
    zs = (c_t - c_c) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    assert np.mean(np.abs(zs) > z975) == pytest.approx(0.80, abs=0.012)
    # In the report: two treatment arms -> the Bonferroni level 0.025, at the control's CTR
    # and the observed counts (one list per unit: design effect 1).
    report = _report({"c": (2000, 200), "a": (1000, 100), "b": (2000, 205)})
    assert report["methods"]["mde_alpha"] == 0.025
    vc = report["arms"]["a"]["vs_control"]
    assert analysis.power_two_proportion(vc["mde_abs"], 0.1, 1000, 2000, alpha=0.025) == \
        pytest.approx(0.8, abs=1e-9)
    assert vc["mde_rel"] == pytest.approx(vc["mde_abs"] / 0.1, rel=1e-12)
    a, c = report["arms"]["a"], report["arms"]["c"]
    item = vc["item"]  # 5 items per list, one click per clicked list: item CTR 0.02
    assert analysis.power_two_proportion(item["mde_abs"], 0.02, 5000, 10_000, a["item_design_effect"],
                                         c["item_design_effect"], alpha=0.025) == pytest.approx(0.8, abs=1e-9)


def test_latency_order_statistic_intervals():
    x = np.arange(1, 101, dtype=float)  # sorted: x_(k) = k
    assert analysis.quantile_ci(x, 0.5) == (40.0, 61.0)  # the textbook ranks for n = 100
    low, high = analysis.quantile_ci(x, 0.99)
    # P(B <= 96) = 0.018 <= 0.025 < P(B <= 97) for B ~ Binomial(100, 0.99): lower rank 97;
    # and no rank <= 100 reaches P(B <= u - 1) >= 0.975, so there is no upper bound.
    assert stats.binom.cdf(96, 100, 0.99) <= 0.025 < stats.binom.cdf(97, 100, 0.99)
    assert low == 97.0 and math.isnan(high)
    # Coverage of the true median / p99 of an exponential, by simulation: >= 95%.
    rng = np.random.default_rng(0)
    for q, n in ((0.5, 200), (0.99, 1000)):
        truth = -math.log(1 - q)
        hits = 0
        for _ in range(400):
            lo, hi = analysis.quantile_ci(rng.exponential(size=n), q)
            hits += lo <= truth <= hi
        assert hits / 400 >= 0.93, (q, hits)
    report = _report({"c": (2000, 200), "a": (2000, 210)})
    lat = [1.0 + (i % 50) / 10 for i in range(2000)]
    ci = report["arms"]["a"]["latency_ms_ci95"]
    assert ci["p50"] == list(analysis.quantile_ci(lat, 0.5))
    assert ci["p99"] == list(analysis.quantile_ci(lat, 0.99))


# ------------------------------------------------------------------------------ strict JSON

def _no_nan(text):
    def bad(token):
        raise AssertionError(f"non-standard JSON constant {token}")
    return json.loads(text, parse_constant=bad)


def test_json_has_no_nan_and_undefined_values_are_null(tmp_path):
    # Arm "b" got no traffic at all: its CTR, lift, p-value, latency are undefined.
    events = _events({"c": (300, 30), "a": (300, 40)})
    report = analysis.summarize(events, ["c", "a", "b"], "c", {"c": 0.5, "a": 0.5, "b": 0.0})
    paths = analysis.write_report(report, str(tmp_path))
    with open(paths["json"]) as f:
        doc = _no_nan(f.read())
    b = doc["arms"]["b"]
    assert b["ctr"] is None and b["vs_control"]["lift"] is None and b["vs_control"]["p_value"] is None
    assert b["latency_ms"]["p50"] is None and b["latency_ms_ci95"]["p99"] == [None, None]
    assert doc["decision"]["outcome"] == "not_enough_data"
    # write_report refuses NaN even when a caller adds it after summarize: it becomes null.
    report["simulation"] = {"seconds": float("nan")}
    paths = analysis.write_report(report, str(tmp_path))
    with open(paths["json"]) as f:
        assert _no_nan(f.read())["simulation"]["seconds"] is None


def test_item_ctr_chart_is_inline_svg_and_page_needs_no_network(tmp_path):
    report = _report({"c": (2000, 200), "a": (2000, 260)})
    page = open(analysis.write_report(report, str(tmp_path))["html"]).read()
    assert page.count("<svg") == 1 and "Item CTR per arm with 95% CI" in page
    assert page.count("data:image/png;base64,") == 1  # the lift chart (no offline AUC here)
    for attr in ('src="http', "src='http", 'href="http', "url(http", "@import"):
        assert attr not in page
    lo, hi = report["arms"]["a"]["item_ctr_ci95"]
    assert lo < 260 / 10_000 < hi


# ------------------------------------------------------------------------------ inputs, CLI

def _experiment(tmp_path, arms=("c", "a"), control="c"):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"name": "exp", "model_name": "ranker", "salt": "s",
                                "control": control,
                                "arms": [{"name": a, "label": a, "weight": 1} for a in arms]}))
    return str(path)


def _write_events(path, events):
    with open(path, "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    return str(path)


def test_empty_events_is_a_one_line_error(tmp_path, capsys):
    from matta_tf.cli import main

    exp = _experiment(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no events to analyse"):
        build_report(exp, str(empty), None, None)
    capsys.readouterr()
    assert main(["ab", "report", "--experiment", exp, "--events", str(empty),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"matta ab report: error: {empty}: no events to analyse (the event log is empty)"]
    assert not (tmp_path / "r").exists()
    # Only failed requests: nothing was shown, so there is nothing to analyse either.
    failed = _write_events(tmp_path / "failed.jsonl", [
        {"type": "exposure", "request_id": "r1", "arm": "a", "served_arm": None, "latency_ms": 3.0}])
    with pytest.raises(ValueError, match=r"no served exposures among 1 events \(1 failed requests\)"):
        build_report(exp, failed, None, None)


def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    from matta_tf.cli import main

    exp = _experiment(tmp_path)
    events = _write_events(tmp_path / "e.jsonl", _events({"c": (200, 20), "a": (200, 30)}))
    out = tmp_path / "report.html"
    out.write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        analysis.write_report(_report({"c": (200, 20), "a": (200, 30)}), str(out))
    capsys.readouterr()
    assert main(["ab", "report", "--experiment", exp, "--events", events, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"matta ab report: error: report directory {out} exists and is not a directory")
    assert out.read_text() == "keep me"
    # And the normal case: exit 0, decision first on stdout, strict JSON on disk.
    assert main(["ab", "report", "--experiment", exp, "--events", events,
                 "--out", str(tmp_path / "r")]) == 0
    out_lines = capsys.readouterr().out.splitlines()
    assert out_lines[0].startswith("decision: ")
    _no_nan((tmp_path / "r" / "ab_report.json").read_text())


def test_offline_metrics_are_labelled_with_their_data(tmp_path, capsys):
    exp = _experiment(tmp_path)
    events = _write_events(tmp_path / "e.jsonl", _events({"c": (200, 20), "a": (200, 30)}))
    new = tmp_path / "offline.json"
    new.write_text(json.dumps({
        "data": {"label": "offline AUC on the replayed log holdout.parquet, 40,000 rows "
                          "(not the pipeline's TFMA eval split)", "rows": 40000},
        "arms": {"c": {"auc": 0.846}, "a": {"auc": 0.845}}}))
    report = build_report(exp, events, None, str(new))
    assert report["offline_data"]["rows"] == 40000
    assert report["arms"]["c"]["offline"]["auc"] == 0.846
    label = report["offline_data"]["label"]
    assert f"{label}: c 0.8460, a 0.8450" in _terminal(report, capsys)
    page = html.unescape(analysis.render_html(report))
    assert "<p id=\"offline-data\">Offline AUC on the replayed log holdout.parquet, 40,000 rows " \
           "(not the pipeline's TFMA eval split).</p>" in page
    old = tmp_path / "old.json"  # the bare arm -> metrics mapping of earlier versions
    old.write_text(json.dumps({"c": {"auc": 0.8}, "a": {"auc": 0.7}}))
    report = build_report(exp, events, None, str(old))
    assert report["offline_data"]["label"] == f"offline metrics from {old} (data not stated)"
    assert report["arms"]["a"]["offline"]["auc"] == 0.7


def test_unreadable_lines_are_reported_everywhere(tmp_path, capsys):
    report = _report({"c": (200, 20), "a": (200, 30)}, unreadable_lines=3)
    assert report["unreadable_lines"] == 3
    lines = _terminal(report, capsys)
    assert lines[0].startswith("decision: ") and lines[1] == "warning: 3 unreadable event-log lines skipped"
    page = open(analysis.write_report(report, str(tmp_path))["html"]).read()
    assert "3 unreadable event-log lines skipped." in page
    assert _first_body_element(page).attrs.get("id") == "decision"
    assert _report({"c": (200, 20), "a": (200, 30)})["unreadable_lines"] is None


def test_simulate_with_no_successful_request_is_an_error_not_an_empty_report(tmp_path):
    import socket

    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.ab_orchestration import simulate_and_report
    from serving.simulate import SimulationConfig

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "log.parquet"
    pq.write_table(pa.table({"I1": [1.0] * 20, "click_prob": [0.2] * 20}), log)
    exp = _experiment(tmp_path)
    out = tmp_path / "report"
    cfg = SimulationConfig(num_requests=3, items_per_request=5, concurrency=1, max_seconds=30)
    with pytest.raises(ValueError, match=r"no request succeeded \(3 failed; first error: .*\), so "
                                         "there is no report"):
        simulate_and_report(exp, str(log), str(tmp_path / "e.jsonl"), cfg,
                            server=f"http://127.0.0.1:{port}", timeout_s=0.5, report_dir=str(out))
    assert not out.exists()
    # A --report-dir that is a file is refused before anything runs.
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        simulate_and_report(exp, str(log), str(tmp_path / "e2.jsonl"), cfg,
                            server=f"http://127.0.0.1:{port}", report_dir=str(tmp_path / "file"))
    assert not (tmp_path / "e2.jsonl").exists()


def test_costs_come_from_models_config_and_students_json(tmp_path, capsys):
    """The StudentExtractor writes students.json (params, multiply-adds per arm label) next
    to models.config; the report's 'keep the cheapest' uses the multiply-adds."""
    layout = tmp_path / "students"
    for version in (1, 2):
        (layout / "ranker" / str(version)).mkdir(parents=True)
        (layout / "ranker" / str(version) / "saved_model.pb").write_bytes(b"x" * 10 * version)
    (layout / "models.config").write_text(f"""model_config_list {{
  config {{
    name: "ranker"
    base_path: "{layout / 'ranker'}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "c" value: 1 }}
    version_labels {{ key: "a" value: 2 }}
  }}
}}
""")
    (layout / "students.json").write_text(json.dumps({"model_name": "ranker", "arms": {
        "c": {"version": 1, "params": 900, "madds_per_example": 5000},
        "a": {"version": 2, "params": 400, "madds_per_example": 3000}}}))
    exp = _experiment(tmp_path)
    events = _write_events(tmp_path / "e.jsonl", _events({"c": (300, 30), "a": (300, 31)}))
    report = build_report(exp, events, str(layout / "models.config"), None)
    a = report["arms"]["a"]["model"]
    assert (a["label"], a["version"], a["madds_per_example"], a["bytes_on_disk"]) == ("a", 2, 3000, 20)
    d = report["decision"]
    assert (d["outcome"], d["arm"], d["cost_key"]) == ("no_difference", "a", "madds_per_example")
    assert "keep the cheapest (a: " in d["text"] and "3,000 multiply-adds/example)" in d["text"]


def test_unreadable_event_log_lines_are_counted_from_the_reader(tmp_path, capsys):
    """serving.ab.read_events_with_errors skips lines that are not JSON objects (torn by a
    kill, merged, bad UTF-8); the report counts them and names the first."""
    exp = _experiment(tmp_path)
    lines = [json.dumps(e) for e in _events({"c": (200, 20), "a": (200, 30)})]
    path = tmp_path / "e.jsonl"
    path.write_bytes(("\n".join(lines[:3]) + '\n{"type": "outc\n' + "\n".join(lines[3:])
                      + '\n{"type": "expo').encode())
    report = build_report(exp, str(path), None, None)
    assert report["unreadable_lines"] == 2 and report["total_exposures"] == 400
    assert report["unreadable_first"].startswith("line 4 ")
    out = _terminal(report, capsys)
    assert out[0].startswith("decision: ")
    assert out[1].startswith("warning: 2 unreadable event-log lines skipped (first: line 4 ")
    page = analysis.render_html(report)
    assert "2 unreadable event-log lines skipped (first: line 4 " in page
    assert _first_body_element(page).attrs.get("id") == "decision"
    paths = analysis.write_report(report, str(tmp_path / "r"))
    assert _no_nan(open(paths["json"]).read())["unreadable_lines"] == 2
    # A clean log: 0, and no warning line.
    clean = _write_events(tmp_path / "clean.jsonl", _events({"c": (200, 20), "a": (200, 30)}))
    report = build_report(exp, clean, None, None)
    assert report["unreadable_lines"] == 0 and "unreadable_first" not in report
    assert not any("unreadable" in line for line in _terminal(report, capsys))
    # Nothing readable at all: a one-line error that says so.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"type": "exp\nnot json\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"no readable events \(3 unreadable lines skipped; "
                                         r"first: line 1 "):
        build_report(exp, str(bad), None, None)
