"""One local platform found from any folder: its state under $XDG_STATE_HOME, named platforms side by side,
every endpoint in dev.json, ports judged free as servers bind them, and an apply error's back-off."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import socket
from pathlib import Path

import pytest

from kubelambda.cli import main
from kubelambda.cli._common import CliError, default_state_dir, resolve_gateway, state_dir_of
from kubelambda.cli.dev import FIXED_PORTS
from kubelambda.cli.platform import DEFAULT_NATS_URL, nats_url_of
from kubelambda.devcluster import DevState
from kubelambda.devcluster._platform import DEFAULT_GATEWAY_PORT, DEFAULT_NATS_PORT
from kubelambda.devcluster._ports import bindable, fixed_ports_held
from kubelambda.operator._reconcile import APPLY_RETRY_MAX, APPLY_RETRY_MIN, apply_retry_seconds


def test_the_state_is_per_user_and_per_name_not_per_folder(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home")}
    assert default_state_dir(env) == str(tmp_path / "home/.local/state/kubelambda/default")
    assert default_state_dir({**env, "XDG_STATE_HOME": "/xdg"}) == "/xdg/kubelambda/default"
    assert default_state_dir({**env, "KUBELAMBDA_PLATFORM_NAME": "b"}).endswith("/kubelambda/b")
    assert default_state_dir({**env, "KUBELAMBDA_STATE_DIR": "/s"}) == "/s"
    # An explicit name wins over $KUBELAMBDA_STATE_DIR; --state-dir over both.
    named = argparse.Namespace(state_dir=None, platform_name="staging")
    assert state_dir_of(named, {**env, "KUBELAMBDA_STATE_DIR": "/s"}) == Path(env["HOME"]).joinpath(
        ".local/state/kubelambda/staging"
    )
    explicit = argparse.Namespace(state_dir=str(tmp_path / "x"), platform_name="staging")
    assert state_dir_of(explicit, env) == tmp_path / "x"
    with pytest.raises(CliError, match=r"bad platform name '\.\./up'") as raised:
        state_dir_of(argparse.Namespace(state_dir=None, platform_name="../up"), env)
    assert raised.value.code == 2


def test_invoke_finds_the_platform_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "xdg" / "kubelambda" / "default"
    state.mkdir(parents=True)
    (state / "kubeconfig").write_text("{}")
    DevState(
        state="running",
        pid=1,
        kubeconfig=str(state / "kubeconfig"),
        gateway_url="http://gw:8090",
        nats_url="nats://127.0.0.1:4333",
    ).write(state)
    elsewhere = tmp_path / "some" / "project"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    nothing = argparse.Namespace(state_dir=None, platform_name=None, endpoint_url=None, nats_url=None)
    assert resolve_gateway(nothing, env=env, home=tmp_path / "nohome") == "http://gw:8090"
    assert nats_url_of(nothing, env) == (
        "nats://127.0.0.1:4333",
        "the local platform (kubelambda dev status)",
    )
    assert nats_url_of(nothing, {"HOME": str(tmp_path / "nohome")}) == (DEFAULT_NATS_URL, "the default")
    assert nats_url_of(nothing, {**env, "KUBELAMBDA_GATEWAY_NATS_URL": "nats://e:1"})[0] == "nats://e:1"


def test_dev_status_lists_every_endpoint_and_what_moved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    DevState(
        state="running",
        pid=os.getpid(),
        gateway_url="http://127.0.0.1:20001",
        nats_url="nats://127.0.0.1:20002",
        moved=["gateway: port 8090 was taken (…); it listens at http://127.0.0.1:20001"],
    ).write(tmp_path)
    assert main(["dev", "status", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gateway:     http://127.0.0.1:20001" in out
    assert "nats:        nats://127.0.0.1:20002" in out
    assert "moved:       gateway: port 8090 was taken" in out
    assert f"state dir:   {tmp_path}" in out


def test_a_port_in_time_wait_is_free_to_a_server() -> None:
    """After a server stopped, its port lingers in TIME_WAIT (~60 s): a bind with SO_REUSEADDR (as every
    server binds) succeeds, so the fixed port (8090, 4222) is kept instead of moved."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
    client.recv(1)
    client.close()
    server.close()
    # The check as it was, without SO_REUSEADDR: the port looks taken.
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):
        plain.bind(("127.0.0.1", port))
    assert bindable("127.0.0.1", port)
    with socket.create_server(("127.0.0.1", 0)) as listening:  # a listening port is taken, as ever
        assert not bindable("127.0.0.1", listening.getsockname()[1])


