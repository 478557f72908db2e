#!/usr/bin/env bash
# Makes sure a Docker daemon answers on this machine, and starts one if not: installs Debian's docker.io (and
# debootstrap, for hack/debian-bases.sh) when missing, then runs dockerd in the background (PID 1 here is not
# systemd, so nothing starts it at boot). Idempotent: a daemon that already answers is left alone; two callers
# at once serialize on a lock. Progress goes to stderr.
#   KUBELAMBDA_CACHE     cache root (default ~/.cache/kubelambda); the lock lives there
#   DOCKERD_LOG          dockerd's log (default /var/log/kubelambda-dockerd.log)
#   DOCKER_UP_TIMEOUT    seconds to wait for the daemon to answer (default 60)
#   DOCKERD_PIDFILE      the daemon's pid file (default /var/run/docker.pid)
#   DOCKERD_FLAGS        more flags for dockerd, e.g. a second daemon's --host/--data-root/--exec-root (with
#                        DOCKER_HOST for the client; tests/integration/test_docker_up.py starts one so)
# Plain `docker build` / `docker run` (also `--memory`) work without any workaround on this VM; only
# `--privileged` does not (the VM lacks CAP_SYS_RESOURCE), and no image build here needs it.
set -euo pipefail

cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
log="${DOCKERD_LOG:-/var/log/kubelambda-dockerd.log}"
timeout="${DOCKER_UP_TIMEOUT:-60}"
pidfile="${DOCKERD_PIDFILE:-/var/run/docker.pid}"
read -r -a flags <<<"${DOCKERD_FLAGS:-}"
say() { echo "docker-up: $*" >&2; }

# The Debian client (20.10, same API as the daemon) talks to the daemon; a newer client elsewhere on PATH works too.
if docker info >/dev/null 2>&1; then
  say "the Docker daemon answers"
  exit 0
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if ((${#need[@]})); then
  if [[ $(id -u) != 0 ]]; then
    say "error: ${need[*]} missing and this is not root: install them (Debian: apt-get install ${need[*]})"
    exit 1
  fi
  say "installing ${need[*]} (Debian packages)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

if [[ $(id -u) != 0 ]]; then
  say "error: no Docker daemon answers, and starting dockerd needs root"
  exit 1
fi

mkdir -p "$cache"
exec 9>"$cache/docker-up.lock"
flock 9
if docker info >/dev/null 2>&1; then
  say "the Docker daemon answers (started by another caller)"
  exit 0
fi

# A dockerd that is running but not answering yet (starting up): wait for it rather than start a second one.
pid="$(cat "$pidfile" 2>/dev/null || true)"
if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
  say "dockerd (pid $pid) is running; waiting for it to answer"
else
  say "starting dockerd (log: $log)"
  # setsid: the daemon outlives this script and the make that ran it, and gets no terminal signals. It inherits no
  # descriptor beyond 0-2: the lock above (fd 9) or a caller's lock held by a daemon that lives on would make every
  # later caller that found the daemon not yet answering wait on `flock` for ever (a `make -j` started this script
  # twice at once on a machine without a daemon: the second waited until CI's time ran out).
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd="${fd##*/}"
      if ((fd > 2)); then eval "exec $fd>&-"; fi
    done
    exec setsid dockerd --pidfile "$pidfile" "${flags[@]}" >>"$log" 2>&1 </dev/null
  ) &
fi
for ((i = 0; i < timeout * 4; i++)); do
  if docker info >/dev/null 2>&1; then
    say "the Docker daemon answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null), storage $(docker info --format '{{.Driver}}' 2>/dev/null))"
    exit 0
  fi
  sleep 0.25
done
say "error: dockerd did not answer within ${timeout}s; its log ($log) ends with:"
tail -n 20 "$log" >&2 || true
exit 1
