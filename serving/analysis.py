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
  end-to-end latency per exposure; p50 and p99 get a distribution-free 95% interval from
  order statistics: with B ~ Binomial(n, q) the number of observations at or below the
  true q-quantile, the interval [x_(l), x_(u)] (1-based ranks of the sorted sample) with
  l - 1 = the largest k with P(B <= k) <= 0.025 and u - 1 = the smallest k with
  P(B <= k) >= 0.975 covers it with probability >= 95% (e.g. n = 100, q = 0.5: ranks 40
  and 61). A bound the sample cannot give (p99 needs n >~ 300 for an upper one) is null.
  This treats exposures' latencies as independent draws; concurrent requests share the
  server, so read it as a lower bound on the uncertainty.
* minimum detectable effect (MDE), per treatment arm vs control, at the observed traffic
  (n_t, n_c, design effects) and the control's rate p_c: the smallest increase d that the
  z-test above detects with 80% power at two-sided level a,
      power(d) = Phi((d - z_{1-a/2} s0) / s1) + Phi((-d - z_{1-a/2} s0) / s1) = 0.80,
      s0^2 = q (1 - q) (deff_t / n_t + deff_c / n_c),  q = (n_t (p_c + d) + n_c p_c) / (n_t + n_c),
      s1^2 = deff_t (p_c + d) (1 - p_c - d) / n_t + deff_c p_c (1 - p_c) / n_c,
  solved numerically (the test's variance differs under the null and the alternative);
  it is close to the textbook (z_{1-a/2} + z_{0.80}) sqrt(p_c (1 - p_c) (deff_t / n_t +
  deff_c / n_c)), which is a few percent smaller (2.6% at p_c = 0.1 and 10,000 lists per
  arm; at it the test's power is 78%, not 80%). MDE_rel = d / p_c. The level
  is a = 0.05 / m (m treatment arms: the Bonferroni level, i.e. the strictest Holm step,
  so it is conservative). No post-hoc ("observed") power is reported: it is a function of
  the p-value and adds nothing to it.

Decision (the report's first line; `decide`), in this order:
1. "inconclusive: sample ratio mismatch" when the SRM check above flags the unit counts
   (and its chi-square is valid: every expected count >= 5);
2. "not enough data" when an arm has fewer than MIN_UNITS_PER_ARM units, or fewer than
   MIN_OUTCOMES_PER_ARM clicked or unclicked exposures (normal approximations);
3. a winner: primary metric = CTR (the unit-level, delta-method test above); each
   treatment arm's two-sided p-value vs control is Holm-adjusted over the m treatment
   arms (family-wise error 0.05); arms with adjusted p < 0.05 and a positive lift are
   significantly better, and the one with the largest lift wins (the text names the
   others). Its cost (parameters, multiply-adds per example when known) is stated;
4. otherwise "no significant difference - keep the cheapest": among the control and the
   arms not significantly worse, the one with the fewest multiply-adds per example
   (parameters when multiply-adds are unknown); without model sizes (no models.config)
   it keeps the control and says so.
Item CTR is secondary: reported with its own CI, p-value and MDE, not used to decide.

Offline metrics are labelled with the data they were computed on (`offline_data` in the
JSON): `matta ab simulate` scores the replayed log, which is not the pipeline's TFMA eval
split, so the two AUCs differ.

The JSON holds no NaN or infinity: undefined values are null (written with
`allow_nan=False`).

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
ALPHA = 0.05  # family-wise, two-sided, over the treatment arms vs control (Holm)
POWER = 0.80  # for the minimum detectable effect
MIN_UNITS_PER_ARM = 100
MIN_OUTCOMES_PER_ARM = 10  # clicked and unclicked exposures, each, per arm
DECISION_RULE = (
    "Primary metric: CTR (lists with a click / lists shown), tested per unit (delta "
    "method). A treatment arm wins when its two-sided z-test p-value vs control, "
    f"Holm-adjusted over the treatment arms, is below {ALPHA} and its lift is positive; "
    "among several winners the largest lift. No winner: keep the cheapest of the control "
    "and the arms not significantly worse (multiply-adds per example, else parameters). "
    f"Checked first: sample ratio mismatch (p < {SRM_ALPHA}) makes the result inconclusive; "
    f"fewer than {MIN_UNITS_PER_ARM} units or {MIN_OUTCOMES_PER_ARM} clicked/unclicked "
    "lists in an arm is not enough data.")


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


def quantile_ci(values: Sequence[float], q: float, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the q-quantile from order statistics (see the module doc).

    NaN for a bound the sample is too small to give."""
    from scipy import stats

    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    cdf = stats.binom.cdf(np.arange(n + 1), n, q)
    below = np.flatnonzero(cdf <= tail)  # candidates for l - 1
    above = np.flatnonzero(cdf >= 1.0 - tail)  # candidates for u - 1
    low = float(x[below.max()]) if below.size else float("nan")  # x_(l), l = max + 1 (1-based)
    u = int(above.min()) + 1 if above.size else n + 1
    high = float(x[u - 1]) if u <= n else float("nan")
    return low, high


def latency_summary(values_ms: Sequence[float]) -> tuple[dict, dict]:
    """(p50/p95/p99, 95% order-statistic intervals of p50 and p99)."""
    return latency_percentiles(values_ms), {
        f"p{int(q * 100)}": list(quantile_ci(values_ms, q)) for q in (0.5, 0.99)}


def rate_ci(clicks_per_unit: Sequence[float], exposures_per_unit: Sequence[float],
            z: float = Z_975) -> list[float]:
    """Normal 95% interval of an arm's rate with the per-unit (delta-method) variance."""
    n = float(np.sum(exposures_per_unit))
    if n <= 0:
        return [float("nan"), float("nan")]
    p = float(np.sum(clicks_per_unit)) / n
    se = math.sqrt(max(ratio_delta_variance(clicks_per_unit, exposures_per_unit), 0.0))
    return [max(0.0, p - z * se), min(1.0, p + z * se)]


def power_two_proportion(delta: float, p_c: float, n_t: float, n_c: float, deff_t: float = 1.0,
                         deff_c: float = 1.0, alpha: float = ALPHA) -> float:
    """Power of the pooled two-sided z-test (`two_proportion_z_test`) when the treatment's
    rate is p_c + delta (see the module doc for the formula)."""
    from scipy import stats

    p_t = p_c + delta
    pooled = (n_t * p_t + n_c * p_c) / (n_t + n_c)
    s0 = math.sqrt(pooled * (1.0 - pooled) * (deff_t / n_t + deff_c / n_c))
    s1 = math.sqrt(deff_t * p_t * (1.0 - p_t) / n_t + deff_c * p_c * (1.0 - p_c) / n_c)
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    return float(stats.norm.cdf((delta - z * s0) / s1) + stats.norm.cdf((-delta - z * s0) / s1))


def minimum_detectable_effect(p_c: float, n_t: int, n_c: int, deff_t: float = 1.0,
                              deff_c: float = 1.0, alpha: float = ALPHA,
                              power: float = POWER) -> tuple[float, float]:
    """(absolute, relative) smallest CTR increase over the control's rate p_c that the
    two-sided level-`alpha` test detects with `power` (see the module doc); NaN when
    undefined or when no increase up to a rate of 1 is detectable."""
    from scipy import optimize

    if min(n_t, n_c) <= 0 or not 0.0 < p_c < 1.0 or not max(deff_t, deff_c) > 0:
        return float("nan"), float("nan")  # no traffic, a degenerate rate or zero variance

    def gap(delta):
        return power_two_proportion(delta, p_c, n_t, n_c, deff_t, deff_c, alpha) - power

    high = (1.0 - p_c) * (1.0 - 1e-12)
    if gap(high) < 0:
        return float("nan"), float("nan")
    mde = float(optimize.brentq(gap, 0.0, high, xtol=1e-14, rtol=1e-12))
    return mde, mde / p_c


def holm_adjust(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (family-wise error control over all given tests;
    an undefined p-value counts as a test and stays undefined)."""
    m = len(p_values)
    finite = sorted((p, k) for k, p in p_values.items() if p is not None and math.isfinite(p))
    adjusted = {k: float("nan") for k in p_values}
    running = 0.0
    for i, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[k] = running
    return adjusted


def json_safe(obj):
    """`obj` with NaN/inf floats as None and numpy scalars as Python numbers (for JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def summarize(events: Sequence[Mapping[str, Any]], arms: Sequence[str], control: str,
              shares: Mapping[str, float], model_info: Mapping[str, Mapping] | None = None,
              offline: Mapping[str, Mapping] | None = None,
              offline_data: Mapping[str, Any] | None = None,
              unreadable_lines: int | None = None) -> dict:
    """Per-arm metrics, comparisons vs control and the decision, from exposure/outcome events.

    `offline_data` describes the data `offline` was computed on; `unreadable_lines` is the
    number of event-log lines the reader skipped (None: not known). Raises ValueError when
    there is nothing to analyse (no events, or no request that was served). Undefined
    values are None, never NaN."""
    if control not in arms:
        raise ValueError(f"control arm {control!r} is not one of {list(arms)}")
    if not events:
        raise ValueError("no events to analyse")
    exposures: dict[str, dict] = {}
    outcomes: dict[str, dict] = {}
    failed = 0
    for i, e in enumerate(events):
        kind = e.get("type")
        arm = e.get("arm")
        if arm not in arms:
            raise ValueError(f"event {i} has arm {arm!r}, not one of {list(arms)}")
        if kind == "exposure":
            if e.get("served_arm") is None:  # the request failed: no ranking was shown
                failed += 1
                continue
            exposures[e["request_id"]] = e
        elif kind == "outcome":
            outcomes[e["request_id"]] = e
        else:
            raise ValueError(f"event {i} has unknown type {kind!r}")
    if not exposures:
        raise ValueError(f"no served exposures among {len(events)} events "
                         f"({failed} failed requests): nothing to analyse")
    per_arm: dict[str, dict] = {}
    unit_tallies: dict[str, np.ndarray] = {}
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
        unit_tallies[arm] = units
        latency, latency_ci = latency_summary([float(e["latency_ms"]) for e in exp])
        per_arm[arm] = {
            "exposures": n, "units": len(by_unit), "clicked_exposures": clicked, "ctr": ctr(clicked, n),
            "ctr_ci95": rate_ci(units[:, 0], units[:, 1]),
            "design_effect": design_effect(units[:, 0], units[:, 1]),
            "item_clicks": item_clicks, "items_shown": items,
            "item_ctr": ctr(item_clicks, items),
            "item_ctr_ci95": rate_ci(units[:, 2], units[:, 3]),
            "item_design_effect": design_effect(units[:, 2], units[:, 3]),
            "fallbacks": sum(1 for e in exp if e.get("fallback")),
            "missing_outcomes": n - len(out),
            "latency_ms": latency,
            "latency_ms_ci95": latency_ci,
            "model": dict((model_info or {}).get(arm, {})),
            "offline": dict((offline or {}).get(arm, {})),
        }
    c = per_arm[control]
    treated = [a for a in arms if a != control]
    mde_alpha = ALPHA / max(1, len(treated))
    for arm in treated:
        t = per_arm[arm]
        for key, (ct, nt, cc, nc, dt, dc) in (
                ("ctr", ("clicked_exposures", "exposures", "clicked_exposures", "exposures",
                         "design_effect", "design_effect")),
                ("item", ("item_clicks", "items_shown", "item_clicks", "items_shown",
                          "item_design_effect", "item_design_effect"))):
            counts = (t[ct], t[nt], c[cc], c[nc])
            deffs = {"deff_t": t[dt], "deff_c": c[dc]}
            lift, low, high = relative_lift_ci(*counts, **deffs)
            z, p = two_proportion_z_test(*counts, **deffs)
            mde_abs, mde_rel = minimum_detectable_effect(
                c["ctr" if key == "ctr" else "item_ctr"], t[nt], c[nc], alpha=mde_alpha, **deffs)
            result = {"lift": lift, "ci95_low": low, "ci95_high": high, "z": z, "p_value": p,
                      "mde_abs": mde_abs, "mde_rel": mde_rel}
            if key == "ctr":
                t["vs_control"] = result
            else:
                t["vs_control"]["item"] = result
    holm = holm_adjust({a: per_arm[a]["vs_control"]["p_value"] for a in treated})
    for arm in treated:
        vc = per_arm[arm]["vs_control"]
        vc["p_holm"] = holm[arm]
        vc["significant"] = bool(math.isfinite(holm[arm]) and holm[arm] < ALPHA)
    srm = srm_check({a: per_arm[a]["units"] for a in arms}, shares)
    report = {
        "decision": None,  # first key of the JSON; filled in below
        "control": control,
        "arms": per_arm,
        "srm": srm,
        "total_exposures": sum(per_arm[a]["exposures"] for a in arms),
        "failed_requests": failed,
        "unreadable_lines": unreadable_lines,
        "offline_data": dict(offline_data) if offline_data else (
            {"label": "offline metrics: data not stated"} if offline else None),
        "methods": {
            "alpha": ALPHA, "correction": "holm", "power": POWER, "mde_alpha": mde_alpha,
            "min_units_per_arm": MIN_UNITS_PER_ARM,
            "min_outcomes_per_arm": MIN_OUTCOMES_PER_ARM, "srm_alpha": SRM_ALPHA,
            "latency_ci": "95% distribution-free order-statistic interval (binomial ranks)",
        },
    }
    report["decision"] = decide(report)
    return json_safe(report)


# ------------------------------------------------------------------------------ decision

def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x, digits=1, sign=True) -> str:
    return f"{x * 100:{'+' if sign else ''}.{digits}f}%" if _finite(x) else "-"


def _num(x) -> str:
    if not _finite(x):
        return "-"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:.4g}"


def arm_cost(m: Mapping) -> dict:
    """An arm's serving cost from its model info: params and multiply-adds (None if unknown)."""
    model = m.get("model") or {}
    return {"params": model.get("params"), "madds_per_example": model.get("madds_per_example")}


def _cost_text(m: Mapping, ref: Mapping | None = None, ref_name: str | None = None) -> str:
    cost, parts = arm_cost(m), []
    for key, unit in (("params", "params"), ("madds_per_example", "multiply-adds/example")):
        v = cost[key]
        if not _finite(v):
            continue
        text = f"{_num(v)} {unit}"
        r = arm_cost(ref)[key] if ref is not None else None
        if _finite(r) and r > 0:
            text += f" ({v / r:.2f}x {ref_name})"
        parts.append(text)
    return ", ".join(parts)


def _cheapest(report: Mapping, candidates: Sequence[str]) -> tuple[str | None, str | None]:
    """(cheapest arm, the cost key used) among `candidates`, or (None, None) if unknown."""
    arms = report["arms"]
    for key in ("madds_per_example", "params"):
        costs = {a: arm_cost(arms[a])[key] for a in candidates}
        if costs and all(_finite(v) for v in costs.values()):
            return min(candidates, key=lambda a: (costs[a], a != report["control"])), key
    return None, None


def decide(report: Mapping) -> dict:
    """The experiment's answer by the rule in the module doc: a dict with `outcome`
    (winner | no_difference | srm | not_enough_data | no_comparison), `arm`, `text`, `rule`."""
    control, arms, srm = report["control"], report["arms"], report["srm"]
    treated = [a for a in arms if a != control]
    out = {"outcome": None, "arm": None, "text": "", "rule": DECISION_RULE}
    if not treated:
        return {**out, "outcome": "no_comparison", "arm": control,
                "text": f"nothing to compare: the experiment has only the control arm ({control})"}
    expected = (srm.get("expected") or {}).values()
    if srm.get("mismatch") and expected and min(expected) >= 5:
        return {**out, "outcome": "srm",
                "text": (f"inconclusive: sample ratio mismatch (units chi2 = {srm['chi2']:.1f}, "
                         f"p = {srm['p_value']:.2g} < {SRM_ALPHA}) - the assignment or the "
                         "logging is broken, so the lifts cannot be trusted")}
    short = []
    for a, m in arms.items():
        clicked, n = m["clicked_exposures"], m["exposures"]
        if m["units"] < MIN_UNITS_PER_ARM:
            short.append(f"{a} has {m['units']} units")
        elif min(clicked, n - clicked) < MIN_OUTCOMES_PER_ARM:
            short.append(f"{a} has {clicked} clicked and {n - clicked} unclicked lists")
    if short:
        return {**out, "outcome": "not_enough_data",
                "text": (f"not enough data: {'; '.join(short)} (need >= {MIN_UNITS_PER_ARM} "
                         f"units and >= {MIN_OUTCOMES_PER_ARM} clicked and unclicked lists "
                         "per arm)")}
    better = [a for a in treated if arms[a]["vs_control"].get("significant")
              and _finite(arms[a]["vs_control"].get("lift")) and arms[a]["vs_control"]["lift"] > 0]
    if better:
        best = max(better, key=lambda a: arms[a]["vs_control"]["lift"])
        vc = arms[best]["vs_control"]
        text = (f"winner: {best} - CTR {_pct(vc['lift'])} vs {control} (95% CI "
                f"{_pct(vc['ci95_low'])} to {_pct(vc['ci95_high'])}, Holm-adjusted "
                f"p = {vc['p_holm']:.2g})")
        cost = _cost_text(arms[best], arms[control], control)
        text += f"; costs {cost}" if cost else "; cost unknown (give --model-config)"
        others = [a for a in better if a != best]
        if others:
            text += f"; also significantly better: {', '.join(others)}"
        return {**out, "outcome": "winner", "arm": best, "text": text,
                "lift": vc["lift"], "ci95": [vc["ci95_low"], vc["ci95_high"]],
                "p_holm": vc["p_holm"], "cost": arm_cost(arms[best])}
    worse = [a for a in treated if arms[a]["vs_control"].get("significant")]
    candidates = [control] + [a for a in treated if a not in worse]
    cheapest, key = _cheapest(report, candidates)
    head = ("no significant difference" if not worse else
            f"no significant improvement ({', '.join(worse)} significantly worse)")
    if cheapest is not None:
        text = f"{head} - keep the cheapest ({cheapest}: {_cost_text(arms[cheapest])})"
    else:
        cheapest = control
        text = (f"{head} - keep the cheapest; arm costs unknown (give --model-config), so "
                f"keep the control ({control})")
    mdes = [arms[a]["vs_control"].get("mde_rel") for a in treated]
    mdes = [x for x in mdes if _finite(x)]
    if mdes:
        span = (_pct(min(mdes), sign=False) if max(mdes) - min(mdes) < 0.0005 else
                f"{_pct(min(mdes), sign=False)}-{_pct(max(mdes), sign=False)}")
        text += f"; 80% power to detect CTR lifts of {span} or more"
    return {**out, "outcome": "no_difference", "arm": cheapest, "text": text,
            "cost": arm_cost(arms[cheapest]), "cost_key": key}


# ------------------------------------------------------------------------------ rendering

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def offline_label(report: Mapping) -> str | None:
    data = report.get("offline_data")
    return data.get("label") if data else None


def render_charts(report: Mapping) -> dict[str, str]:
    """Base64 PNGs: lift with 95% CI bars; offline AUC vs latency and vs parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = {}
    arms = report["arms"]
    treated = [a for a in arms if "vs_control" in arms[a]]
    fig, ax = plt.subplots(figsize=(5, 3))
    vcs = [arms[a]["vs_control"] for a in treated]
    lifts = [v["lift"] * 100 if _finite(v["lift"]) else 0.0 for v in vcs]
    err = np.array([[max(0.0, mid - v["ci95_low"] * 100) if _finite(v["ci95_low"]) else 0
                     for mid, v in zip(lifts, vcs, strict=True)],
                    [max(0.0, v["ci95_high"] * 100 - mid) if _finite(v["ci95_high"]) else 0
                     for mid, v in zip(lifts, vcs, strict=True)]]).reshape(2, -1)
    ax.bar(treated, lifts, yerr=err, capsize=6, color="#4c72b0")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(f"CTR lift vs {report['control']} (%)")
    ax.set_title("Relative lift with 95% CI")
    charts["lift"] = _png(fig)
    plt.close(fig)

    points = [(a, arms[a]["offline"].get("auc"), arms[a]["latency_ms"]["p50"],
               arms[a]["model"].get("params")) for a in arms]
    points = [p for p in points if _finite(p[1])]
    if points:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, idx, xlabel in ((axes[0], 2, "serving latency p50 (ms)"),
                                (axes[1], 3, "parameters")):
            for p in points:
                if not _finite(p[idx]):
                    continue
                ax.scatter(p[idx], p[1], color="#dd8452")
                ax.annotate(p[0], (p[idx], p[1]), textcoords="offset points", xytext=(4, 4))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("offline AUC")
        if any(_finite(p[3]) and p[3] > 0 for p in points):
            axes[1].set_xscale("log")
        fig.suptitle("Offline AUC vs serving cost per student"
                     + (f"\n({offline_label(report)})" if offline_label(report) else ""),
                     fontsize=9)
        charts["auc_cost"] = _png(fig)
        plt.close(fig)
    return charts


def render_item_ctr_svg(report: Mapping, width: int = 520, height: int = 260) -> str:
    """Inline SVG bar chart: item CTR per arm with its 95% interval (no external resources)."""
    arms = report["arms"]
    names = list(arms)
    values = [arms[a]["item_ctr"] if _finite(arms[a]["item_ctr"]) else 0.0 for a in names]
    cis = [arms[a].get("item_ctr_ci95") or [None, None] for a in names]
    peak = max([v for v in values] + [hi for _, hi in cis if _finite(hi)] + [1e-4]) * 1.05
    magnitude = 10.0 ** math.floor(math.log10(peak / 4))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if peak / (m * magnitude) <= 5)
    ticks = int(math.ceil(peak / step))
    top = ticks * step
    left, right, upper, lower = 60, 10, 30, 40
    plot_w, plot_h = width - left - right, height - upper - lower

    def y(v):
        return upper + plot_h * (1.0 - v / top)

    slot = plot_w / max(1, len(names))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="item CTR per arm with 95% CI" '
             'style="font-family:sans-serif;font-size:11px">',
             f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13">'
             'Item CTR per arm with 95% CI</text>',
             f'<line x1="{left}" y1="{upper + plot_h}" x2="{left + plot_w}" y2="{upper + plot_h}" '
             'stroke="black"/>',
             f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{upper + plot_h}" stroke="black"/>']
    decimals = len(f"{step * 100:.8f}".rstrip("0").split(".")[1])  # as many as the step needs
    for k in range(ticks + 1):
        v = step * k
        parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">'
                     f'{v * 100:.{decimals}f}%</text>')
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + plot_w}" y2="{y(v):.1f}" '
                     'stroke="#ddd"/>')
    for i, (name, v, (lo, hi)) in enumerate(zip(names, values, cis, strict=True)):
        cx = left + slot * (i + 0.5)
        bw = slot * 0.5
        color = "#8c8c8c" if name == report["control"] else "#55a868"
        parts.append(f'<rect x="{cx - bw / 2:.1f}" y="{y(v):.1f}" width="{bw:.1f}" '
                     f'height="{upper + plot_h - y(v):.1f}" fill="{color}"/>')
        if _finite(lo) and _finite(hi):
            parts.append(f'<line x1="{cx:.1f}" y1="{y(hi):.1f}" x2="{cx:.1f}" y2="{y(lo):.1f}" '
                         'stroke="black"/>')
            for e in (lo, hi):
                parts.append(f'<line x1="{cx - 6:.1f}" y1="{y(e):.1f}" x2="{cx + 6:.1f}" '
                             f'y2="{y(e):.1f}" stroke="black"/>')
        parts.append(f'<text x="{cx:.1f}" y="{upper + plot_h + 14}" text-anchor="middle">'
                     f'{html.escape(name)}</text>')
        parts.append(f'<text x="{cx:.1f}" y="{upper + plot_h + 28}" text-anchor="middle">'
                     f'{_pct(arms[name]["item_ctr"], 2, sign=False)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(x, pct=False, digits=4):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x * 100:.2f}%" if pct else f"{x:.{digits}g}"
    return html.escape(str(x))


def _ci_text(low, high, unit=""):
    lo = "-" if not _finite(low) else f"{low:.3g}"
    hi = "-" if not _finite(high) else f"{high:.3g}"
    return f"[{lo}, {hi}]{unit}"


def unreadable_text(report: Mapping) -> str | None:
    """The warning for lines the event-log reader skipped (None: none, or not known)."""
    n = report.get("unreadable_lines")
    if not n:
        return None
    first = f" (first: {report['unreadable_first']})" if report.get("unreadable_first") else ""
    return f"{n} unreadable event-log line{'s' if n != 1 else ''} skipped{first}"


def render_html(report: Mapping, title: str = "A/B experiment report") -> str:
    """The HTML report; its first element is the decision."""
    charts = render_charts(report)
    rows, cost_rows = [], []
    for arm, m in report["arms"].items():
        vc = m.get("vs_control", {})
        vci = vc.get("item", {})

        def ci(v):
            return f"[{_fmt(v.get('ci95_low'), True)}, {_fmt(v.get('ci95_high'), True)}]" if v else "control"

        lci = m.get("latency_ms_ci95", {})
        rows.append(
            "<tr>" + "".join(f"<td>{c}</td>" for c in [
                html.escape(arm), m["units"], m["exposures"], m["clicked_exposures"], _fmt(m["ctr"], True),
                _fmt(m["design_effect"]),
                _fmt(vc.get("lift"), True) if vc else "-", ci(vc),
                _fmt(vc.get("p_value")) if vc else "-", _fmt(vc.get("p_holm")) if vc else "-",
                _fmt(vc.get("mde_rel"), True) if vc else "-",
                _fmt(m["item_ctr"], True), _fmt(vci.get("lift"), True) if vci else "-", ci(vci),
                _fmt(vci.get("p_value")) if vci else "-",
                _fmt(vci.get("mde_rel"), True) if vci else "-"]) + "</tr>")
        cost_rows.append(
            "<tr>" + "".join(f"<td>{c}</td>" for c in [
                html.escape(arm), m["fallbacks"],
                _fmt(m["latency_ms"]["p50"]), _ci_text(*lci.get("p50", (None, None))),
                _fmt(m["latency_ms"]["p95"]),
                _fmt(m["latency_ms"]["p99"]), _ci_text(*lci.get("p99", (None, None))),
                _fmt(m["model"].get("params")), _fmt(m["model"].get("madds_per_example")),
                _fmt(m["offline"].get("auc"))]) + "</tr>")
    srm = report["srm"]
    srm_text = (f"chi2 = {_fmt(srm['chi2'])}, p = {_fmt(srm['p_value'])} "
                f"({'SAMPLE RATIO MISMATCH: do not trust the comparison' if srm['mismatch'] else 'no mismatch at p &lt; 0.001'})")
    images = "".join(f'<p><img alt="{k}" src="data:image/png;base64,{v}"/></p>'
                     for k, v in charts.items())
    head = ["arm", "units", "exposures", "clicked", "CTR", "design effect", "lift", "95% CI", "p-value",
            "Holm p", "MDE (80% power)",
            "item CTR", "item lift", "item 95% CI", "item p-value", "item MDE"]
    cost_head = ["arm", "fallbacks", "p50 ms", "p50 95% CI", "p95 ms", "p99 ms", "p99 95% CI",
                 "params", "multiply-adds / example", "offline AUC"]
    decision = report["decision"]
    unreadable = unreadable_text(report)
    label = offline_label(report)
    notes = []
    if unreadable:
        notes.append(f'<p class="warn" id="unreadable">{html.escape(unreadable)}.</p>')
    if label:
        notes.append(f'<p id="offline-data">{html.escape(label[:1].upper() + label[1:])}.</p>')
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
.decision{{font-size:1.3em;padding:0.6em;border-left:6px solid #4c72b0;background:#eef2f8}}
.decision.winner{{border-color:#55a868}}.decision.srm,.decision.not_enough_data{{border-color:#c44e52}}
.warn{{color:#c44e52}}</style></head><body><p id="decision" class="decision {html.escape(decision['outcome'])}"><b>Decision:</b> {html.escape(decision['text'])}</p>
<h1>{html.escape(title)}</h1>
<p id="decision-rule"><small>Decision rule: {html.escape(decision['rule'])}</small></p>
<p>Control arm: <b>{html.escape(report['control'])}</b>. Total exposures:
{report['total_exposures']}; failed requests: {report['failed_requests']}.</p>
{''.join(notes)}
<p>Sample-ratio check (units, i.e. what was randomised): {srm_text}.</p>
<table id="metrics"><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{''.join(rows)}</table>
<p>Serving latency (router end to end), cost and offline quality:</p>
<table id="cost"><tr>{''.join(f'<th>{h}</th>' for h in cost_head)}</tr>{''.join(cost_rows)}</table>
<p>CTR = exposures with at least one click / exposures. Variances account for units that
saw several lists (delta method for a ratio of per-unit sums, as a design effect; 1 = every
unit one list). Lift CI: delta method on the log ratio; p-value: pooled two-proportion
z-test (two-sided) with design-effect-scaled variances; Holm p: adjusted over the treatment
arms. MDE: the relative CTR difference this traffic detects with 80% power at two-sided
level {_fmt(report.get('methods', {}).get('mde_alpha'))} (0.05 / number of treatment arms).
Latency CIs: 95% distribution-free intervals from order statistics ("-": too few
requests for that bound).</p>
{images}
<p>{render_item_ctr_svg(report)}</p>
</body></html>
"""


def format_report(report: Mapping) -> list[str]:
    """The terminal report's lines: the decision first, then the per-arm tables."""
    def lift_ci_p(v):
        if not v:
            return "control", "", "", "", ""
        ci = f"[{_pct(v['ci95_low'])},{_pct(v['ci95_high'])}]".replace("%", "") + "%"
        return (_pct(v["lift"]), ci,
                f"{v['p_value']:.3f}" if _finite(v["p_value"]) else "-",
                f"{v['p_holm']:.3f}" if _finite(v.get("p_holm")) else "",
                _pct(v.get("mde_rel"), sign=False))

    def f(x, spec):
        return format(x, spec) if _finite(x) else "-"

    lines = [f"decision: {report['decision']['text']}"]
    unreadable = unreadable_text(report)
    if unreadable:
        lines.append(f"warning: {unreadable}")
    lines.append(f"{'arm':<10}{'units':>6}{'lists':>7}{'CTR':>8}{'lift':>8}{'95% CI':>16}{'p':>7}"
                 f"{'Holm p':>7}{'MDE':>7}{'itemCTR':>9}{'lift':>8}{'95% CI':>16}{'p':>7}")
    for arm, m in report["arms"].items():
        vc = m.get("vs_control")
        lift, ci, p, ph, mde = lift_ci_p(vc)
        ilift, ici, ip, _, _ = lift_ci_p(vc["item"] if vc else None)
        lines.append(f"{arm:<10}{m['units']:>6}{m['exposures']:>7}{_pct(m['ctr'], 2, False):>8}"
                     f"{lift:>8}{ci:>16}{p:>7}{ph:>7}{mde:>7}"
                     f"{_pct(m['item_ctr'], 2, False):>9}{ilift:>8}{ici:>16}{ip:>7}")
    lines.append(f"{'latency ms':<10}{'p50':>8}{'95% CI':>18}{'p99':>8}{'95% CI':>18}")
    for arm, m in report["arms"].items():
        lat, ci = m["latency_ms"], m.get("latency_ms_ci95", {})
        p50, p99 = ci.get("p50", [None, None]), ci.get("p99", [None, None])
        lines.append(f"{arm:<10}{f(lat['p50'], '.2f'):>8}"
                     f"{'[' + f(p50[0], '.2f') + ', ' + f(p50[1], '.2f') + ']':>18}"
                     f"{f(lat['p99'], '.2f'):>8}"
                     f"{'[' + f(p99[0], '.2f') + ', ' + f(p99[1], '.2f') + ']':>18}")
    srm = report["srm"]
    lines.append(f"SRM (units) chi2={f(srm['chi2'], '.3f')} p={f(srm['p_value'], '.4f')}"
                 + ("  <-- SAMPLE RATIO MISMATCH" if srm["mismatch"] else ""))
    label = offline_label(report)
    aucs = [(a, m["offline"].get("auc")) for a, m in report["arms"].items()]
    if label and any(_finite(v) for _, v in aucs):
        lines.append(f"{label}: " + ", ".join(f"{a} {f(v, '.4f')}" for a, v in aucs))
    return lines


def check_out_dir(out_dir: str) -> None:
    """ValueError unless `out_dir` is a directory or can be created as one."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"report directory {out_dir} exists and is not a directory "
                         "(the report is written as <dir>/ab_report.json and ab_report.html)")


def write_report(report: Mapping, out_dir: str, title: str = "A/B experiment report") -> dict:
    """Writes <out_dir>/ab_report.json (strict JSON: null for undefined values) and .html."""
    check_out_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "ab_report.json")
    html_path = os.path.join(out_dir, "ab_report.html")
    safe = json_safe(report)
    text = json.dumps(safe, indent=2, allow_nan=False)
    page = render_html(safe, title)
    with open(json_path, "w") as f:
        f.write(text + "\n")
    with open(html_path, "w") as f:
        f.write(page)
    return {"json": json_path, "html": html_path}


def savedmodel_size(saved_model_dir: str) -> dict:
    """Parameter count (from the variables checkpoint) and bytes on disk of a SavedModel."""
    params = 0
    prefix = os.path.join(saved_model_dir, "variables", "variables")
    if os.path.exists(prefix + ".index"):
        import tensorflow as tf

        for name, shape in tf.train.list_variables(prefix):
            if name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH") or "OPTIMIZER_SLOT" in name \
                    or "save_counter" in name:
                continue
            params += int(np.prod(shape)) if shape else 1
    size = 0
    for root, _, files in os.walk(saved_model_dir):
        size += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return {"params": params, "bytes_on_disk": size}
