"""serving.ab and serving.analysis: assignment, durable log under SIGKILL, statistics."""
import base64
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

import matta_tf  # noqa: F401
from serving import ab, analysis

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(salt="salt-1", weights=(0.5, 0.3, 0.2)):
    return ab.ExperimentConfig.from_dict({
        "name": "exp", "model_name": "ranker", "salt": salt, "control": "ta",
        "arms": [{"name": n, "label": n, "weight": w}
                 for n, w in zip(("ta", "student", "mid"), weights, strict=True)]})


# ------------------------------------------------------------------------------ assignment

def test_assignment_is_deterministic_and_matches_weights():
    cfg = _config()
    units = [f"user-{i}" for i in range(20000)]
    first = [ab.assign_arm(cfg, u) for u in units]
    assert first == [ab.assign_arm(_config(), u) for u in units]  # sticky, stateless
    counts = np.array([first.count(a) for a in ("ta", "student", "mid")])
    chi2, p = stats.chisquare(counts, np.array([0.5, 0.3, 0.2]) * len(units))
    assert p > 0.001, (counts, chi2)
    # and it is not trivially uniform: a 50/30/20 split is far from 1/3 each.
    assert stats.chisquare(counts)[1] < 1e-100


def test_changing_the_salt_rerandomises():
    units = [f"user-{i}" for i in range(20000)]
    a = [ab.assign_arm(_config("salt-1"), u) for u in units]
    b = [ab.assign_arm(_config("salt-2"), u) for u in units]
    # Independent re-draws keep a unit in the same arm with probability sum(w^2) = 0.38.
    same = np.mean([x == y for x, y in zip(a, b, strict=True)])
    assert abs(same - 0.38) < 0.02, same
    names = ("ta", "student", "mid")
    table = np.array([[sum(1 for x, y in zip(a, b, strict=True) if x == i and y == j)
                       for j in names] for i in names])
    assert stats.chi2_contingency(table)[1] > 0.001  # new arm independent of the old one


def test_bucket_is_uniform_and_config_is_validated():
    u = np.array([ab.unit_bucket("s", str(i)) for i in range(5000)])
    assert stats.kstest(u, "uniform").pvalue > 0.001
    with pytest.raises(ValueError, match="control arm 'x'"):
        ab.ExperimentConfig.from_dict({"name": "e", "model_name": "m", "salt": "s",
                                       "control": "x",
                                       "arms": [{"name": "a", "label": "a", "weight": 1}]})
    with pytest.raises(ValueError, match="weight -1"):
        _config(weights=(0.5, -1, 0.2))
    with pytest.raises(ValueError, match="invalid arm 'a' label"):
        ab.ExperimentConfig.from_dict({"name": "e", "model_name": "m", "salt": "s",
                                       "control": "a",
                                       "arms": [{"name": "a", "label": "../a", "weight": 1}]})


# ------------------------------------------------------------------------------ durable log

_LOGGER_SCRIPT = r"""
import sys, threading
sys.path.insert(0, sys.argv[2])
from serving.ab import EventLog

log = EventLog(sys.argv[1], batch_size=32, flush_interval_s=0.005)
out_lock = threading.Lock()

def writer(t):
    i = 0
    while True:
        event_id = f"{t}-{i}"
        log.log({"type": "outcome", "id": event_id, "payload": "x" * 64})
        with out_lock:  # acknowledged: log() returned, so the event is on disk
            sys.stdout.write(f"ACK {event_id}\n")
            sys.stdout.flush()
        i += 1

for t in range(3):
    threading.Thread(target=writer, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def test_sigkill_loses_no_acknowledged_event(tmp_path):
    path = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _LOGGER_SCRIPT, str(path), REPO],
                            stdout=subprocess.PIPE, text=True)
    acked = []
    deadline = time.monotonic() + 30
    try:
        while len(acked) < 1500 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: writers are still running
        rest = proc.stdout.read()  # acks printed before the kill are still in the pipe
    finally:
        proc.kill()
        proc.wait(10)
    acked += [ln.split()[1] for ln in rest.splitlines() if ln.startswith("ACK ") and
              len(ln.split()) == 2]
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 1500, "logger did not acknowledge enough events before the deadline"
    logged = {e["id"] for e in ab.read_events(str(path))}
    missing = [a for a in acked if a not in logged]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:5]}"


def test_event_log_reader_skips_and_reports_torn_and_corrupt_lines(tmp_path):
    """A torn tail and bad lines anywhere (a torn line merged with the next write, bad
    UTF-8, a JSON value that is not an object) are skipped and reported; never raised."""
    path = tmp_path / "e.jsonl"
    with ab.EventLog(str(path), batch_size=4) as log:
        for i in range(10):
            log.log({"type": "outcome", "id": i})
    assert [e["id"] for e in ab.read_events(str(path))] == list(range(10))
    with open(path, "ab") as f:
        f.write(b'{"type": "outc')  # killed mid-write
    errors = []
    assert len(ab.read_events(str(path), errors=errors)) == 10
    assert len(errors) == 1 and errors[0].line == 11 and "torn" in errors[0].reason
    assert errors[0].length == 14 and errors[0].offset == path.stat().st_size - 14
    with open(path, "ab") as f:  # what an appender that does not repair the tail did
        f.write(b'{"id": 11}\n' + b'\xff\xfe{"id": 12}\n' + b"[1, 2]\n" + b"\n" + b'{"id": 13}\n'
                + b'{"id": 14, "x": ')
    events, errors = ab.read_events_with_errors(str(path))
    assert [e["id"] for e in events] == list(range(10)) + [13]
    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [
        (11, "not valid JSON"), (12, "not valid JSON"), (13, "not a JSON object (a list)"),
        (16, "torn")]
    assert ab.read_events(str(path)) == events  # the old signature still works
    log = ab.EventLog(str(tmp_path / "x.jsonl"))
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append({"a": 1})


_SHORT_WRITE_SCRIPT = r"""
import json, os, resource, signal, sys
sys.path.insert(0, sys.argv[2])
from serving.ab import EventLog

path = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
log = EventLog(path, batch_size=64)
event = lambda name: {"type": "outcome", "id": name, "payload": "x" * 80}
for i in range(5):
    log.log(event(f"a{i}"))
line = len(json.dumps(event("b0"), separators=(",", ":"))) + 1
before = os.path.getsize(path)
limit = before + 3 * line + 40  # the file may not grow past the 40th byte of line b3
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
seqs = [log.append(event(f"b{i}")) for i in range(8)]
acked, error = [], None
for i, seq in enumerate(seqs):
    try:
        log.wait(seq, timeout=10)
        acked.append(f"b{i}")
    except OSError as err:
        error = str(err)
        break
try:
    log.close()
except OSError:
    pass
print("RESULT " + json.dumps({"before": before, "line": line, "limit": limit, "acked": acked,
                               "error": error, "size": os.path.getsize(path)}))
"""


def test_short_write_torn_tail_is_cut_on_reopen_and_saved_aside(tmp_path, caplog):
    """A real short write: RLIMIT_FSIZE stops a batch 40 bytes into a line (as a full
    disk would). Reopening cuts exactly those 40 bytes, saves them to `.torn` and warns;
    events appended afterwards and every complete event before are readable."""
    path = tmp_path / "events.jsonl"
    proc = subprocess.run([sys.executable, "-c", _SHORT_WRITE_SCRIPT, str(path), REPO],
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["error"] and "File too large" in r["error"], r  # EFBIG: the write was cut
    assert r["size"] == r["limit"] == r["before"] + 3 * r["line"] + 40, r
    raw = path.read_bytes()
    torn = raw[r["before"] + 3 * r["line"]:]
    assert len(torn) == 40 and not raw.endswith(b"\n")

    caplog.set_level(logging.WARNING, logger="serving.ab")
    with ab.EventLog(str(path), batch_size=8) as log:
        assert log.repair is not None and log.repair.length == 40
        assert log.repair.offset == r["before"] + 3 * r["line"]
        assert log.repair.saved_to == str(path) + ".torn"
        for i in range(5):
            log.log({"type": "outcome", "id": f"c{i}"})
    assert any("cut 40 torn bytes" in rec.getMessage() for rec in caplog.records)
    (record,) = [json.loads(ln) for ln in (tmp_path / "events.jsonl.torn").read_text().splitlines()]
    assert record["length"] == 40 and base64.b64decode(record["bytes_b64"]) == torn
    assert record["offset"] == r["before"] + 3 * r["line"]

    events, errors = ab.read_events_with_errors(str(path))
    # The three lines of the cut batch that reached the disk whole are kept (like events
    # whose log() had not returned before a SIGKILL); acknowledged ones are among them.
    assert set(r["acked"]) <= {"b0", "b1", "b2"}
    assert [e["id"] for e in events] == ([f"a{i}" for i in range(5)] + ["b0", "b1", "b2"]
                                         + [f"c{i}" for i in range(5)])
    assert errors == []
    with ab.EventLog(str(path)) as log:  # a clean file is left alone
        assert log.repair is None


def test_reopen_cuts_a_bad_last_line_and_leaves_the_middle(tmp_path):
    path = tmp_path / "e.jsonl"
    good = b"".join(json.dumps({"id": i}).encode() + b"\n" for i in range(3))
    merged = b'{"type": "outc{"id": 3}\n'  # a torn line that an old appender continued
    bad_last = b'{"id": 4, "x": [1, 2\n'
    path.write_bytes(good + merged + good + bad_last)
    with ab.EventLog(str(path)) as log:
        assert log.repair.length == len(bad_last) and "last line is not valid JSON" in \
            log.repair.reason
        log.log({"id": 99})
    assert path.read_bytes() == good + merged + good + b'{"id":99}\n'
    events, errors = ab.read_events_with_errors(str(path))
    assert [e["id"] for e in events] == [0, 1, 2, 0, 1, 2, 99]
    assert [e.line for e in errors] == [4]  # the merged line in the middle: skipped, kept
    (record,) = [json.loads(ln) for ln in (tmp_path / "e.jsonl.torn").read_text().splitlines()]
    assert base64.b64decode(record["bytes_b64"]) == bad_last

    # A file with no newline at all is one torn line; an empty or new file needs nothing.
    whole = tmp_path / "w.jsonl"
    whole.write_bytes(b'{"id": 1, "x"')
    with ab.EventLog(str(whole)) as log:
        assert log.repair.offset == 0 and log.repair.length == 13
    assert whole.read_bytes() == b""
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    for p in (empty, tmp_path / "new.jsonl"):
        with ab.EventLog(str(p)) as log:
            assert log.repair is None
    assert not (tmp_path / "empty.jsonl.torn").exists()


def test_torn_tail_that_cannot_be_saved_aside_is_newline_terminated(tmp_path, caplog):
    """If `<path>.torn` cannot be written (here: it is a directory; in real life e.g. a full
    disk), the torn bytes are not thrown away: they stay as one line that readers skip."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"id": 0}\n{"id": 1, "pay')
    (tmp_path / "e.jsonl.torn").mkdir()
    caplog.set_level(logging.WARNING, logger="serving.ab")
    with ab.EventLog(str(path)) as log:
        assert log.repair.saved_to is None and log.repair.length == 0
        log.log({"id": 2})
    assert path.read_bytes() == b'{"id": 0}\n{"id": 1, "pay\n{"id":2}\n'
    assert any("newline-terminated" in rec.getMessage() for rec in caplog.records)
    errors = []
    assert [e["id"] for e in ab.read_events(str(path), errors=errors)] == [0, 2]
    assert [e.line for e in errors] == [2]


