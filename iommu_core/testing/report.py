"""What the kit reports after a run: per driver, the optional features it claims and, per
feature suite, how many tests passed, failed or were skipped (and why).

Tests say which suite they belong to with ``@pytest.mark.iommu_feature(name)``; the
``env`` fixture records the features the driver claimed (:func:`record_claims`).
"""

from __future__ import annotations

from collections import Counter

import pytest

#: Suites in report order ("core": the rules every driver obeys).
FEATURE_ORDER = ("core", "pasid", "dirty_tracking", "nesting", "viommu", "hw_queue", "pri",
                 "identity", "describe")

# driver -> feature -> claimed
CLAIMS_KEY = pytest.StashKey[dict[str, dict[str, bool]]]()
# driver -> feature -> nodeid -> (outcome, reason)
RESULTS_KEY = pytest.StashKey[dict[str, dict[str, dict[str, tuple[str, str]]]]]()

_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def setup_report(config: pytest.Config) -> None:
    config.stash[CLAIMS_KEY] = {}
    config.stash[RESULTS_KEY] = {}


def record_claims(config: pytest.Config, driver: str, features: dict[str, bool]) -> None:
    claims = config.stash.get(CLAIMS_KEY, None)
    if claims is None:
        return
    mine = claims.setdefault(driver, {})
    for name, claimed in features.items():
        mine[name] = mine.get(name, False) or claimed


def _reason(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    msg = str(getattr(crash, "message", "") or "")
    # Keep the assertion's first line: it names the rule.
    return msg.splitlines()[0] if msg else report.outcome


def record_report(item: pytest.Item, report: pytest.TestReport) -> None:
    results = item.config.stash.get(RESULTS_KEY, None)
    callspec = getattr(item, "callspec", None)
    if results is None or callspec is None:
        return
    driver = callspec.params.get("iommu_driver")
    if not isinstance(driver, str):
        return
    if report.when != "call" and report.passed:
        return  # setup/teardown only matter when they fail or skip
    marker = item.get_closest_marker("iommu_feature")
    feature = str(marker.args[0]) if marker is not None and marker.args else "core"
    tests = results.setdefault(driver, {}).setdefault(feature, {})
    outcome = report.outcome
    prev = tests.get(item.nodeid)
    if prev is None or _RANK[outcome] > _RANK[prev[0]]:
        tests[item.nodeid] = (outcome, "" if report.passed else _reason(report))


def summary_lines(config: pytest.Config) -> list[str]:
    """The report, one line per driver and one per suite."""
    results = config.stash.get(RESULTS_KEY, {})
    claims = config.stash.get(CLAIMS_KEY, {})
    lines: list[str] = []
    for driver in sorted(results):
        feats = claims.get(driver)
        if feats is None:
            claimed = "(no test asked)"
        else:
            names = [f for f in FEATURE_ORDER if feats.get(f)]
            names += sorted(f for f, v in feats.items() if v and f not in FEATURE_ORDER)
            claimed = ", ".join(names) or "no optional feature"
        lines.append(f"{driver}: claims {claimed}")
        suites = results[driver]
        order = [f for f in FEATURE_ORDER if f in suites]
        order += sorted(f for f in suites if f not in FEATURE_ORDER)
        for feature in order:
            tests = suites[feature]
            counts = Counter(o for o, _r in tests.values())
            if counts["failed"]:
                status = "FAILED"
            elif counts["passed"]:
                status = "ran"
            else:
                status = "skipped"
            detail = ", ".join(f"{counts[o]} {o}" for o in ("passed", "failed", "skipped")
                               if counts[o])
            lines.append(f"  {feature:<15} {status:<8} {detail}")
            if counts["skipped"]:
                for reason in sorted({r for o, r in tests.values() if o == "skipped"}):
                    lines.append(f"      skipped: {reason}")
            for nodeid, (o, r) in sorted(tests.items()):
                if o == "failed":
                    name = nodeid.rsplit("::", 1)[-1]
                    lines.append(f"      {name}: {r}")
    return lines
