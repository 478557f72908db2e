#!/usr/bin/env bash
# make's SHELL for .ci/run (`make SHELL=$PWD/hack/timed-shell.sh ...`): runs each recipe line with bash, as make
# would, then prints on stderr how long it took and when it ended, so that a CI log tells each step's share:
#   [time] 23:41:07 +204 s (exit 0): bash hack/otelcol.sh >/dev/null
# Lines that take under 2 s print nothing (make's own $(shell ...) calls, echo, touch). With
# --output-sync=target the line lands in its target's log.
started=$SECONDS
bash "$@"
rc=$?
if ((SECONDS - started >= 2)); then
  cmd=${*: -1}
  cmd=${cmd%%$'\n'*}
  printf '[time] %(%H:%M:%S)T +%d s (exit %d): %.110s\n' -1 "$((SECONDS - started))" "$rc" "$cmd" >&2
fi
exit "$rc"
