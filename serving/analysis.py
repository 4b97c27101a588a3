"""Experiment analysis for `matta ab report`: CTR, lift, tests, SRM, latency, cost.

Two metrics per arm: CTR = exposures (ranked lists shown) with at least one click /
exposures, and item CTR = item clicks / items shown, which also rewards putting more
relevant items where they are seen. Several clicks in one list, like several lists of
one user, are not independent; the per-unit variance below covers both. Exposures stay
with the *assigned* arm even when a fallback served them (intention-to-treat).

Randomisation is by unit (`unit_id`, e.g. a user: sticky assignment), and one unit
usually sees several exposures, whose outcomes are correlated. Treating the exposures as
independent Bernoulli trials would then understate the variance and flag differences that
are noise. So each arm's CTR variance is the delta-method variance of a ratio of per-unit
sums (Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics", KDD 2018):
with c_u clicked exposures and n_u exposures of unit u among N units, p = sum c / sum n,

    Var(p) = mean_u((c_u - p n_u)^2) / (N * mean_u(n_u)^2),

expressed as a design effect deff = Var(p) / (p (1 - p) / sum n) (Kish): deff = 1 exactly
when every unit has one exposure, and the formulas below reduce to the textbook binomial
ones. With p_t = c_t / n_t (treatment), p_c = c_c / n_c (control) - exposures for CTR,
items for item CTR:

* relative lift  L = p_t / p_c - 1.
* 95% CI for L: delta method on the log ratio (Katz et al. 1978),
      se(log R) = sqrt(deff_t (1 - p_t) / c_t + deff_c (1 - p_c) / c_c),
      CI = exp(log R -/+ z_{0.975} se) - 1,
  which, unlike the linear delta method, stays inside (-1, inf) and is asymmetric like
  the sampling distribution of a ratio.
* two-sided p-value: pooled two-proportion z-test, variances scaled by the design effects,
      p = (c_t + c_c) / (n_t + n_c),  z = (p_t - p_c) / sqrt(p (1 - p) (deff_t/n_t + deff_c/n_c)),
      p-value = 2 (1 - Phi(|z|)).
* sample-ratio mismatch: Pearson chi-square of the *unit* counts (what was randomised)
  against the configured weights (`scipy.stats.chisquare`, k - 1 degrees of freedom);
  flagged at p < 0.001. (Exposure counts are not independent draws when units repeat.)
* latency p50/p95/p99: `numpy.percentile` (linear interpolation) of the router's
  end-to-end latency per exposure.

Exposures without a `unit_id` count as units of their own.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

Z_975 = 1.959963984540054
SRM_ALPHA = 0.001


def ctr(clicks: int, exposures: int) -> float:
    return clicks / exposures if exposures else float("nan")


def ratio_delta_variance(clicks_per_unit: Sequence[float], exposures_per_unit: Sequence[float]) -> float:
    """Var(sum c / sum n) over iid units by the delta method (population moments)."""
    c = np.asarray(clicks_per_unit, dtype=np.float64)
    n = np.asarray(exposures_per_unit, dtype=np.float64)
    if c.size == 0 or n.sum() <= 0:
        return float("nan")
    p = c.sum() / n.sum()
    return float(np.mean((c - p * n) ** 2) / (c.size * n.mean() ** 2))


def design_effect(clicks_per_unit: Sequence[float], exposures_per_unit: Sequence[float]) -> float:
    """Delta-method variance of the CTR over its binomial variance (1 = independent exposures)."""
    n_total = float(np.sum(exposures_per_unit))
    p = float(np.sum(clicks_per_unit)) / n_total if n_total > 0 else float("nan")
    if not 0.0 < p < 1.0:
        return 1.0
    return ratio_delta_variance(clicks_per_unit, exposures_per_unit) / (p * (1.0 - p) / n_total)


def relative_lift_ci(c_t: int, n_t: int, c_c: int, n_c: int, z: float = Z_975,
                     deff_t: float = 1.0, deff_c: float = 1.0) -> tuple[float, float, float]:
    """(lift, low, high) of p_t/p_c - 1 with the log-ratio delta-method interval."""
    if min(n_t, n_c) <= 0 or c_c <= 0:
        return float("nan"), float("nan"), float("nan")
    p_t, p_c = c_t / n_t, c_c / n_c
    lift = p_t / p_c - 1.0
    if c_t <= 0:
        return lift, float("nan"), float("nan")
    se = math.sqrt(deff_t * (1.0 - p_t) / c_t + deff_c * (1.0 - p_c) / c_c)
    log_r = math.log(p_t / p_c)
    return lift, math.exp(log_r - z * se) - 1.0, math.exp(log_r + z * se) - 1.0


def two_proportion_z_test(c_t: int, n_t: int, c_c: int, n_c: int,
                          deff_t: float = 1.0, deff_c: float = 1.0) -> tuple[float, float]:
    """(z, two-sided p-value) of the pooled two-proportion z-test (design-effect scaled)."""
    from scipy import stats

    if min(n_t, n_c) <= 0:
        return float("nan"), float("nan")
    pooled = (c_t + c_c) / (n_t + n_c)
    var = pooled * (1.0 - pooled) * (deff_t / n_t + deff_c / n_c)
    if var <= 0:
        return 0.0, 1.0
    z = (c_t / n_t - c_c / n_c) / math.sqrt(var)
    return z, float(2.0 * stats.norm.sf(abs(z)))


def srm_check(observed: Mapping[str, int], shares: Mapping[str, float]) -> dict:
    """Chi-square goodness of fit of unit counts to the configured traffic shares."""
    from scipy import stats

    arms = [a for a in shares if shares[a] > 0]
    counts = np.array([observed.get(a, 0) for a in arms], dtype=np.float64)
    total = counts.sum()
    if total == 0 or len(arms) < 2:
        return {"chi2": float("nan"), "p_value": float("nan"), "mismatch": False, "dof": 0}
    expected = np.array([shares[a] for a in arms]) / sum(shares[a] for a in arms) * total
    chi2, p = stats.chisquare(counts, expected)
    return {"chi2": float(chi2), "p_value": float(p), "dof": len(arms) - 1,
            "mismatch": bool(p < SRM_ALPHA),
            "observed": {a: int(c) for a, c in zip(arms, counts, strict=True)},
            "expected": {a: float(e) for a, e in zip(arms, expected, strict=True)}}


def latency_percentiles(values_ms: Sequence[float]) -> dict:
    if len(values_ms) == 0:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    p50, p95, p99 = np.percentile(np.asarray(values_ms, dtype=np.float64), [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def summarize(events: Sequence[Mapping[str, Any]], arms: Sequence[str], control: str,
              shares: Mapping[str, float], model_info: Mapping[str, Mapping] | None = None,
              offline: Mapping[str, Mapping] | None = None) -> dict:
    """Per-arm metrics and comparisons vs control from exposure/outcome events."""
    if control not in arms:
        raise ValueError(f"control arm {control!r} is not one of {list(arms)}")
    exposures: dict[str, dict] = {}
    outcomes: dict[str, dict] = {}
    for i, e in enumerate(events):
        kind = e.get("type")
        arm = e.get("arm")
        if arm not in arms:
            raise ValueError(f"event {i} has arm {arm!r}, not one of {list(arms)}")
        if kind == "exposure":
            if e.get("served_arm") is None:  # the request failed: no ranking was shown
                continue
            exposures[e["request_id"]] = e
        elif kind == "outcome":
            outcomes[e["request_id"]] = e
        else:
            raise ValueError(f"event {i} has unknown type {kind!r}")
    per_arm: dict[str, dict] = {}
    for arm in arms:
        exp = [e for e in exposures.values() if e["arm"] == arm]
        out = [outcomes[e["request_id"]] for e in exp if e["request_id"] in outcomes]
        n = len(exp)
        clicked = sum(int(o.get("clicked", 0)) for o in out)
        item_clicks = sum(int(o.get("clicks", 0)) for o in out)
        items = sum(int(e.get("n_items", 0)) for e in exp)
        # unit -> [clicked exposures, exposures, item clicks, items shown]
        by_unit: dict[str, list[int]] = {}
        for e in exp:
            o = outcomes.get(e["request_id"], {})
            tally = by_unit.setdefault(str(e.get("unit_id") or "request:" + str(e["request_id"])),
                                       [0, 0, 0, 0])
            tally[0] += int(o.get("clicked", 0))
            tally[1] += 1
            tally[2] += int(o.get("clicks", 0))
            tally[3] += int(e.get("n_items", 0))
        units = np.array(list(by_unit.values()), dtype=np.float64).reshape(-1, 4)
        per_arm[arm] = {
            "exposures": n, "units": len(by_unit), "clicked_exposures": clicked, "ctr": ctr(clicked, n),
            "design_effect": design_effect(units[:, 0], units[:, 1]),
            "item_clicks": item_clicks, "items_shown": items,
            "item_ctr": ctr(item_clicks, items),
            "item_design_effect": design_effect(units[:, 2], units[:, 3]),
            "fallbacks": sum(1 for e in exp if e.get("fallback")),
            "missing_outcomes": n - len(out),
            "latency_ms": latency_percentiles([float(e["latency_ms"]) for e in exp]),
            "model": dict((model_info or {}).get(arm, {})),
            "offline": dict((offline or {}).get(arm, {})),
        }
    c = per_arm[control]
    for arm in arms:
        if arm == control:
            continue
        t = per_arm[arm]
        counts = (t["clicked_exposures"], t["exposures"], c["clicked_exposures"], c["exposures"])
        deffs = {"deff_t": t["design_effect"], "deff_c": c["design_effect"]}
        lift, low, high = relative_lift_ci(*counts, **deffs)
        z, p = two_proportion_z_test(*counts, **deffs)
        t["vs_control"] = {"lift": lift, "ci95_low": low, "ci95_high": high, "z": z,
                           "p_value": p}
        counts = (t["item_clicks"], t["items_shown"], c["item_clicks"], c["items_shown"])
        deffs = {"deff_t": t["item_design_effect"], "deff_c": c["item_design_effect"]}
        lift, low, high = relative_lift_ci(*counts, **deffs)
        z, p = two_proportion_z_test(*counts, **deffs)
        t["vs_control"]["item"] = {"lift": lift, "ci95_low": low, "ci95_high": high, "z": z,
                                   "p_value": p}
    return {
        "control": control,
        "arms": per_arm,
        "srm": srm_check({a: per_arm[a]["units"] for a in arms}, shares),
        "total_exposures": sum(per_arm[a]["exposures"] for a in arms),
        "failed_requests": sum(1 for e in events
                               if e.get("type") == "exposure" and e.get("served_arm") is None),
    }


# ------------------------------------------------------------------------------ rendering

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_charts(report: Mapping) -> dict[str, str]:
    """Base64 PNGs: lift with 95% CI bars; offline AUC vs latency and vs parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = {}
    arms = report["arms"]
    treated = [a for a in arms if "vs_control" in arms[a]]
    fig, ax = plt.subplots(figsize=(5, 3))
    lifts = [arms[a]["vs_control"]["lift"] * 100 for a in treated]
    lows = [arms[a]["vs_control"]["ci95_low"] * 100 for a in treated]
    highs = [arms[a]["vs_control"]["ci95_high"] * 100 for a in treated]
    err = np.array([[max(0.0, mid - lo) if np.isfinite(lo) else 0 for mid, lo in
                     zip(lifts, lows, strict=True)],
                    [max(0.0, hi - mid) if np.isfinite(hi) else 0 for mid, hi in
                     zip(lifts, highs, strict=True)]])
    ax.bar(treated, lifts, yerr=err, capsize=6, color="#4c72b0")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(f"CTR lift vs {report['control']} (%)")
    ax.set_title("Relative lift with 95% CI")
    charts["lift"] = _png(fig)
    plt.close(fig)

    points = [(a, arms[a]["offline"].get("auc"), arms[a]["latency_ms"]["p50"],
               arms[a]["model"].get("params")) for a in arms]
    points = [p for p in points if p[1] is not None]
    if points:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, idx, xlabel in ((axes[0], 2, "serving latency p50 (ms)"),
                                (axes[1], 3, "parameters")):
            for p in points:
                if p[idx] is None:
                    continue
                ax.scatter(p[idx], p[1], color="#dd8452")
                ax.annotate(p[0], (p[idx], p[1]), textcoords="offset points", xytext=(4, 4))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("offline AUC")
        axes[1].set_xscale("log")
        fig.suptitle("Offline AUC vs serving cost per student")
        charts["auc_cost"] = _png(fig)
        plt.close(fig)
    return charts


