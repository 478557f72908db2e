"""docs/metrics.md's agent table says what runtime-images/agent/metrics.go (and logship.go) exports: the same metrics, types,
help texts (the table's meaning) and outcome label values."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "runtime-images" / "agent"
METRICS_DOC = ROOT / "docs" / "metrics.md"

Row = tuple[str, str, str]  # (type, labels, meaning)


def agent_metrics() -> tuple[dict[str, tuple[str, str]], list[str]]:
    """{name: (type, help)} of every metric metrics.go writes, and the outcome values of the invocation counter
    in the order it writes them."""
    source = (AGENT / "metrics.go").read_text() + (AGENT / "logship.go").read_text()
    helps = dict(re.findall(r"# HELP (kubelambda_agent_\w+) (.*?)\\n", source))
    types = dict(re.findall(r"# TYPE (kubelambda_agent_\w+) (\w+)", source))
    for name, help_text in re.findall(
        r'\.write\(w, "(kubelambda_agent_\w+)",\s*"((?:[^"\\]|\\.)*)"\)', source
    ):
        helps[name], types[name] = help_text, "histogram"
    assert helps.keys() == types.keys(), "a metric in metrics.go has a HELP line without a TYPE line or back"
    names_block = re.search(
        r"outcomeNames = \[numOutcomes\]string\{(.*?)\}", (AGENT / "workers.go").read_text(), re.S
    )
    assert names_block is not None, "outcomeNames not found in runtime-images/agent/workers.go"
    outcomes = re.findall(r'"(\w+)"', names_block[1])
    outcomes += re.findall(r'kubelambda_agent_invocations_total\{outcome=\\"(\w+)\\"\}', source)
    return {name: (types[name], helps[name]) for name in helps}, outcomes


def doc_rows() -> dict[str, Row]:
    text = METRICS_DOC.read_text()
    section = text.split("## Agent metrics", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, Row] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        m = re.fullmatch(r"`(kubelambda_agent_\w+)`", cells[0]) if len(cells) == 4 else None
        if m:
            rows[m[1]] = (cells[1], cells[2], cells[3].replace("`", ""))
    return rows


def test_the_agent_table_lists_exactly_what_metrics_go_exports() -> None:
    exported, _outcomes = agent_metrics()
    rows = doc_rows()
    assert len(exported) >= 7, (
        exported
    )  # the parser found the metrics (a failed regex would compare empty sets)
    assert sorted(rows) == sorted(exported), (
        "docs/metrics.md's agent table and metrics.go list different metrics"
    )
    for name, (kind, help_text) in exported.items():
        doc_kind, _labels, meaning = rows[name]
        assert doc_kind == kind, f"{name}: docs say {doc_kind}, metrics.go writes a {kind}"
        assert meaning == help_text, f"{name}: docs say {meaning!r}, metrics.go's HELP says {help_text!r}"


def test_the_outcome_values_are_the_agents() -> None:
    _exported, outcomes = agent_metrics()
    labels = doc_rows()["kubelambda_agent_invocations_total"][1]
    assert labels.startswith("`outcome`: "), labels
    assert re.findall(r"`(\w+)`", labels.removeprefix("`outcome`: ")) == outcomes
    for name, (_kind, labels, _meaning) in doc_rows().items():
        if name != "kubelambda_agent_invocations_total":
            assert labels == "", f"{name} has no labels in metrics.go, the docs list {labels!r}"
