"""The runtime table: every runtime of the Function API, in one place.

Everything else that lists runtimes is derived from :data:`RUNTIMES` and :data:`FAMILIES`: the API's
``Runtime`` enum and handler checks (and so the CRDs and docs/reference.md), the operator's default images,
the worker command, ``kubelambda init``'s scaffolds, the local node's images and interpreters, the chart's
values schema and the image build targets (``mk/runtime-images.mk``). ``python -m kubelambda.runtimes.generate``
rewrites the generated files; tests/unit/runtimes/test_runtimes_table.py fails when they drift.
docs/runtimes.md "Adding a runtime" lists what a new runtime still needs besides a line here.

This module imports nothing from kubelambda: the API models import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

FamilyName = Literal["python", "nodejs", "java", "ruby", "provided"]


@dataclass(frozen=True)
class Family:
    """What the runtimes of one language share: runtime image, client, handler format, interpreter."""

    name: FamilyName
    title: str  # for people: "Python"
    entry: (
        str  # the runtime client inside runtime-images/<name>/ (java: the class path inside the built folder)
    )
    version_arg: str  # the Dockerfile's build argument that picks the runtime's version
    handler: str = ""  # RE2 pattern a handler must match (CEL's matches()); "" = any (the bootstrap reads it)
    handler_shape: str = ""  # the pattern in words, for the error message
    # The interpreter on a machine without containers (the local node): program names to look for, "{v}" standing
    # for the runtime's version; each found program's version is checked with ``version_probe``. () = none needed.
    programs: tuple[str, ...] = ()
    version_probe: tuple[str, ...] = ()
    # argv of one worker process: "{interpreter}" and "{entry}" (the client's path) are filled in.
    worker: tuple[str, ...] = ("{interpreter}", "{entry}")
    program: str = ""  # the interpreter when none is named (PATH lookup); "" = no interpreter

    @property
    def image(self) -> str:
        """Repository of the family's runtime image, below the registry."""
        return f"runtime-{self.name}"


@dataclass(frozen=True)
class Runtime:
    """One value of ``Function.spec.runtime``."""

    name: str  # Function.spec.runtime; Lambda's identifier without ".x" (nodejs20 = Lambda's nodejs20.x)
    family: FamilyName
    version: str  # interpreter version ("3.11", "20"); for `provided` images the runtime name itself
    tag: str  # the runtime image's tag
    scaffold: str  # the folder of kubelambda/scaffold/ that `kubelambda init` copies

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]


JAVA_MAIN = "io.kubelambda.runtime.Bootstrap"
# As Lambda's Java runtimes: C1 only (the fastest start for short-lived work) and the serial collector
# (one invocation at a time per worker). Users add their own through JAVA_TOOL_OPTIONS.
JAVA_OPTIONS = ("-XX:+TieredCompilation", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xshare:auto")

FAMILIES: Mapping[FamilyName, Family] = {
    f.name: f
    for f in (
        Family(
            "python",
            "Python",
            entry="bootstrap.py",
            version_arg="PYTHON_VERSION",
            handler=r"^([A-Za-z0-9_.-]+/)*[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z_][A-Za-z0-9_]*$",
            handler_shape="module.function",
            programs=("python{v}",),
            version_probe=("-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"),
            program="python3",
        ),
        Family(
            "nodejs",
            "Node.js",
            entry="index.mjs",
            version_arg="NODE_VERSION",
            handler=r"^([A-Za-z0-9_.-]+/)*[A-Za-z0-9_-]+\.[A-Za-z_$][A-Za-z0-9_$.]*$",
            handler_shape="file.export",
            programs=("node{v}", "node", "nodejs"),
            version_probe=("--version",),
            program="node",
        ),
        Family(
            "java",
            "Java",
            entry="lib/*",
            version_arg="JAVA_VERSION",
            handler=r"^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*(::[A-Za-z_$][A-Za-z0-9_$]*)?$",
            handler_shape="package.Class::method or package.Class",
            programs=(
                "/usr/lib/jvm/java-{v}-openjdk-*/bin/java",
                "/usr/lib/jvm/temurin-{v}-*/bin/java",
                "java",
            ),
            version_probe=("-version",),
            worker=("{interpreter}", *JAVA_OPTIONS, "-cp", "{entry}", JAVA_MAIN),
            program="java",
        ),
        Family(
            "ruby",
            "Ruby",
            entry="bootstrap.rb",
            version_arg="RUBY_VERSION",
            handler=r"^([A-Za-z0-9_.-]+/)*[A-Za-z0-9_-]+\.([A-Z][A-Za-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*[?!]?$",
            handler_shape="file.method or file.Module::Class.method",
            programs=("ruby{v}", "ruby"),
            version_probe=("-e", "print RUBY_VERSION"),
            program="ruby",
        ),
        # The function brings its own `bootstrap` (Go, Rust, a shell script...): the image only has the agent.
        Family(
            "provided",
            "OS-only (custom runtime)",
            entry="launch",
            version_arg="RUNTIME_NAME",
            worker=("{entry}",),
        ),
    )
}

# Lambda's identifiers (https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtimes.html), without ".x".
# Order: the API's enum, the CLI's choices and the docs follow it. `provided` before `go`: an image tag that
# names no runtime of the provided family means `provided`.
RUNTIMES: Mapping[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("python3.11", "python", "3.11", "3.11", "python"),
        Runtime("python3.12", "python", "3.12", "3.12", "python"),
        Runtime("python3.13", "python", "3.13", "3.13", "python"),
        Runtime("nodejs20", "nodejs", "20", "20", "nodejs"),
        Runtime("nodejs22", "nodejs", "22", "22", "nodejs"),
        Runtime("java17", "java", "17", "17", "java"),
        Runtime("java21", "java", "21", "21", "java"),
        Runtime("ruby3.3", "ruby", "3.3", "3.3", "ruby"),
        Runtime("provided", "provided", "provided", "latest", "provided"),
        Runtime("go", "provided", "go", "go", "go"),
    )
}
RUNTIME_NAMES: tuple[str, ...] = tuple(RUNTIMES)


def runtime(name: str) -> Runtime:
    """The runtime called ``name``; a ValueError listing the known ones otherwise."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}") from None


def image(name: str, registry: str) -> str:
    """``python3.11`` → ``<registry>/runtime-python:3.11``."""
    rt = runtime(name)
    return f"{registry}/{rt.spec.image}:{rt.tag}"
