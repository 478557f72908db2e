"""The ``kubelambda`` CLI as a user runs it: a subprocess against the test cluster and a real gateway.

init → deploy → invoke (sync and --async) → logs → list → describe → delete for Python (inline code); Node.js as a
zip in a real S3 bucket (SeaweedFS); the Java (Maven) and Go scaffolds built, deployed and invoked; the other
scaffolds validated by the API server (server-side dry run); the errors and exit codes users meet.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from kltest import Cluster, wait_for
from kltest.platform import Env
from kubelambda.api.v1alpha1 import RUNTIMES
from kubelambda.cli.project import TEMPLATE_OF
from kubelambda.devcluster.servers import S3Server
from kubelambda.kube import resource_path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def s3(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    async with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


class Cli:
    """Runs ``python -m kubelambda`` with the test cluster's kubeconfig and the test gateway."""

    def __init__(self, cluster: Cluster, gateway_url: str, state_dir: Path, **env: str) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("KUBELAMBDA_", "AWS_"))}
        self.env = {
            **clean,
            "KUBECONFIG": str(cluster.kubeconfig),
            "KUBELAMBDA_GATEWAY_URL": gateway_url,
            "KUBELAMBDA_STATE_DIR": str(state_dir),  # no dev.json there: nothing but the above is used
            **env,
        }

    async def __call__(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        # In a thread: the gateway serves from this test's event loop.
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "kubelambda", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=cwd,
            timeout=240,
        )

    async def ok(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        done = await self(*args, cwd=cwd)
        assert done.returncode == 0, (
            f"kubelambda {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
        return done


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    # Progress lines (==> ...) may come first; the error is the last two lines.
    lines = done.stderr.strip().splitlines()
    assert all(line.startswith(("==> ", "    ")) for line in lines[:-2]), done.stderr
    assert lines[-2].startswith("kubelambda: error: "), done.stderr
    assert lines[-1].startswith("hint: "), done.stderr
    for word in words:
        assert word in done.stderr


async def test_python_function_from_init_to_delete(env: Env, tmp_path: Path) -> None:
    cli = Cli(env.cluster, env.url, tmp_path / "state")
    folder = tmp_path / "hello"

    done = await cli.ok("init", "python3.11", str(folder), "--name", "hello")
    assert (folder / "app.py").exists()
    assert (folder / "function.yaml").exists()
    assert "kubelambda deploy" in done.stdout

    deployed = await cli.ok("deploy", str(folder), "-n", env.namespace)
    assert f"Function {env.namespace}/hello is Ready" in deployed.stdout
    assert "inline code" in deployed.stderr
    assert "Created Function" in deployed.stderr
    fn = await env.kube.get(
        resource_path("kubelambda.io/v1alpha1", "functions", namespace=env.namespace, name="hello")
    )
    assert set(fn["spec"]["code"]["inline"]) == {"app.py"}
    assert "kubelambda-cli" in {m["manager"] for m in fn["metadata"]["managedFields"]}

    invoked = await cli.ok("invoke", f"{env.namespace}/hello", "--payload", '{"name": "cli"}')
    answer = json.loads(invoked.stdout)
    assert answer["message"] == "Hello, cli!"
    assert invoked.stderr.startswith("status 200")
    request_id = answer["requestId"]
    (tmp_path / "event.json").write_text('{"name": "file"}')
    again = await cli.ok("invoke", "hello", "-n", env.namespace, "--payload", f"@{tmp_path / 'event.json'}")
    assert json.loads(again.stdout)["message"] == "Hello, file!"

    # logs --request-id: only that request's START..REPORT block, from whichever pod served it.
    async def block() -> str:
        return (await cli.ok("logs", "hello", "-n", env.namespace, "--request-id", request_id)).stdout

    text = await wait_for(
        block, lambda out: "REPORT RequestId" in out, what="the request's REPORT line", timeout=60
    )
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].startswith(f"START RequestId: {request_id}"), text
    assert lines[-1].startswith(f"REPORT RequestId: {request_id}"), text
    assert any("Greeting cli" in line for line in lines), text
    assert "Greeting file" not in text
    # invoke --async: an Event invocation; its request id (stdout) finds its log block once it has run.
    queued = await cli.ok("invoke", f"{env.namespace}/hello", "--async", "--payload", '{"name": "event"}')
    event_id = queued.stdout.strip()
    assert len(event_id) == 36, queued.stdout
    assert "status 202" in queued.stderr

    async def event_block() -> str:
        return (await cli.ok("logs", "hello", "-n", env.namespace, "--request-id", event_id)).stdout

    event_text = await wait_for(
        event_block, lambda out: "REPORT RequestId" in out, what="the Event's REPORT line", timeout=60
    )
    assert "Greeting event" in event_text
    everything = (await cli.ok("logs", "hello", "-n", env.namespace)).stdout
    assert "Greeting cli" in everything
    assert "Greeting file" in everything

    # logs --follow sees a new invocation's lines as they are written.
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubelambda", "logs", "hello", "-n", env.namespace, "--follow",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=cli.env,
    )  # fmt: skip
    try:
        await cli.ok("invoke", f"{env.namespace}/hello", "--payload", '{"name": "follow"}')
        seen: list[str] = []
        assert follower.stdout is not None
        while not any("Greeting follow" in line for line in seen):
            line = await asyncio.wait_for(follower.stdout.readline(), timeout=60)
            assert line, f"logs --follow ended: {seen}"
            seen.append(line.decode())
        assert seen[-1].startswith("[hello-") or seen[-1].startswith("[warm-pool-"), seen[-1]
    finally:
        follower.terminate()
        await follower.wait()

    listed = await cli.ok("list", "-n", env.namespace)
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "READY", "INSTANCES", "RUNTIME", "AGE"]
    assert row.split()[:2] == ["hello", "True"], row
    assert "python3.11" in row
    as_json = json.loads((await cli.ok("list", "-n", env.namespace, "-o", "json")).stdout)
    assert [item["metadata"]["name"] for item in as_json["items"]] == ["hello"]
    as_yaml = yaml.safe_load((await cli.ok("list", "-n", env.namespace, "-o", "yaml")).stdout)
    assert as_yaml["items"][0]["spec"]["runtime"] == "python3.11"

    env.apply(
        {
            "apiVersion": "kubelambda.io/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "every-hour"},
            "spec": {"function": "hello", "schedule": {"expression": "rate(1 hour)"}},
        }
    )
    described = (await cli.ok("describe", f"{env.namespace}/hello")).stdout
    for expected in (
        "Name:",
        "hello",
        "Runtime:",
        "python3.11",
        "app.handler",
        "Conditions:",
        "Ready",
        "Triggers:",
        "every-hour",
        "schedule",
        "Events:",
    ):
        assert expected in described, described
    as_doc = json.loads((await cli.ok("describe", "hello", "-n", env.namespace, "-o", "json")).stdout)
    assert as_doc["function"]["metadata"]["name"] == "hello"
    assert [t["metadata"]["name"] for t in as_doc["triggers"]] == ["every-hour"]

    deleted = await cli.ok("delete", "hello", "-n", env.namespace, "--wait")
    assert deleted.stdout.strip() == f"Deleted Function {env.namespace}/hello"
    assert (
        await env.kube.get_or_none(
            resource_path("kubelambda.io/v1alpha1", "functions", namespace=env.namespace, name="hello")
        )
        is None
    )
    assert_one_line_error(
        await cli("delete", "hello", "-n", env.namespace), 1, "not found", "kubelambda list"
    )
    await cli.ok("delete", "hello", "-n", env.namespace, "--ignore-not-found")
    assert_one_line_error(await cli("describe", "hello", "-n", env.namespace), 1, "not found")
    missing = await cli("invoke", f"{env.namespace}/hello")
    assert missing.returncode == 1
    assert "status 404" in missing.stderr


