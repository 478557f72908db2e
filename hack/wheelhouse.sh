#!/usr/bin/env bash
# The wheels of every pin in pyproject.toml (dependencies, all extras, the build system's), made once per Python
# version and set of pins with pip, and cached:
#   ~/.cache/kubelambda/wheels/<cpXY>-<hash of the pins>/
# `make venv` installs from it without the package index, and hack/images.sh gives it to the control-plane image's
# build (Debian bookworm: Python 3.11), so that a machine fetches each package once, not once per venv and image.
# Unpinned transitive dependencies stay at the versions resolved when the folder was made, until a pin changes.
# Prints the folder on stdout; pip's output goes to stderr.
#   PYTHON             the interpreter whose pip makes the wheels (default python3); its version names the folder
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
python="${PYTHON:-python3}"

pins="$("$python" - "$root/pyproject.toml" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
project = data["project"]
pins = set(data["build-system"]["requires"]) | set(project["dependencies"])
for extra in project.get("optional-dependencies", {}).values():
    pins |= set(extra)
print("\n".join(sorted(pins)))
PY
)"
# The Python runtime's private orjson (the runtime-python extra; hack/python-runtime.sh): wheels for every Python
# runtime of the runtime table, not only for this Python, for this machine's architecture.
runtime_pins="$("$python" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["runtime-python"]))' "$root/pyproject.toml")"
runtime_pythons="$("$python" - "$root" <<'PY'
import importlib.util
import sys

spec = importlib.util.spec_from_file_location("table", f"{sys.argv[1]}/operator/kubelambda/runtimes/table.py")
table = sys.modules["table"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(table)
print(" ".join(r.version for r in table.RUNTIMES.values() if r.family == "python"))
PY
)"
tag="$("$python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
dir="$cache/wheels/$tag-$(sha256sum <<<"$pins $runtime_pythons $(uname -m)" | cut -c1-16)"

if [[ ! -f "$dir/.complete" ]]; then
  mkdir -p "$cache/wheels"
  exec 9>"$cache/wheels/.lock"
  flock 9
  if [[ ! -f "$dir/.complete" ]]; then
    echo "wheelhouse: pip wheel of $(wc -l <<<"$pins") pins into $dir" >&2
    started=$SECONDS
    rm -rf "$dir.tmp"
    # The wheelhouses of earlier pins for the same Python: pip takes an unchanged package from there.
    links=()
    for old in "$cache/wheels/$tag"-*/; do
      [[ -f "$old/.complete" ]] && links+=(--find-links "$old")
    done
    "$python" -m pip wheel --quiet --disable-pip-version-check "${links[@]}" --wheel-dir "$dir.tmp" -r /dev/stdin <<<"$pins" >&2
    for v in $runtime_pythons; do
      "$python" -m pip download --quiet --disable-pip-version-check "${links[@]}" --no-deps --only-binary=:all: \
        --python-version "$v" --implementation cp --platform "manylinux_2_17_$(uname -m)" \
        --platform "manylinux2014_$(uname -m)" --dest "$dir.tmp" -r /dev/stdin <<<"$runtime_pins" >&2
    done
    touch "$dir.tmp/.complete"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    echo "wheelhouse: $(find "$dir" -name '*.whl' | wc -l) wheels in $((SECONDS - started)) s" >&2
  fi
fi
echo "$dir"