def test_event_log_group_commit_batches_a_burst_in_order(tmp_path):
    """A burst queued while the writer is fsyncing goes out in few writes, in order, and
    never in batches larger than batch_size."""
    path = tmp_path / "burst.jsonl"
    with ab.EventLog(str(path), batch_size=64) as log:
        seqs = [log.append({"type": "outcome", "id": i}) for i in range(2000)]
        assert log.wait(seqs[-1], timeout=30)
        assert log.durable_seq == 1999
        batches = log.batches_written
    assert 2000 / 64 <= batches < 1000  # capped at 64 per write, and far fewer than 1 per event
    assert [e["id"] for e in ab.read_events(str(path))] == list(range(2000))


# ------------------------------------------------------------------------------ analysis

def test_analysis_math_against_closed_form():
    # Fixed table: control 1000/10000 clicked, treatment 1100/10000.
    lift, low, high = analysis.relative_lift_ci(1100, 10000, 1000, 10000)
    se = math.sqrt((1 - 0.11) / 1100 + (1 - 0.10) / 1000)
    assert lift == pytest.approx(0.1, abs=1e-12)
    assert low == pytest.approx(1.1 * math.exp(-1.959963984540054 * se) - 1, rel=1e-12)
    assert high == pytest.approx(1.1 * math.exp(1.959963984540054 * se) - 1, rel=1e-12)
    assert low == pytest.approx(0.01439, abs=1e-4) and high == pytest.approx(0.19284, abs=1e-4)
    z, p = analysis.two_proportion_z_test(1100, 10000, 1000, 10000)
    z_ref = 0.01 / math.sqrt(0.105 * 0.895 * 2 / 10000)
    assert z == pytest.approx(z_ref, rel=1e-12) and z == pytest.approx(2.3066, abs=1e-4)
    assert p == pytest.approx(math.erfc(z_ref / math.sqrt(2)), rel=1e-9)
    assert p == pytest.approx(0.02108, abs=1e-5)
    # SRM with 2 degrees of freedom has the closed form p = exp(-chi2 / 2).
    srm = analysis.srm_check({"ta": 5000, "student": 3100, "mid": 1900},
                             {"ta": 0.5, "student": 0.3, "mid": 0.2})
    assert srm["chi2"] == pytest.approx(100**2 / 3000 + 100**2 / 2000, rel=1e-12)
    assert srm["p_value"] == pytest.approx(math.exp(-srm["chi2"] / 2), rel=1e-9)
    assert srm["dof"] == 2 and not srm["mismatch"]
    assert analysis.srm_check({"a": 5400, "b": 4600}, {"a": 0.5, "b": 0.5})["mismatch"]
    lat = analysis.latency_percentiles(np.arange(1, 101, dtype=float))
    assert lat == {"p50": 50.5, "p95": pytest.approx(95.05), "p99": pytest.approx(99.01)}
    assert analysis.ctr(3, 12) == 0.25