async def test_nodejs_function_as_a_zip_in_a_bucket(env: Env, s3: S3Server, tmp_path: Path) -> None:
    cli = Cli(
        env.cluster,
        env.url,
        tmp_path / "state",
        KUBELAMBDA_BUCKET="functions",
        KUBELAMBDA_S3_ENDPOINT=s3.endpoint,
        AWS_ACCESS_KEY_ID="any",
        AWS_SECRET_ACCESS_KEY="any",
    )
    folder = tmp_path / "hello-node"
    await cli.ok("init", "nodejs20", str(folder))
    deployed = await cli.ok("deploy", str(folder), "-n", env.namespace, "--zip")
    assert "Uploading a" in deployed.stderr
    assert "s3://functions/" in deployed.stderr
    fn = await env.kube.get(
        resource_path("kubelambda.io/v1alpha1", "functions", namespace=env.namespace, name="hello-node")
    )
    code = fn["spec"]["code"]["s3"]
    assert code["bucket"] == "functions"
    assert code["endpoint"] == s3.endpoint
    assert len(code["sha256"]) == 64

    invoked = await cli.ok("invoke", f"{env.namespace}/hello-node", "--payload", '{"name": "zip"}', "--log")
    assert json.loads(invoked.stdout)["message"] == "Hello, zip!"
    assert "REPORT RequestId:" in invoked.stderr

    # Redeploying the same code keeps the same object and generation: nothing to roll.
    before = fn["metadata"]["generation"]
    await cli.ok("deploy", str(folder), "-n", env.namespace, "--zip")
    fn = await env.kube.get(
        resource_path("kubelambda.io/v1alpha1", "functions", namespace=env.namespace, name="hello-node")
    )
    assert fn["metadata"]["generation"] == before
    await cli.ok("delete", f"{env.namespace}/hello-node")