def _fmt(x, pct=False, digits=4):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x * 100:.2f}%" if pct else f"{x:.{digits}g}"
    return html.escape(str(x))


def render_html(report: Mapping, title: str = "A/B experiment report") -> str:
    charts = render_charts(report)
    rows = []
    for arm, m in report["arms"].items():
        vc = m.get("vs_control", {})
        vci = vc.get("item", {})

        def ci(v):
            return f"[{_fmt(v.get('ci95_low'), True)}, {_fmt(v.get('ci95_high'), True)}]" if v else "control"

        rows.append(
            "<tr>" + "".join(f"<td>{c}</td>" for c in [
                html.escape(arm), m["units"], m["exposures"], m["clicked_exposures"], _fmt(m["ctr"], True),
                _fmt(m["design_effect"]),
                _fmt(vc.get("lift"), True) if vc else "-", ci(vc),
                _fmt(vc.get("p_value")) if vc else "-",
                _fmt(m["item_ctr"], True), _fmt(vci.get("lift"), True) if vci else "-", ci(vci),
                _fmt(vci.get("p_value")) if vci else "-", m["fallbacks"],
                _fmt(m["latency_ms"]["p50"]), _fmt(m["latency_ms"]["p95"]),
                _fmt(m["latency_ms"]["p99"]), _fmt(m["model"].get("params")),
                _fmt(m["offline"].get("auc"))]) + "</tr>")
    srm = report["srm"]
    srm_text = (f"chi2 = {_fmt(srm['chi2'])}, p = {_fmt(srm['p_value'])} "
                f"({'SAMPLE RATIO MISMATCH: do not trust the comparison' if srm['mismatch'] else 'no mismatch at p < 0.001'})")
    images = "".join(f'<p><img alt="{k}" src="data:image/png;base64,{v}"/></p>'
                     for k, v in charts.items())
    head = ["arm", "units", "exposures", "clicked", "CTR", "design effect", "lift", "95% CI", "p-value",
            "item CTR", "item lift", "item 95% CI", "item p-value", "fallbacks",
            "p50 ms", "p95 ms", "p99 ms", "params", "offline AUC"]
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Control arm: <b>{html.escape(report['control'])}</b>. Total exposures:
{report['total_exposures']}; failed requests: {report['failed_requests']}.</p>
<p>Sample-ratio check (units, i.e. what was randomised): {srm_text}.</p>
<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{''.join(rows)}</table>
<p>CTR = exposures with at least one click / exposures. Variances account for units that
saw several lists (delta method for a ratio of per-unit sums, as a design effect; 1 = every
unit one list). Lift CI: delta method on the log ratio; p-value: pooled two-proportion
z-test (two-sided) with design-effect-scaled variances.</p>
{images}
</body></html>
"""


def write_report(report: Mapping, out_dir: str, title: str = "A/B experiment report") -> dict:
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "ab_report.json")
    html_path = os.path.join(out_dir, "ab_report.html")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2, allow_nan=True)
    with open(html_path, "w") as f:
        f.write(render_html(report, title))
    return {"json": json_path, "html": html_path}


def savedmodel_size(saved_model_dir: str) -> dict:
    """Parameter count (from the variables checkpoint) and bytes on disk of a SavedModel."""
    import tensorflow as tf

    params = 0
    prefix = os.path.join(saved_model_dir, "variables", "variables")
    if os.path.exists(prefix + ".index"):
        for name, shape in tf.train.list_variables(prefix):
            if name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH") or "OPTIMIZER_SLOT" in name \
                    or "save_counter" in name:
                continue
            params += int(np.prod(shape)) if shape else 1
    size = 0
    for root, _, files in os.walk(saved_model_dir):
        size += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return {"params": params, "bytes_on_disk": size}