def _events_for_table(table):
    events = []
    for arm, (n, clicked) in table.items():
        for i in range(n):
            rid = f"{arm}-{i}"
            events.append({"type": "exposure", "request_id": rid, "arm": arm,
                           "served_arm": arm, "fallback": False, "latency_ms": 1.0 + i % 7,
                           "n_items": 5})
            events.append({"type": "outcome", "request_id": rid, "arm": arm,
                           "clicked": int(i < clicked), "clicks": 2 * int(i < clicked)})
    return events


def test_summarize_and_report_files(tmp_path):
    table = {"ta": (2000, 200), "student": (1000, 130), "mid": (1000, 90)}
    report = analysis.summarize(_events_for_table(table), ["ta", "student", "mid"], "ta",
                                {"ta": 0.5, "student": 0.25, "mid": 0.25},
                                model_info={"ta": {"params": 1000}, "student": {"params": 10},
                                            "mid": {"params": 100}},
                                offline={"ta": {"auc": 0.8}, "student": {"auc": 0.75},
                                         "mid": {"auc": 0.77}})
    s = report["arms"]["student"]
    assert s["ctr"] == pytest.approx(0.13) and s["item_ctr"] == pytest.approx(260 / 5000)
    assert s["vs_control"]["lift"] == pytest.approx(0.3)
    assert s["vs_control"]["p_value"] == pytest.approx(
        analysis.two_proportion_z_test(130, 1000, 200, 2000)[1])
    assert report["srm"]["chi2"] == pytest.approx(0.0)
    lat_ref = np.percentile([1.0 + i % 7 for i in range(1000)], [50, 95, 99])
    assert s["latency_ms"]["p99"] == pytest.approx(lat_ref[2])
    paths = analysis.write_report(report, str(tmp_path))
    assert json.load(open(paths["json"]))["arms"]["mid"]["exposures"] == 1000
    html_text = open(paths["html"]).read()
    assert html_text.count("data:image/png;base64,") == 2  # lift chart + AUC-vs-cost chart
    with pytest.raises(ValueError, match="event 0 has arm 'zzz'"):
        analysis.summarize([{"type": "exposure", "arm": "zzz"}], ["ta"], "ta", {"ta": 1.0})


def test_design_effect_closed_forms():
    # One exposure per unit: the delta-method variance is the binomial one, deff = 1.
    clicked = np.array([1] * 300 + [0] * 700)
    assert analysis.ratio_delta_variance(clicked, np.ones(1000)) == pytest.approx(0.3 * 0.7 / 1000, rel=1e-12)
    assert analysis.design_effect(clicked, np.ones(1000)) == pytest.approx(1.0, rel=1e-12)
    # Units that see 4 lists and click all or none of them: 4 exposures carry the
    # information of one, so the variance is 4x the binomial one.
    assert analysis.design_effect(4 * clicked, np.full(1000, 4)) == pytest.approx(4.0, rel=1e-12)
    # deff scales the CI's log-ratio variance and the z-test's variance.
    lift, low, high = analysis.relative_lift_ci(1100, 10000, 1000, 10000, deff_t=4.0, deff_c=4.0)
    se = 2.0 * math.sqrt((1 - 0.11) / 1100 + (1 - 0.10) / 1000)
    assert low == pytest.approx(1.1 * math.exp(-1.959963984540054 * se) - 1, rel=1e-12)
    z4, _ = analysis.two_proportion_z_test(1100, 10000, 1000, 10000, deff_t=4.0, deff_c=4.0)
    z1, _ = analysis.two_proportion_z_test(1100, 10000, 1000, 10000)
    assert z4 == pytest.approx(z1 / 2.0, rel=1e-12)