def test_choosing_a_fixed_port_is_one_step_on_the_machine(tmp_path: Path) -> None:
    """While one platform holds the lock (from "is 8090 free?" until its gateway listens), another cannot take
    it; it can once the first let go. tests/integration/test_dev_cli.py starts two platforms at once."""
    lock = tmp_path / "ports.lock"

    def try_lock() -> bool:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    async def hold() -> tuple[bool, bool]:
        async with fixed_ports_held(lock):
            during = try_lock()
        return during, try_lock()

    assert asyncio.run(hold()) == (False, True)
    assert dict(FIXED_PORTS) == {"gateway": DEFAULT_GATEWAY_PORT, "nats": DEFAULT_NATS_PORT}


def test_dev_up_refuses_a_port_that_is_none(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dev", "up", "--gateway-port", "80900"])
    assert exited.value.code == 2
    assert (
        "argument --gateway-port: port must be a number from 1 to 65535, not '80900'"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("ready", "now", "expected"),
    [
        (None, "2026-01-01T00:00:00Z", APPLY_RETRY_MIN),
        (("ScaledToZero", "2026-01-01T00:00:00Z"), "2026-01-01T00:10:00Z", APPLY_RETRY_MIN),
        (("ApplyFailed", "2026-01-01T00:00:00Z"), "2026-01-01T00:00:02Z", APPLY_RETRY_MIN),
        (("ApplyFailed", "2026-01-01T00:00:00Z"), "2026-01-01T00:00:40Z", 40.0),
        (("ApplyFailed", "2026-01-01T00:00:00Z"), "2026-01-01T05:00:00Z", APPLY_RETRY_MAX),
    ],
    ids=["first", "other-reason", "min", "doubles", "max"],
)
def test_a_refused_apply_is_retried_with_a_growing_back_off(
    ready: tuple[str, str] | None, now: str, expected: float
) -> None:
    conditions = (
        []
        if ready is None
        else [{"type": "Ready", "status": "False", "reason": ready[0], "lastTransitionTime": ready[1]}]
    )
    assert apply_retry_seconds({"conditions": conditions}, now) == expected


def test_doctor_names_each_piece_and_what_a_missing_one_costs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubelambda.cli import doctor

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        monkeypatch.setattr(doctor, "FIXED_PORTS", {"the gateway": port})
        monkeypatch.setenv("PATH", "/nonexistent")  # no go, no ip, no docker: each says what it costs
        code = main(["doctor"])
    out = capsys.readouterr().out
    for name in (
        "python",
        "platform files",
        "go",
        "ip",
        "root or CAP_NET_ADMIN",
        "cgroups",
        "docker/containerd",
    ):
        assert f" {name} " in out, out
    assert "missing  go " in out
    assert "dev up cannot start" in out
    assert f"warn     port {port} " in out
    assert "the gateway listens on another port" in out
    assert code == 1  # Go is missing: the platform cannot start


def test_dev_env_prints_what_a_clean_shell_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    DevState(
        state="running",
        pid=os.getpid(),
        kubeconfig="/k/kubeconfig",
        kubectl="/bins/v1/kubectl",
        gateway_url="http://127.0.0.1:8090",
        aws_access_key_id="KLAKX",
        aws_secret_access_key="s",
    ).write(tmp_path)
    assert main(["dev", "env", "--state-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "export KUBECONFIG=/k/kubeconfig"
    assert lines[1].startswith("export PATH=/bins/v1:")
    assert lines[1].endswith(":$PATH")
    assert "export AWS_ACCESS_KEY_ID=KLAKX" in lines
    assert "export GW=http://127.0.0.1:8090" in lines
    assert main(["dev", "env", "--state-dir", str(tmp_path / "none")]) == 3
    assert "no running local platform" in capsys.readouterr().err
