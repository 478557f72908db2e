"""``kubelambda dev up / status / down``, and no process outliving the cluster however it is stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import psutil
import pytest

from kltest import Cluster, alive, kubectl_bin, start_cluster
from kltest.platform import REPO
from kubelambda import natsauth
from kubelambda.devcluster._ports import free_port

pytestmark = pytest.mark.integration


def cli(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubelambda", "dev", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=240,
    )


def kubectl(kubeconfig: str, *args: str, input: str | None = None) -> str:
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    out = subprocess.run(
        [str(kubectl_bin()), *args],
        capture_output=True,
        text=True,
        env=env,
        input=input,
        timeout=120,
        check=True,
    )
    return out.stdout


def sleeper_pod(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]},
        }
    )


def wait_ready(kubeconfig: str, name: str) -> dict[str, object]:
    kubectl(kubeconfig, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=60s")
    pod: dict[str, object] = json.loads(kubectl(kubeconfig, "get", "pod", name, "-o", "json"))
    return pod


def pod_pid(pod: dict[str, object]) -> int:
    status = pod["status"]
    assert isinstance(status, dict)
    return int(status["containerStatuses"][0]["containerID"].removeprefix("local://"))


def lo_addresses() -> str:
    return subprocess.run(["ip", "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout


def addresses_of_running_clusters() -> set[str]:
    """The pod addresses every running local cluster on this machine (``kubelambda dev serve``, whoever started
    it) records in ``<state dir>/pod-addresses.json``."""
    held: set[str] = set()
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        argv = proc.info["cmdline"] or []
        if argv[2:5] != ["kubelambda", "dev", "serve"] or "--state-dir" not in argv[:-1]:
            continue
        record = Path(proc.info["cwd"] or "/", argv[argv.index("--state-dir") + 1]) / "pod-addresses.json"
        try:
            held.update(json.loads(record.read_text()))
        except (OSError, ValueError):  # gone, or being written: the caller asks again
            continue
    return held


STORED_HANDLER = """
import os

def handler(event, context):
    with open(os.path.join(os.path.dirname(__file__), "data", "blob.bin"), "rb") as f:
        return {"blob": f.read().hex(), "version": context.function_version}