COMPILED = ("java17", "go")


@pytest.mark.parametrize("runtime", COMPILED)
async def test_compiled_scaffolds_build_deploy_and_answer(
    env: Env, s3: S3Server, tmp_path: Path, runtime: str
) -> None:
    cli = Cli(
        env.cluster,
        env.url,
        tmp_path / "state",
        KUBELAMBDA_BUCKET="compiled",
        KUBELAMBDA_S3_ENDPOINT=s3.endpoint,
    )
    folder = tmp_path / f"hello-{runtime}"
    await cli.ok("init", runtime, str(folder))
    deployed = await cli.ok("deploy", str(folder), "-n", env.namespace)
    assert "Building with" in deployed.stderr
    assert "s3://compiled/" in deployed.stderr
    invoked = await cli.ok("invoke", f"{env.namespace}/hello-{runtime}", "--payload", '{"name": "compiled"}')
    assert json.loads(invoked.stdout)["message"] == "Hello, compiled!"


async def test_every_scaffold_is_a_valid_function(env: Env, tmp_path: Path) -> None:
    cli = Cli(env.cluster, env.url, tmp_path / "state")

    async def validate(runtime: str) -> None:
        folder = tmp_path / runtime.replace(".", "")
        await cli.ok("init", runtime, str(folder))
        done = await cli.ok("deploy", str(folder), "-n", env.namespace, "--dry-run")
        assert "is valid (server-side dry run" in done.stdout, done.stdout + done.stderr

    # java17 and go are built and deployed for real above (their builds dominate the time; java21 has the same
    # scaffold as java17); the rest here.
    interpreted = [r for r in RUNTIMES if TEMPLATE_OF[r] not in {TEMPLATE_OF[c] for c in COMPILED}]
    for pair in (interpreted[i : i + 2] for i in range(0, len(interpreted), 2)):
        await asyncio.gather(*(validate(runtime) for runtime in pair))
    listed = await cli.ok("list", "-n", env.namespace)
    assert listed.stdout == ""
    assert "No Functions" in listed.stderr


