"""The runtime images' Dockerfiles, checked without Docker: parsed, then held to the conventions every
runtime image follows (pinned bases, non-root USER, the agent as ENTRYPOINT, COPY sources that exist, and a
runtime command that is the one kubelambda.runtimes.worker_command gives for that runtime). The images built for
real, and run, are checked by tests/images (make images-test)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kubelambda.runtimes import RUNTIMES, runtime_images_dir, worker_command
from kubelambda.runtimes.table import FAMILIES

CONTEXT = runtime_images_dir()  # every Dockerfile is built with runtime-images/ as its context
DOCKERFILES = sorted(CONTEXT.glob("*/Dockerfile"))
AGENT = "/opt/kubelambda/bin/kubelambda-agent"
RUNTIME_DIR = "/opt/kubelambda/runtime"
# Dockerfiles whose final stage builds FROM a kubelambda runtime image (they inherit USER and ENTRYPOINT).
FUNCTION_BUILDERS = {"go"}
# Build inputs that hack/images.sh compiles on the host and puts in a copy of the context (offline builds).
PREBUILT = ".prebuilt/"
# The interpreter names the images put on PATH.


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            stages.append(
                Stage(base=words[0], name=words[2] if len(words) == 3 and words[1].upper() == "AS" else None)
            )
        elif not stages:
            assert keyword == "ARG", f"{path}: {keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def expand(value: str, args: dict[str, str]) -> str:
    """ARG references replaced by their defaults, which may themselves name earlier ARGs."""
    for _ in range(len(args) + 1):
        expanded = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)
        if expanded == value:
            break
        value = expanded
    return value


def env_of(stage: Stage, args: dict[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage.instructions:
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = expand(value, args)
    return env


def stage_args(stage: Stage, args: dict[str, str]) -> dict[str, str]:
    out = dict(args)
    for keyword, rest in stage.instructions:
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            out[name] = default or out.get(name, "")
    return out


def test_every_runtime_family_has_a_dockerfile() -> None:
    folders = {p.parent.name for p in DOCKERFILES}
    assert {spec.folder for spec in RUNTIMES.values()} <= folders
    assert "go" in folders  # the Go function builder


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_bases_are_pinned(path: Path) -> None:
    args, stages = parse(path)
    names = {s.name for s in stages if s.name}
    for stage in stages:
        base = expand(stage.base, args)
        if base in names or base == "scratch":
            continue
        assert "$" not in base, f"{path}: FROM {stage.base} uses an ARG without a default"
        repo, _, tag = base.rpartition(":") if ":" in base.rsplit("/", 1)[-1] else (base, "", "")
        assert tag, f"{path}: FROM {base} has no tag"
        assert tag != "latest" or repo.startswith("ghcr.io/kubelambda/"), f"{path}: FROM {base} is not pinned"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_copy_sources_exist_in_the_context(path: Path) -> None:
    _, stages = parse(path)
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword not in ("COPY", "ADD"):
                continue
            words = rest.split()
            if any(w.startswith("--from=") for w in words):
                continue  # another stage or a named build context
            sources = [w for w in words if not w.startswith("--")][:-1]
            assert sources, f"{path}: {keyword} {rest}"
            for source in sources:
                if source.startswith(PREBUILT):
                    # Only in a stage that the build selects instead of compiling (AGENT_FROM/CLIENT_FROM).
                    assert (stage.name or "").endswith("-prebuilt"), f"{path}: {keyword} {rest}"
                    continue
                assert (CONTEXT / source).exists(), (
                    f"{path}: {keyword} source {source} missing from {CONTEXT}"
                )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_final_stage_is_non_root_with_the_agent_as_entrypoint(path: Path) -> None:
    args, stages = parse(path)
    final = stages[-1]
    if path.parent.name in FUNCTION_BUILDERS:
        assert expand(final.base, args).startswith("ghcr.io/kubelambda/runtime-"), final.base
        assert not any(k in ("USER", "ENTRYPOINT") for k, _ in final.instructions)
        return
    users = [rest for keyword, rest in final.instructions if keyword == "USER"]
    assert users, f"{path}: the final stage sets no USER"
    assert users[-1] not in ("root", "0"), f"{path}: runs as {users[-1]}"
    entrypoints = [rest for keyword, rest in final.instructions if keyword == "ENTRYPOINT"]
    assert entrypoints, f"{path}: no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == [AGENT]
    env = env_of(final, stage_args(final, args))
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["LAMBDA_RUNTIME_DIR"] == RUNTIME_DIR


@pytest.mark.parametrize("runtime", sorted(r for r in RUNTIMES if r != "go"), ids=lambda r: str(r))
def test_image_runtime_command_matches_the_runtime_table(runtime: str) -> None:
    spec = RUNTIMES[runtime]
    path = CONTEXT / spec.folder / "Dockerfile"
    args, stages = parse(path)
    final = stages[-1]
    env = env_of(final, stage_args(final, args))
    command = json.loads(env["KUBELAMBDA_RUNTIME_CMD"])
    # In an image the interpreter is the family's program on PATH (python3, node, java, ruby).
    program = FAMILIES[spec.family].program
    assert command == worker_command(runtime, runtime_dir=RUNTIME_DIR, interpreter=program)
    # The runtime name the image reports is one of the family's runtimes (the version comes from a build ARG).
    assert env["KUBELAMBDA_RUNTIME_NAME"] in {r for r, s in RUNTIMES.items() if s.folder == spec.folder}


def test_make_images_builds_every_runtime_image_the_operator_names() -> None:
    """hack/images.sh's table (what `make images` builds) has an image for every runtime of the operator's
    default table, tagged the same way (<registry>/runtime-<family>:<tag>)."""
    from kubelambda.settings import default_runtime_images

    script = (CONTEXT.parent / "hack" / "images.sh").read_text()
    built = {f"R/{name}:{tag}" for name, tag in re.findall(r"^(runtime-[a-z]+)\|([^|]+)\|", script, re.M)}
    missing = set(default_runtime_images("R").values()) - built
    assert not missing, f"hack/images.sh builds no image for {sorted(missing)}"