"""


def create_function_through_the_code_store(state: dict[str, Any], status: str, tmp_path: Path) -> None:
    """Issue 19 item 4: dev up runs the code store (SeaweedFS) and the gateway uses it, so `aws lambda
    create-function` with a zip no ConfigMap holds (a folder, binary bytes) runs; dev status names the store."""
    store = state["endpoints"]["code store"]
    assert store == state["code_store_url"]
    assert store.startswith("http://127.0.0.1:")
    assert f"code store:  {store}" in status
    assert "code-store" in state["components"]
    archive = tmp_path / "code.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("app.py", STORED_HANDLER)
        out.writestr("data/blob.bin", bytes(range(256)))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": state["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": state["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def aws(*args: str) -> Any:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "aws"), "lambda", *args, "--endpoint-url", state["gateway_url"],
             "--output", "json"],
            capture_output=True, text=True, env=env, timeout=180, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    created = aws(
        "create-function", "--function-name", "stored", "--runtime", "python3.11", "--handler", "app.handler",
        "--role", "arn:aws:iam::default:role/default", "--zip-file", f"fileb://{archive}", "--publish",
    )  # fmt: skip
    assert created["Version"] == "1"
    aws("wait", "published-version-active", "--function-name", "stored", "--qualifier", "1")
    answer = tmp_path / "answer.json"
    invoked = aws("invoke", "--function-name", "stored", "--qualifier", "1", str(answer))
    assert invoked["ExecutedVersion"] == "1"
    assert json.loads(answer.read_text()) == {"blob": bytes(range(256)).hex(), "version": "1"}
    aws("delete-function", "--function-name", "stored")


def wait_dead(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_up_status_down_leave_nothing_behind(tmp_path: Path, cluster: Cluster) -> None:
    # `cluster` (the session's) runs beside this one: stopping this one must not disturb it.
    up = cli("up", state_dir=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "The local cluster is running" in up.stdout
    state = json.loads((tmp_path / "dev.json").read_text())
    assert state["state"] == "running"
    assert Path(state["kubeconfig"]).exists()
    assert state["kubeconfig"] in up.stdout
    status = cli("status", state_dir=tmp_path)
    assert status.returncode == 0
    assert "kube-apiserver" in status.stdout
    assert "limits:      enforced (cgroup v" in status.stdout
    cgroups = [Path(p) for p in json.loads((tmp_path / "cgroups.json").read_text())["parents"].values()]
    assert all(p.is_dir() for p in cgroups)
    again = cli("up", state_dir=tmp_path)
    assert again.returncode == 0
    assert "already running" in again.stdout

    # dev up runs kubelambda too: a Function deployed with kubectl answers `kubelambda invoke` from zero.
    assert state["gateway_url"].startswith("http://127.0.0.1:")
    # With auth on: `kubelambda invoke` signs with the developer key dev up made (docs/security.md).
    assert state["aws_access_key_id"].startswith("KLAK")
    assert (tmp_path / "dev.json").stat().st_mode & 0o777 == 0o600
    assert f"export AWS_ACCESS_KEY_ID={state['aws_access_key_id']}" in status.stdout
    assert {"kubelambda-operator", "kubelambda-gateway"} <= set(state["components"])
    # Every endpoint is in dev.json and `dev status`: NATS too (`kubelambda dlq` finds it there), as its admin user
    # (docs/security.md, "NATS users"), whose password dev.json alone holds (0600).
    assert state["nats_url"].startswith("nats://admin:")
    assert "@127.0.0.1:" in state["nats_url"]
    assert state["endpoints"]["nats"] == natsauth.redacted(state["nats_url"])
    assert state["endpoints"]["gateway"] == state["gateway_url"]
    assert f"nats:        {natsauth.redacted(state['nats_url'])}" in status.stdout
    assert state["nats_url"].split(":")[2].split("@")[0] not in status.stdout
    example = REPO / "examples" / "hello-python3.11" / "function.yaml"
    kubectl(state["kubeconfig"], "apply", "-n", "default", "-f", str(example))
    kubectl(state["kubeconfig"], "wait", "--for=condition=Ready", "fn/hello-python311", "--timeout=90s")
    invoked = subprocess.run(
        [sys.executable, "-m", "kubelambda", "invoke", "default/hello-python311", "--payload", '{"name": "cli"}',
         "--log", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert invoked.returncode == 0, invoked.stdout + invoked.stderr
    assert json.loads(invoked.stdout)["message"] == "Hello, cli!"
    assert "cold start" in invoked.stderr
    assert "REPORT RequestId:" in invoked.stderr
    # The README's `kubelambda logs hello --request-id ID`: from the log store (dev.json's nats_url), which keeps
    # the request's log whichever pod (a warm-pool pod, gone a second later) served it (docs/logs.md).
    assert state["nats_url"].startswith("nats://admin:")
    request_id = invoked.stderr.split("START RequestId: ", 1)[1].split()[0]

    def logs() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kubelambda", "logs", "default/hello-python311", "--request-id", request_id,
             "--from", "store", "--state-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    deadline = time.monotonic() + 30
    stored = logs()
    while "REPORT RequestId:" not in stored.stdout and time.monotonic() < deadline:
        time.sleep(0.2)
        stored = logs()
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert stored.stdout.startswith(f"START RequestId: {request_id}"), stored.stdout + stored.stderr
    assert stored.stdout.splitlines()[-1].startswith(f"REPORT RequestId: {request_id}")

    create_function_through_the_code_store(state, status.stdout, tmp_path)

    kubectl(state["kubeconfig"], "apply", "-f", "-", input=sleeper_pod("sleeper"))
    # A ReplicaSet's pod that the stop ends, whatever the autoscaler did to the function's own instance meanwhile
    # (it may have scaled it to zero before the stop): the restart below must remove it.
    kubectl(state["kubeconfig"], "create", "deployment", "sleepers", "--image=busybox", "--", "sleep", "3600")
    kubectl(state["kubeconfig"], "rollout", "status", "deployment/sleepers", "--timeout=60s")
    pod = wait_ready(state["kubeconfig"], "sleeper")
    pod_ip = pod["status"]["podIP"]  # type: ignore[index]
    assert f"inet {pod_ip}/32" in lo_addresses()
    pids = [*state["components"].values(), pod_pid(pod)]

    down = cli("down", state_dir=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert wait_dead(pids) == []
    # lo is the machine's: another local cluster (the session's beside this one, another xdist worker's, another
    # test run's) may have taken the released address since, and then records it (just after adding it).
    deadline = time.monotonic() + 10
    while f"inet {pod_ip}/32" in lo_addresses() and pod_ip not in addresses_of_running_clusters():
        assert time.monotonic() < deadline, f"{pod_ip} left on lo, and no running local cluster records it"
        time.sleep(0.1)
    assert not any(p.exists() for p in cgroups)
    assert cli("status", state_dir=tmp_path).returncode == 3
    assert state["node_ip"] != cluster.state.node_ip
    assert cluster.kubectl("get", "--raw", "/api/v1/nodes/kubelambda-local/proxy/healthz").stdout == "ok"

    # Started again: the pods the stop ended (the function's instance; its ReplicaSet replaced it) are removed,
    # not left Completed for ever; the bare pod stays, as Kubernetes keeps it.
    log = tmp_path / "logs" / "dev.log"
    mark = log.stat().st_size
    again = cli("up", state_dir=tmp_path)
    try:
        assert again.returncode == 0, again.stdout + again.stderr
        said = log.read_text(errors="replace")[mark:]
        removed = re.search(r"Removed (\d+) pods the last run left terminated", said)
        assert removed is not None, said[-3000:]
        assert int(removed.group(1)) >= 1
        deadline = time.monotonic() + 30
        while ghosts := [
            p["metadata"]["name"]
            for p in json.loads(kubectl(state["kubeconfig"], "get", "pods", "-A", "-o", "json"))["items"]
            if p["status"].get("phase") in ("Succeeded", "Failed")
            and any(o.get("kind") == "ReplicaSet" for o in p["metadata"].get("ownerReferences") or [])
        ]:
            assert time.monotonic() < deadline, f"pods left terminated after a restart: {ghosts}"
            time.sleep(0.2)
        kubectl(state["kubeconfig"], "get", "pod", "sleeper")
    finally:
        assert cli("down", state_dir=tmp_path).returncode == 0


def test_a_killed_supervisor_takes_every_process_with_it_and_restarts_cleanly(tmp_path: Path) -> None:
    first = start_cluster(tmp_path)
    kubeconfig = str(first.kubeconfig)
    kubectl(kubeconfig, "apply", "-f", "-", input=sleeper_pod("survivor"))
    pod = wait_ready(kubeconfig, "survivor")
    first_pid = pod_pid(pod)
    pids = [*first.state.components.values(), first_pid]
    first_cgroups = [Path(p) for p in json.loads((tmp_path / "cgroups.json").read_text())["parents"].values()]
    first.stop(signal.SIGKILL)
    # No cleanup code ran: the kernel's parent-death signal ended every child.
    assert wait_dead(pids) == []
    # Its cgroups outlive it; `dev down` of a cluster that is not running removes them.
    assert all(p.is_dir() for p in first_cgroups)
    down = cli("down", state_dir=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(p.exists() for p in first_cgroups)

    # The same state directory starts again with its data: the pod object is still there and runs again.
    second = start_cluster(tmp_path)
    try:
        # The status in etcd still shows the killed process until the new node reports the new one.
        deadline = time.monotonic() + 60
        pod = wait_ready(str(second.kubeconfig), "survivor")
        while pod_pid(pod) == first_pid and time.monotonic() < deadline:
            time.sleep(0.1)
            pod = wait_ready(str(second.kubeconfig), "survivor")
        assert pod_pid(pod) != first_pid
        assert alive(pod_pid(pod))
        ip = pod["status"]["podIP"]  # type: ignore[index]
        assert lo_addresses().count(f"inet {ip}/32") == 1
    finally:
        assert second.stop(signal.SIGINT) == 0  # Ctrl-C stops it cleanly too
    assert wait_dead([*second.state.components.values(), pod_pid(pod)]) == []


def listens(pid: int, port: int) -> bool:
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr.port == port
        for c in psutil.Process(pid).net_connections(kind="tcp")
    )


@pytest.mark.timeout(900)
def test_two_platforms_started_at_once_never_share_a_fixed_port(tmp_path: Path) -> None:
    """Both find the fixed ports free at the same moment; one keeps them, the other moves and says so, and each
    gateway and NATS listens where its own dev.json says (the race: the loser's readiness check was answered by
    the winner's gateway, and both recorded 8090)."""
    gateway_port, nats_port = free_port(), free_port()
    dirs = [tmp_path / "a", tmp_path / "b"]
    ups = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubelambda",
                "dev",
                "up",
                "--state-dir",
                str(d),
                "--timeout",
                "600",
                "--gateway-port",
                str(gateway_port),
                "--nats-port",
                str(nats_port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for d in dirs
    ]
    try:
        said = [up.communicate(timeout=700)[0] for up in ups]
        for up, out in zip(ups, said, strict=True):
            assert up.returncode == 0, out[-4000:]
        states = [json.loads((d / "dev.json").read_text()) for d in dirs]
        kept = [s for s in states if s["gateway_url"] == f"http://127.0.0.1:{gateway_port}"]
        assert len(kept) == 1, [s["gateway_url"] for s in states]
        (moved,) = [s for s in states if s is not kept[0]]
        assert any(m.startswith(f"gateway: port {gateway_port} was taken") for m in moved["moved"]), moved
        assert f"gateway: port {gateway_port} was taken" in said[states.index(moved)]
        for state in states:
            for url, component in ((state["gateway_url"], "kubelambda-gateway"), (state["nats_url"], "nats")):
                port = int(url.rsplit(":", 1)[1])
                assert listens(state["components"][component], port), (component, url, state["components"])
    finally:
        for up in ups:
            if up.poll() is None:
                up.kill()
        for d in dirs:
            cli("down", state_dir=d)