async def test_errors_are_one_line_with_a_hint_and_a_meaningful_exit_code(env: Env, tmp_path: Path) -> None:
    cli = Cli(env.cluster, env.url, tmp_path / "state")
    usage = await cli("init", "cobol", str(tmp_path / "x"))
    assert usage.returncode == 2
    assert "invalid choice" in usage.stderr

    folder = tmp_path / "go-fn"
    await cli.ok("init", "go", str(folder))
    assert_one_line_error(await cli("init", "go", str(folder)), 2, "not empty", "--force")
    # A Go binary cannot be inline code, and there is no bucket.
    assert_one_line_error(await cli("deploy", str(folder), "-n", env.namespace), 2, "no bucket", "--bucket")
    assert_one_line_error(
        await cli("deploy", str(tmp_path / "nothing")), 2, "no function.yaml", "kubelambda init"
    )

    bad = tmp_path / "bad"
    await cli.ok("init", "python3.13", str(bad))
    manifest = yaml.safe_load((bad / "function.yaml").read_text())
    manifest["spec"]["memoryMB"] = 64
    (bad / "function.yaml").write_text(yaml.safe_dump(manifest))
    assert_one_line_error(
        await cli("deploy", str(bad), "-n", env.namespace), 1, "was refused", "memoryMB", "function.yaml"
    )

    # A misspelt field is refused (fieldValidation=Strict), not silently dropped.
    manifest["spec"]["memoryMb"] = manifest["spec"].pop("memoryMB")
    (bad / "function.yaml").write_text(yaml.safe_dump(manifest))
    assert_one_line_error(await cli("deploy", str(bad), "-n", env.namespace), 1, "was refused", "memoryMb")

    assert_one_line_error(await cli("invoke", "x", "--payload", "{nope"), 2, "not JSON")
    gone = Cli(env.cluster, env.url, tmp_path / "state", KUBECONFIG=str(tmp_path / "missing.yaml"))
    assert_one_line_error(await gone("list"), 1, "does not exist")


async def test_the_gateway_is_found_through_the_kubeconfigs_cluster(env: Env, tmp_path: Path) -> None:
    """No --endpoint-url, no $KUBELAMBDA_GATEWAY_URL, no local platform: `invoke` asks the cluster $KUBECONFIG
    points at for its gateway Service (the chart's labels; the URL from outside in the annotation
    kubelambda.io/gateway-url, docs/cli.md#finding-the-gateway), and names what it tried when there is none."""
    cli = Cli(env.cluster, env.url, tmp_path / "state", XDG_STATE_HOME=str(tmp_path / "xdg"))
    del cli.env["KUBELAMBDA_GATEWAY_URL"]
    folder = tmp_path / "found"
    await cli.ok("init", "python3.11", str(folder), "--name", "found")
    await cli.ok("deploy", str(folder), "-n", env.namespace)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kubelambda-gateway",
            "labels": {"app.kubernetes.io/name": "kubelambda", "app.kubernetes.io/component": "gateway"},
            "annotations": {"kubelambda.io/gateway-url": env.url},
        },
        "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 8080}]},
    }
    env.apply(service)
    try:
        invoked = await cli.ok("invoke", f"{env.namespace}/found", "--payload", '{"name": "found"}')
        assert json.loads(invoked.stdout)["message"] == "Hello, found!"
        # Without the annotation a ClusterIP Service cannot be reached from here: one line naming what was tried.
        env.cluster.kubectl(
            "annotate", "service", "kubelambda-gateway", "-n", env.namespace, "kubelambda.io/gateway-url-"
        )
        unreachable = await cli("invoke", f"{env.namespace}/found")
        assert_one_line_error(
            unreachable,
            2,
            "no gateway for the cluster at https://127.0.0.1:",
            "(kubeconfig from $KUBECONFIG)",
            "no running local platform under",
            f"Service {env.namespace}/kubelambda-gateway is ClusterIP: not reachable from outside the cluster",
            "--endpoint-url",
            "kubelambda.io/gateway-url",
        )
    finally:
        env.cluster.kubectl(
            "delete", "service", "kubelambda-gateway", "-n", env.namespace, "--ignore-not-found"
        )
    gone = await cli("invoke", f"{env.namespace}/found")
    assert_one_line_error(
        gone, 2, "Services labelled app.kubernetes.io/name=kubelambda,app.kubernetes.io/component=gateway"
    )


