"""The CLI's pure parts: tables, ages, summaries, the request filter of `logs`, packaging and scaffolds."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import pytest
import yaml

from kubelambda.api.v1alpha1 import RUNTIMES
from kubelambda.cli import main
from kubelambda.cli._format import (
    RequestFilter,
    age,
    code_summary,
    describe_function,
    function_rows,
    logging_summary,
    ready_column,
    render_table,
)
from kubelambda.cli._package import INLINE_LIMIT, Package, built_code, collect, inline_files, make_zip
from kubelambda.cli.project import TEMPLATE_OF, function_name_for, render_scaffold
from kubelambda.resources.configmap import CONFIGMAP_LIMIT_BYTES

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)


def fn(name: str, *, ready: str | None = "True", reason: str = "ScaledToZero", generation: int = 1,
       observed: int = 1, created: str = "2026-11-26T11:55:00Z", ns: str = "default") -> dict:  # fmt: skip
    status: dict = {"observedGeneration": observed, "instances": {"desired": 1, "ready": 1}}
    if ready is not None:
        status["conditions"] = [
            {
                "type": "Ready",
                "status": ready,
                "reason": reason,
                "message": "m",
                "lastTransitionTime": created,
            }
        ]
    return {
        "metadata": {"name": name, "namespace": ns, "generation": generation, "creationTimestamp": created},
        "spec": {
            "runtime": "python3.12",
            "handler": "app.handler",
            "code": {"inline": {"app.py": "x = 1\n"}},
        },
        "status": status,
    }


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("2026-11-26T11:59:18Z", "42s"),
        ("2026-11-26T11:58:00Z", "2m"),
        ("2026-11-26T09:00:00Z", "3h"),
        ("2026-11-20T12:00:00Z", "6d"),
        ("2026-11-26T12:00:05Z", "0s"),  # a clock skew never gives a negative age
        (None, "<unknown>"),
        ("yesterday", "<unknown>"),
    ],
    ids=["seconds", "minutes", "hours", "days", "future", "none", "garbage"],
)
def test_age(since: str | None, expected: str) -> None:
    assert age(since, NOW) == expected


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (fn("a"), "True"),
        (fn("a", ready="False", reason="CodeTooLarge"), "False (CodeTooLarge)"),
        (fn("a", ready=None), "Unknown"),
        (fn("a", generation=2, observed=1), "Unknown (Reconciling)"),
    ],
    ids=["ready", "not-ready-with-reason", "no-condition", "stale-generation"],
)
def test_ready_column(obj: dict, expected: str) -> None:
    assert ready_column(obj) == expected


def test_table_is_aligned_without_trailing_blanks() -> None:
    headers, rows = function_rows([fn("zeta"), fn("a-long-name")], NOW, all_namespaces=False)
    text = render_table(headers, rows)
    assert text.splitlines() == [
        "NAME          READY   INSTANCES   RUNTIME      AGE",
        "a-long-name   True    1/1         python3.12   5m",
        "zeta          True    1/1         python3.12   5m",
    ]


def test_all_namespaces_adds_a_namespace_column_sorted_by_namespace() -> None:
    headers, rows = function_rows([fn("b", ns="prod"), fn("a", ns="dev")], NOW, all_namespaces=True)
    assert headers[0] == "NAMESPACE"
    assert [r[:2] for r in rows] == [["dev", "a"], ["prod", "b"]]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ({"inline": {"app.py": "ab"}}, "inline (1 file, 8 bytes: app.py)"),
        ({"s3": {"endpoint": "http://s3", "bucket": "b", "key": "k.zip"}}, "s3://b/k.zip at http://s3"),
        ({"archive": {"url": "https://x/f.zip", "sha256": "0" * 64}}, "archive https://x/f.zip"),
        ({"image": "reg/fn:1"}, "image reg/fn:1"),
    ],
    ids=["inline", "s3", "archive", "image"],
)
def test_code_summary(code: dict, expected: str) -> None:
    assert code_summary(code) == expected


def test_describe_shows_spec_conditions_triggers_and_events() -> None:
    events = [
        {"type": "Warning", "reason": "CodeTooLarge", "message": "too big", "lastTimestamp": "2026-11-26T11:59:00Z",
         "source": {"component": "kubelambda-operator"}},
    ]  # fmt: skip
    triggers = [
        {
            "metadata": {"name": "nightly"},
            "spec": {"function": "a", "schedule": {"expression": "rate(1 day)"}},
        }
    ]
    text = describe_function(fn("a"), events=events, triggers=triggers, now=NOW)
    assert "Name:        a" in text
    assert "Handler:     app.handler" in text
    assert "Code:        inline (1 file" in text
    assert "Logging:     Text" in text
    assert "Ready   True     ScaledToZero" in text
    assert "nightly   schedule   true" in text
    assert "60s   Warning   CodeTooLarge   kubelambda-operator   too big" in text


def test_logging_summary() -> None:
    assert logging_summary({}) == "Text"
    assert (
        logging_summary({"logFormat": "JSON", "applicationLogLevel": "WARN"})
        == "JSON (application WARN, system INFO)"
    )


def test_describe_says_none_when_empty() -> None:
    text = describe_function(fn("a", ready=None), events=[], triggers=[], now=NOW)
    for section in ("Conditions", "Triggers", "Events"):
        assert f"{section}:\n  <none>" in text


def test_request_filter_keeps_only_its_block() -> None:
    lines = [
        "init line",
        "START RequestId: r1 Version: $LATEST",
        "one",
        "END RequestId: r1",
        "REPORT RequestId: r1 Duration: 1 ms",
        "START RequestId: r2 Version: $LATEST",
        "two",
        "END RequestId: r2",
        "REPORT RequestId: r2 Duration: 1 ms",
    ]
    keep = RequestFilter("r2")
    assert [line for line in lines if keep.keep(line)] == lines[5:]
    assert keep.done


def test_inline_limit_is_the_configmap_limit() -> None:
    assert INLINE_LIMIT == CONFIGMAP_LIMIT_BYTES


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"app.py": (b"x", False)}, ""),
        ({"bootstrap": (b"#!/bin/sh\necho", True)}, ""),
        ({}, "the folder has no code files"),
        ({"lib/a.py": (b"x", False)}, "lib/a.py is in a subfolder and inline files are flat"),
        ({"a.bin": (b"\xff\xfe", False)}, "a.bin is binary"),
        ({"tool": (b"ELF", True)}, "tool must stay executable and inline files lose the execute bit"),
        ({"big.py": (b"x" * 2000, False)}, "2006 bytes, over the inline limit of 1000"),
    ],
    ids=["text", "script-bootstrap", "empty", "subfolder", "binary", "executable", "too-large"],
)
def test_inline_or_zip(files: dict[str, tuple[bytes, bool]], why: str) -> None:
    got, reason = inline_files(Package(files), limit=1000)
    assert reason == why
    assert (got is not None) == (why == "")


def test_zips_are_reproducible_and_keep_the_execute_bit(tmp_path: Path) -> None:
    (tmp_path / "function.yaml").write_text("kind: Function\n")
    (tmp_path / "bootstrap").write_bytes(b"\x7fELF")
    (tmp_path / "bootstrap").chmod(0o755)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "util.pyc").write_bytes(b"")
    (tmp_path / ".env").write_text("SECRET=1\n")
    package = collect(tmp_path)
    assert sorted(package.files) == ["bootstrap", "lib/util.py"]
    data = make_zip(package)
    assert data == make_zip(collect(tmp_path))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in zf.infolist()}
    assert modes == {"bootstrap": 0o755, "lib/util.py": 0o644}


@pytest.mark.parametrize(
    ("folder", "name"),
    [("hello", "hello"), ("My_Func", "my-func"), ("python3.12", "python3-12"), ("---", "function")],
)
def test_function_name_from_folder(tmp_path: Path, folder: str, name: str) -> None:
    assert function_name_for(tmp_path / folder) == name


def test_every_runtime_has_a_scaffold() -> None:
    assert set(TEMPLATE_OF) == set(RUNTIMES)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_scaffold_is_a_function_of_its_runtime(runtime: str) -> None:
    files = render_scaffold(runtime, "demo")
    doc = yaml.safe_load(files["function.yaml"][0])
    assert doc["kind"] == "Function"
    assert doc["metadata"]["name"] == "demo"
    assert doc["spec"]["runtime"] == runtime
    assert "code" not in doc["spec"]  # deploy fills it in
    assert not any("{{" in text for text, _ in files.values())
    assert not any(name.endswith(".tmpl") for name in files)


def test_init_writes_the_scaffold_and_refuses_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "provided", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "bootstrap").stat().st_mode & 0o111
    assert main(["init", "provided", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("kubelambda: error: ")
    assert err[1].startswith("hint: ")


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["init", "cobol", "x"])
    assert exit_info.value.code == 2


def test_python_requirements_are_installed_beside_the_handler(tmp_path: Path) -> None:
    # A local wheel, so that pip needs no index: built by hand (a wheel is a zip with a dist-info folder).
    wheel = tmp_path / "fn" / "greet-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("greet/__init__.py", "def hello():\n    return 'hi'\n")
        zf.writestr("greet-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: greet\nVersion: 1.0\n")
        zf.writestr(
            "greet-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr("greet-1.0.dist-info/RECORD", "greet/__init__.py,,\ngreet-1.0.dist-info/METADATA,,\n")
    (tmp_path / "fn" / "app.py").write_text("import greet\n")
    (tmp_path / "fn" / "requirements.txt").write_text("# deps\n./greet-1.0-py3-none-any.whl\n")
    steps: list[str] = []
    with built_code(tmp_path / "fn", "python3.12", progress=steps.append) as package:
        files = set(package.files)
    assert steps == ["Installing requirements.txt (pip install --target)"]
    assert {"app.py", "requirements.txt", "greet/__init__.py", "greet-1.0.dist-info/METADATA"} <= files
    assert inline_files(Package({k: (b"", False) for k in files}))[0] is None  # subfolders: a zip