def test_delta_variance_matches_monte_carlo_with_clustered_users():
    """float64 reference: the empirical variance of the CTR over 4,000 simulated experiments
    of 400 users with 1-8 lists each and a per-user click propensity (correlated outcomes)."""
    rng = np.random.default_rng(7)
    experiments, users = 4000, 400
    n = rng.integers(1, 9, size=(experiments, users)).astype(np.float64)
    propensity = rng.beta(0.6, 1.4, size=(experiments, users))
    c = rng.binomial(n.astype(np.int64), propensity).astype(np.float64)
    ctrs = c.sum(axis=1) / n.sum(axis=1)
    empirical = ctrs.var(ddof=1)
    delta = np.mean([analysis.ratio_delta_variance(c[i], n[i]) for i in range(experiments)])
    binomial = np.mean(ctrs * (1 - ctrs) / n.sum(axis=1))
    assert delta == pytest.approx(empirical, rel=0.08)
    assert empirical > 1.5 * binomial  # the naive variance would be far too small here
    deff = np.mean([analysis.design_effect(c[i], n[i]) for i in range(experiments)])
    assert deff == pytest.approx(empirical / binomial, rel=0.08)


def test_srm_counts_units_and_intervals_widen_for_repeated_units():
    events = []
    # Control: 200 users with one list each; treatment: 200 users with 3 lists each whose
    # outcomes are identical per user. Equal units, so no sample-ratio mismatch, although
    # the treatment has 3x the exposures.
    for arm, lists in (("control", 1), ("treat", 3)):
        for u in range(200):
            for k in range(lists):
                rid = f"{arm}-{u}-{k}"
                events.append({"type": "exposure", "request_id": rid, "unit_id": f"{arm}-user-{u}",
                               "arm": arm, "served_arm": arm, "fallback": False, "latency_ms": 1.0,
                               "n_items": 10})
                events.append({"type": "outcome", "request_id": rid, "arm": arm,
                               "clicked": int(u < (60 if arm == "control" else 70)), "clicks": 1})
    report = analysis.summarize(events, ["control", "treat"], "control", {"control": 0.5, "treat": 0.5})
    t = report["arms"]["treat"]
    assert (t["units"], t["exposures"]) == (200, 600)
    assert report["srm"]["chi2"] == pytest.approx(0.0) and not report["srm"]["mismatch"]
    assert t["design_effect"] == pytest.approx(3.0, rel=1e-12)
    assert report["arms"]["control"]["design_effect"] == pytest.approx(1.0, rel=1e-12)
    vc = t["vs_control"]
    assert (vc["lift"], vc["ci95_low"], vc["ci95_high"]) == pytest.approx(
        analysis.relative_lift_ci(210, 600, 60, 200, deff_t=3.0, deff_c=1.0), rel=1e-12)
    # The same clicks scored per exposure, as if independent, give a narrower interval.
    naive = analysis.relative_lift_ci(210, 600, 60, 200)
    assert vc["ci95_high"] - vc["ci95_low"] > naive[2] - naive[1]


def test_item_ctr_lift_accounts_for_clicks_within_a_list():
    """Item CTR: each list shows 5 items and a clicked list has 2 item clicks, so item
    outcomes are correlated within a list. Closed form of the design effect for a fraction
    q of clicked lists: deff = 10 (1 - q) / (5 - 2 q)."""
    table = {"ta": (2000, 200), "student": (1000, 130)}
    report = analysis.summarize(_events_for_table(table), ["ta", "student"], "ta",
                                {"ta": 2 / 3, "student": 1 / 3})
    s, t = report["arms"]["student"], report["arms"]["ta"]
    assert s["item_ctr"] == pytest.approx(260 / 5000)
    assert s["item_design_effect"] == pytest.approx(10 * 0.87 / (5 - 0.26), rel=1e-12)
    assert t["item_design_effect"] == pytest.approx(10 * 0.9 / (5 - 0.2), rel=1e-12)
    item = s["vs_control"]["item"]
    deffs = {"deff_t": 10 * 0.87 / 4.74, "deff_c": 10 * 0.9 / 4.8}
    assert (item["lift"], item["ci95_low"], item["ci95_high"]) == pytest.approx(
        analysis.relative_lift_ci(260, 5000, 400, 10000, **deffs), rel=1e-9)
    assert item["p_value"] == pytest.approx(
        analysis.two_proportion_z_test(260, 5000, 400, 10000, **deffs)[1], rel=1e-9)
    assert item["lift"] == pytest.approx(0.3)