def start_watch(folder: Path, namespace: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kubelambda", "deploy", str(folder), "-n", namespace, "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


async def test_deploy_watch_redeploys_a_saved_change_and_the_next_invoke_runs_it(
    env: Env, tmp_path: Path
) -> None:
    import threading
    import time

    cli = Cli(env.cluster, env.url, tmp_path / "state")
    folder = tmp_path / "watched"
    await cli.ok("init", "python3.11", str(folder), "--name", "watched")
    watcher = start_watch(folder, env.namespace, cli.env)
    said: list[str] = []
    assert watcher.stdout is not None
    stream = watcher.stdout
    reader = threading.Thread(target=lambda: said.extend(iter(stream.readline, "")), daemon=True)
    reader.start()

    async def output() -> str:
        return "".join(said)

    try:
        await wait_for(
            output, lambda out: "Watching" in out, what="the first deploy, then watching", timeout=120
        )
        assert "is Ready" in "".join(said)
        # Warm: an instance runs the old code when the change is saved.
        first = await cli.ok("invoke", f"{env.namespace}/watched", "--payload", '{"name": "w"}')
        assert json.loads(first.stdout)["message"] == "Hello, w!"
        mark = len("".join(said))
        saved = time.monotonic()
        (folder / "app.py").write_text(
            "def handler(event, context):\n    return {'message': 'Changed, ' + event['name'] + '!'}\n"
        )
        await wait_for(
            output, lambda out: "Redeployed in" in out[mark:], what="the redeploy of the change", timeout=120
        )
        second = await cli.ok("invoke", f"{env.namespace}/watched", "--payload", '{"name": "w"}')
        answered = time.monotonic() - saved
        assert json.loads(second.stdout)["message"] == "Changed, w!", "".join(said)[mark:]
        assert "Changed: app.py; redeploying" in "".join(said)[mark:]
        print(f"\nsaved -> the next invoke answered by the new code: {answered:.2f} s")
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)


def test_local_invoke_runs_a_folder_once_without_a_cluster(tmp_path: Path) -> None:
    folder = tmp_path / "here"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBELAMBDA_", "KUBECONFIG"))}
    env["HOME"] = str(tmp_path / "home")  # no cluster to be found anywhere
    env["KUBELAMBDA_CACHE"] = os.environ.get("KUBELAMBDA_CACHE") or str(Path.home() / ".cache" / "kubelambda")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kubelambda", *args], capture_output=True, text=True, env=env, timeout=240
        )

    assert run("init", "python3.11", str(folder)).returncode == 0
    done = run("local", "invoke", str(folder), "--payload", '{"name": "local"}')
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["message"] == "Hello, local!"
    assert "status 200" in done.stderr
    assert "Greeting local" in done.stderr  # the log tail
    assert "REPORT RequestId:" in done.stderr
    (folder / "app.py").write_text(
        "def handler(event, context):\n    raise ValueError('no ' + event['name'])\n"
    )
    failed = run("local", "invoke", str(folder), "--payload", '{"name": "luck"}')
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert json.loads(failed.stdout)["errorMessage"] == "no luck"
    assert "(Unhandled)" in failed.stderr
    missing = run("local", "invoke", str(tmp_path / "nowhere"))
    assert_one_line_error(missing, 2, "no function.yaml")
