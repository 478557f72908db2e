#!/usr/bin/env bash
# The Python runtime's folder on this machine (LAMBDA_RUNTIME_DIR of the local node's Python runtimes), made once per
# checkout, pin and set of versions, and cached; prints it on stdout:
#   ~/.cache/kubelambda/runtimes/python-<hash>/bootstrap.py             a link to $BOOTSTRAP
#   ~/.cache/kubelambda/runtimes/python-<hash>/_vendor/python<X.Y>/     the runtime's private orjson, per version
# installed from the wheelhouse (hack/wheelhouse.sh fetches the wheels of pyproject's runtime-python extra for every
# Python runtime), without the package index. bootstrap.py imports it from there, out of its handlers' sight.
#   hack/python-runtime.sh VERSION...   e.g. 3.11 3.12 3.13 (kubelambda.runtimes passes the runtime table's)
#   PYTHON             the interpreter whose wheelhouse and pip are used (default python3)
#   BOOTSTRAP          the runtime client to link (default runtime-images/python/bootstrap.py of this checkout)
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
python="${PYTHON:-python3}"
bootstrap="${BOOTSTRAP:-$root/runtime-images/python/bootstrap.py}"
(($#)) || { echo "usage: $0 VERSION... (e.g. 3.11 3.12 3.13)" >&2; exit 2; }
for v in "$@"; do
  [[ "$v" =~ ^3\.[0-9]+$ ]] || { echo "python-runtime: version '$v' is not of the form 3.X" >&2; exit 2; }
done

pins="$("$python" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["runtime-python"]))' "$root/pyproject.toml")"
arch="$(uname -m)"
dir="$cache/runtimes/python-$(sha256sum <<<"$bootstrap $pins $* $arch" | cut -c1-16)"

if [[ ! -f "$dir/.complete" ]]; then
  wheels="$(PYTHON="$python" bash "$root/hack/wheelhouse.sh")"
  mkdir -p "$cache/runtimes"
  exec 9>"$cache/runtimes/.python.lock"
  flock 9
  if [[ ! -f "$dir/.complete" ]]; then
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp/_vendor"
    for v in "$@"; do
      "$python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$wheels" --no-deps \
        --only-binary=:all: --no-compile --python-version "$v" --implementation cp \
        --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch" \
        --target "$dir.tmp/_vendor/python$v" -r /dev/stdin <<<"$pins" >&2
    done
    ln -s "$bootstrap" "$dir.tmp/bootstrap.py"
    touch "$dir.tmp/.complete"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    echo "python-runtime: $pins for Python $* in $dir" >&2
  fi
fi
echo "$dir"
