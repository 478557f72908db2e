"""The chart's PrometheusRule: `promtool check rules` accepts the rendered rules (Debian's ``prometheus``
package provides promtool; .ci/run installs it), and each alert is built only on metrics kubelambda exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kubelambda import metrics
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster.servers import find_program

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kubelambda"
AGENT_METRICS = REPO / "runtime-images" / "agent" / "metrics.go"


def rendered_rules() -> dict[str, Any]:
    out = subprocess.run(
        [
            str(ensure_binaries(quiet=True).helm),
            "template",
            "kubelambda",
            str(CHART),
            "--namespace",
            "kubelambda-system",
            "--api-versions",
            "monitoring.coreos.com/v1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    (rule,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "PrometheusRule"]
    return dict(rule["spec"])


def test_promtool_accepts_the_rendered_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rendered_rules()))
    promtool = find_program("promtool", provided_by="the Debian package prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout, result.stdout


def test_every_alert_uses_only_exported_metrics() -> None:
    exported = {
        sample
        for family in metrics.REGISTRY.collect()
        for sample in (family.name, f"{family.name}_total", f"{family.name}_bucket")
    }
    exported |= set(re.findall(r'"(kubelambda_agent_[a-z_]+)"', AGENT_METRICS.read_text()))
    for group in rendered_rules()["groups"]:
        for rule in group["rules"]:
            used = set(re.findall(r"\bkubelambda_[a-z_]+", rule["expr"]))
            assert used, rule
            assert used <= exported, (rule["alert"], used - exported)
