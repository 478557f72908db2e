"""Pure formatting of what the commands print: tables, ages, a Function's summary, log filtering.

No client and no clock: ``now`` is a parameter, so tests/unit/test_cli_format.py checks it with tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from kubelambda.jsonobj import JSON


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """kubectl-style columns: upper-case headers, left-aligned, three spaces apart, no trailing blanks."""
    table = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(since: str | None, now: dt.datetime) -> str:
    """kubectl's short ages: ``42s``, ``5m``, ``3h``, ``2d``; ``<unknown>`` without a time."""
    start = parse_time(since)
    if start is None:
        return "<unknown>"
    seconds = max(0, int((now - start).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 120 * 60:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def condition(obj: JSON, type_: str) -> JSON | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def ready_column(obj: JSON) -> str:
    """``True``, ``False (Reason)``, or ``Unknown`` while the operator has not reported on this generation."""
    cond = condition(obj, "Ready")
    if cond is None:
        return "Unknown"
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return "Unknown (Reconciling)"
    status = str(cond.get("status", "Unknown"))
    return status if status == "True" else f"{status} ({cond.get('reason', '')})"


def instances_column(obj: JSON) -> str:
    """``ready/desired`` instances."""
    inst = (obj.get("status") or {}).get("instances") or {}
    return f"{int(inst.get('ready') or 0)}/{int(inst.get('desired') or 0)}"


def function_rows(
    items: Sequence[JSON], now: dt.datetime, *, all_namespaces: bool
) -> tuple[list[str], list[list[str]]]:
    headers = ["NAME", "READY", "INSTANCES", "RUNTIME", "AGE"]
    if all_namespaces:
        headers = ["NAMESPACE", *headers]
    rows = []
    for obj in sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
        meta = obj["metadata"]
        row = [
            meta["name"],
            ready_column(obj),
            instances_column(obj),
            str((obj.get("spec") or {}).get("runtime", "")),
            age(meta.get("creationTimestamp"), now),
        ]
        rows.append([meta.get("namespace", ""), *row] if all_namespaces else row)
    return headers, rows


def code_summary(code: JSON) -> str:
    if "inline" in code:
        files = code["inline"] or {}
        size = sum(len(k.encode()) + len(v.encode()) for k, v in files.items())
        return f"inline ({len(files)} file{'s' if len(files) != 1 else ''}, {size} bytes: {', '.join(sorted(files))})"
    if "s3" in code:
        s3 = code["s3"]
        return f"s3://{s3.get('bucket')}/{s3.get('key')} at {s3.get('endpoint')}"
    if "archive" in code:
        return f"archive {code['archive'].get('url')}"
    if "image" in code:
        return f"image {code['image']}"
    return "<none>"


def logging_summary(logging: JSON) -> str:
    """A Function's LoggingConfig (docs/logs.md): ``Text``, or ``JSON (application INFO, system INFO)``."""
    fmt = str(logging.get("logFormat", "Text"))
    if fmt != "JSON":
        return fmt
    app, system = logging.get("applicationLogLevel", "INFO"), logging.get("systemLogLevel", "INFO")
    return f"JSON (application {app}, system {system})"


def describe_function(
    obj: JSON, *, events: Sequence[JSON], triggers: Sequence[JSON], now: dt.datetime
) -> str:
    """``kubectl describe``-like text: spec summary, status, conditions, Triggers, recent Events."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    conc, scaling = spec.get("concurrency") or {}, spec.get("scaling") or {}
    reserved = conc.get("reserved")
    fields = [
        ("Name", meta["name"]),
        ("Namespace", meta.get("namespace", "")),
        ("Created", f"{meta.get('creationTimestamp', '')} ({age(meta.get('creationTimestamp'), now)} ago)"),
        ("Runtime", str(spec.get("runtime", ""))),
        ("Handler", str(spec.get("handler", ""))),
        ("Code", code_summary(spec.get("code") or {})),
        ("Memory", f"{spec.get('memoryMB', 128)} MB"),
        ("Timeout", f"{spec.get('timeoutSeconds', 3)} s"),
        (
            "Concurrency",
            f"reserved {reserved if reserved is not None else '-'}, per instance {conc.get('perInstance', 1)}",
        ),
        (
            "Scaling",
            f"min {scaling.get('minInstances', 0)}, max {scaling.get('maxInstances', 100)}, "
            f"to zero after {scaling.get('scaleToZeroAfterSeconds', 60)} s idle",
        ),
        ("Environment", ", ".join(sorted(spec.get("environment") or {})) or "<none>"),
        ("Logging", logging_summary(spec.get("logging") or {})),
        ("Ready", ready_column(obj)),
        ("Instances", f"{instances_column(obj)} ready/desired"),
        ("Generation", f"{meta.get('generation', '?')} (observed {status.get('observedGeneration', '-')})"),
        ("Code SHA256", str(status.get("codeSha256") or "-")),
        ("Invoke URL", str(status.get("invokeUrl") or "-")),
    ]
    width = max(len(k) for k, _ in fields) + 2
    out = [f"{k + ':':<{width}}{v}" for k, v in fields]

    out.append("\nConditions:")
    conds = status.get("conditions") or []
    if conds:
        rows = [
            [
                str(c.get("type", "")),
                str(c.get("status", "")),
                str(c.get("reason", "")),
                age(c.get("lastTransitionTime"), now),
                str(c.get("message", "")),
            ]
            for c in conds
        ]
        out.append(_indent(render_table(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], rows)))
    else:
        out.append("  <none>")

    out.append("\nTriggers:")
    if triggers:
        rows = [
            [
                t["metadata"]["name"],
                trigger_source(t),
                str((t.get("spec") or {}).get("enabled", True)).lower(),
                ready_column(t),
            ]
            for t in sorted(triggers, key=lambda t: t["metadata"]["name"])
        ]
        out.append(_indent(render_table(["NAME", "SOURCE", "ENABLED", "READY"], rows)))
    else:
        out.append("  <none>")

    out.append("\nEvents:")
    if events:
        rows = [
            [
                age(event_time(e), now),
                str(e.get("type", "")),
                str(e.get("reason", "")),
                event_source(e),
                str(e.get("message", "")).strip(),
            ]
            for e in sorted(events, key=lambda e: event_time(e) or "")[-20:]
        ]
        out.append(_indent(render_table(["AGE", "TYPE", "REASON", "FROM", "MESSAGE"], rows)))
    else:
        out.append("  <none>")
    return "\n".join(out)


def trigger_source(trigger: JSON) -> str:
    spec = trigger.get("spec") or {}
    for source in ("bucket", "queue", "stream", "topic", "schedule", "http"):
        if source in spec:
            return source
    return "?"


def event_time(event: JSON) -> str | None:
    value = (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
    )
    return str(value) if value else None


def event_source(event: JSON) -> str:
    source = event.get("source") or {}
    return str(source.get("component") or event.get("reportingComponent") or "")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


class RequestFilter:
    """Keeps the lines of one request: from its ``START RequestId: ID`` line to its ``REPORT RequestId: ID`` line.

    Feed it one pod's lines in order; each pod needs its own filter.
    """

    def __init__(self, request_id: str) -> None:
        self.start = f"START RequestId: {request_id}"
        self.report = f"REPORT RequestId: {request_id}"
        self.inside = False
        self.done = False

    def keep(self, line: str) -> bool:
        if line.startswith(self.start):
            self.inside = True
            return True
        if self.inside and line.startswith(self.report):
            self.inside = False
            self.done = True
            return True
        return self.inside
