#!/usr/bin/env bash
# Builds the images the chart and the Functions use (`make images`): the control-plane image (Dockerfile at the
# repo root) and the runtime images (runtime-images/<family>/Dockerfile), tagged as the chart's values and the
# operator's runtime table expect: $IMAGE_REGISTRY/kubelambda:$VERSION, $IMAGE_REGISTRY/runtime-<family>:<tag>.
# Then prints each image's size (docker image ls). Progress goes to stderr.
#   hack/images.sh [NAME...]   NAME: kubelambda, runtime-python, runtime-python:3.13, ... (default: all)
#   BASES=auto|debian|official
#     official: the Dockerfiles' defaults (python:*-slim, node:*-slim, eclipse-temurin, ruby:*-slim, golang,
#               maven), for a host that reaches Docker Hub;
#     debian:   no container registry needed: Debian bases bootstrapped here (hack/debian-bases.sh), interpreters
#               from Debian's packages, the agent and the Java runtime client built on the host and copied in.
#               Images of versions no Debian release has (python3.12, nodejs22) need the official base: skipped,
#               and listed as such;
#     auto (default): official when Docker Hub's registry answers, else debian.
#   IMAGE_REGISTRY (default ghcr.io/kubelambda)   VERSION (default: pyproject.toml's)
#   CA_BUNDLE (default $SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt): given to the control-plane image's
#               pip install as a build secret, for hosts behind a TLS-intercepting proxy
#   PLATFORMS, PUSH=1   with docker buildx (official bases): build for several platforms and push.
#   BASE_REPO  the Debian bases' repository (default kubelambda/debian; hack/debian-bases.sh)
#   DOCKER_BUILD_FLAGS  more flags for every build, e.g. --no-cache (a cold build's timing, docs/local-cluster.md)
#   IMAGE_JOBS  builds at a time (default 3)
#   PYTHON      the venv Python whose wheelhouse (hack/wheelhouse.sh) the control-plane image installs from on a
#               Debian base (default .venv/bin/python; used when it is bookworm's Python, 3.11)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
registry="${IMAGE_REGISTRY:-ghcr.io/kubelambda}"
version="${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")}"
bases="${BASES:-auto}"
base_repo="${BASE_REPO:-kubelambda/debian}"
read -r -a extra_flags <<<"${DOCKER_BUILD_FLAGS:-}"
ca_bundle="${CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
say() { echo "images: $*" >&2; }
started=$SECONDS

# name | tag | Dockerfile | context | build args (both ways) | Debian release ("-": needs the official base) |
# build args on a Debian base. Tags follow the runtime table (operator/kubelambda/runtimes/table.py): <family>:<version>.
table="$(cat <<TABLE
kubelambda|$version|Dockerfile|.||bookworm|PACKAGES=python3 BUILD_PACKAGES=python3-venv NATIVE_FROM=native-prebuilt
runtime-python|3.11|runtime-images/python/Dockerfile|runtime-images|PYTHON_VERSION=3.11 VENDOR_FROM=vendor-prebuilt|bookworm|PACKAGES=python3
runtime-python|3.12|runtime-images/python/Dockerfile|runtime-images|PYTHON_VERSION=3.12 VENDOR_FROM=vendor-prebuilt|-|
runtime-python|3.13|runtime-images/python/Dockerfile|runtime-images|PYTHON_VERSION=3.13 VENDOR_FROM=vendor-prebuilt|trixie|PACKAGES=python3
runtime-nodejs|18|runtime-images/nodejs/Dockerfile|runtime-images|NODE_VERSION=18|bookworm|PACKAGES=nodejs
runtime-nodejs|20|runtime-images/nodejs/Dockerfile|runtime-images|NODE_VERSION=20|trixie|PACKAGES=nodejs
runtime-nodejs|22|runtime-images/nodejs/Dockerfile|runtime-images|NODE_VERSION=22|-|
runtime-java|17|runtime-images/java/Dockerfile|runtime-images|JAVA_VERSION=17|bookworm|PACKAGES=openjdk-17-jre-headless CLIENT_FROM=client-prebuilt
runtime-java|21|runtime-images/java/Dockerfile|runtime-images|JAVA_VERSION=21|trixie|PACKAGES=openjdk-21-jre-headless CLIENT_FROM=client-prebuilt
runtime-ruby|3.1|runtime-images/ruby/Dockerfile|runtime-images|RUBY_VERSION=3.1|bookworm|PACKAGES=ruby
runtime-ruby|3.3|runtime-images/ruby/Dockerfile|runtime-images|RUBY_VERSION=3.3|trixie|PACKAGES=ruby
runtime-provided|latest|runtime-images/provided/Dockerfile|runtime-images||bookworm|
runtime-provided|go|runtime-images/provided/Dockerfile|runtime-images|RUNTIME_NAME=go|bookworm|
TABLE
)"

selected() { # name tag
  (($# >= 2)) || return 1
  ((${#wanted[@]})) || return 0
  local w
  for w in "${wanted[@]}"; do
    [[ "$w" == "$1" || "$w" == "$1:$2" ]] && return 0
  done
  return 1
}
wanted=("$@")
known="$(cut -d'|' -f1,2 <<<"$table" | tr '|' ':')"
for w in "${wanted[@]}"; do
  if ! grep -qxF -- "$w" <<<"$known" && ! grep -q "^${w}:" <<<"$known"; then
    say "error: unknown image '$w'; known: $(tr '\n' ' ' <<<"$known")"
    exit 2
  fi
done

bash "$root/hack/docker-up.sh"

# The build command: docker buildx when installed, else the daemon's BuildKit through a client that still has
# the classic `DOCKER_BUILDKIT=1 docker build` (Debian's 20.10; newer clients want buildx for BuildKit).
build=()
for client in "${DOCKER:-docker}" /usr/bin/docker; do
  command -v "$client" >/dev/null 2>&1 || continue
  if "$client" buildx version >/dev/null 2>&1; then
    build=("$client" buildx build)
    [[ -n "${PLATFORMS:-}" ]] && build+=(--platform "$PLATFORMS")
    if [[ -n "${PUSH:-}" ]]; then build+=(--push); else build+=(--load); fi
    break
  fi
  major="$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)"
  if [[ "$major" =~ ^[0-9]+$ ]] && ((major < 23)); then
    build=(env DOCKER_BUILDKIT=1 "$client" build)
    break
  fi
done
if ((${#build[@]} == 0)); then
  say "error: no way to build with BuildKit: install docker buildx, or Debian's docker.io (its 20.10 client)"
  exit 1
fi
if [[ -n "${PUSH:-}${PLATFORMS:-}" && "${build[1]}" != buildx ]]; then
  say "error: PLATFORMS/PUSH need docker buildx"
  exit 1
fi

if [[ "$bases" == auto ]]; then
  # Any HTTP answer (401 without a token) means the registry is reachable.
  code="$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' https://registry-1.docker.io/v2/ || true)"
  if [[ "$code" =~ ^[1-5][0-9][0-9]$ ]]; then bases=official; else bases=debian; fi
  say "BASES=auto: Docker Hub's registry $([[ $bases == official ]] && echo answers || echo "does not answer"): $bases bases"
fi
case "$bases" in
  official | debian) ;;
  *) say "error: BASES=$bases: want auto, debian or official"; exit 2 ;;
esac

# background NAME COMMAND...: runs COMMAND in the background, its stdout to $work/NAME.out, stderr to
# $work/NAME.err; collect NAME waits for it and fails with its stderr when it failed.
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
declare -A pids=()
background() {
  local name=$1; shift
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids[$name]=$!
}
collect() {
  if ! wait "${pids[$1]}"; then
    say "error: $1 failed:"
    cat "$work/$1.err" >&2
    exit 1
  fi
  cat "$work/$1.err" >&2
}

runtime_context="$root/runtime-images"
kubelambda_context="$root"
wheels=""
if [[ "$bases" == debian ]]; then
  # The Debian bases (network: debootstrap), the agent and the Java runtime client (compiled) and the wheelhouse
  # (cached by make venv) side by side.
  releases="$(while IFS='|' read -r name tag _ _ _ release _; do
    if selected "$name" "$tag" && [[ "$release" != - ]]; then echo "$release"; fi; done <<<"$table" | sort -u | tr '\n' ' ')"
  # shellcheck disable=SC2086
  [[ -n "$releases" ]] && background bases bash "$root/hack/debian-bases.sh" $releases
  runtimes=false
  if grep -q '^runtime-' <<<"$(while IFS='|' read -r name tag _; do
    if selected "$name" "$tag"; then echo "$name"; fi; done <<<"$table")"; then
    runtimes=true
    background agent bash "$root/hack/build-agent.sh"
    if selected runtime-java 17 || selected runtime-java 21; then
      background java bash "$root/hack/build-runtime-java.sh"
    fi
  fi
  # The control-plane image installs its dependencies from the wheelhouse of the venv's Python when that is the
  # base's (bookworm: 3.11), else from the package index; its native module is built here (no Rust image).
  python="${PYTHON:-$root/.venv/bin/python}"
  if selected kubelambda "$version"; then
    background native bash "$root/hack/build-native.sh"
    if [[ ! -x "$python" ]]; then
      say "no $python (make venv): the control-plane image's dependencies come from the package index"
    elif [[ "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != 3.11 ]]; then
      say "$python is not Python 3.11 (bookworm's): the control-plane image's dependencies come from the package index"
    else
      background wheels env PYTHON="$python" bash "$root/hack/wheelhouse.sh"
    fi
  fi
  [[ -z "${pids[bases]:-}" ]] || collect bases
  # Copies of the contexts with the host-built pieces in .prebuilt/ (fixed paths: builds reuse their cache).
  mkdir -p "$cache/images"
  exec 8>"$cache/images/context.lock"
  flock 8
  context_locked=1
  if $runtimes; then
    collect agent
    runtime_context="$cache/images/runtime-context"
    rm -rf "$runtime_context"
    cp -a "$root/runtime-images" "$runtime_context"
    mkdir -p "$runtime_context/.prebuilt"
    cp "$(cat "$work/agent.out")" "$runtime_context/.prebuilt/kubelambda-agent"
    if [[ -n "${pids[java]:-}" ]]; then
      collect java
      cp -r "$(cat "$work/java.out")/lib" "$runtime_context/.prebuilt/java-lib"
    fi
  fi
  if [[ -n "${pids[native]:-}" ]]; then
    collect native
    kubelambda_context="$cache/images/kubelambda-context"
    rm -rf "$kubelambda_context"
    mkdir -p "$kubelambda_context/.prebuilt/native"
    cp "$root/pyproject.toml" "$root/README.md" "$root/.dockerignore" "$kubelambda_context/"
    tar -C "$root" --exclude=__pycache__ --exclude='*.egg-info' --exclude='_native*.so' -cf - operator \
      | tar -C "$kubelambda_context" -xf -
    cp "$(cat "$work/native.out")" "$kubelambda_context/.prebuilt/native/_native.abi3.so"
    echo '!.prebuilt/' >>"$kubelambda_context/.dockerignore"
  fi
  if [[ -n "${pids[wheels]:-}" ]]; then
    collect wheels
    wheels="$(cat "$work/wheels.out")"
    cp -al "$wheels" "$kubelambda_context/.prebuilt/wheels" 2>/dev/null || cp -a "$wheels" "$kubelambda_context/.prebuilt/wheels"
  fi
fi

# The Python runtime's private orjson, for the selected Python versions (hack/python-runtime.sh, from the wheelhouse of
# the venv's Python), in .prebuilt/python-vendor/ of a copy of the context, with either base.
python_versions="$(while IFS='|' read -r name tag _; do
  if [[ "$name" == runtime-python ]] && selected "$name" "$tag"; then echo "$tag"; fi; done <<<"$table" | tr '\n' ' ')"
if [[ -n "${python_versions// /}" ]]; then
  # shellcheck disable=SC2086
  vendor="$(PYTHON="${PYTHON:-$root/.venv/bin/python}" bash "$root/hack/python-runtime.sh" $python_versions)/_vendor"
  if [[ -z "${context_locked:-}" ]]; then
    mkdir -p "$cache/images"
    exec 8>"$cache/images/context.lock"
    flock 8
  fi
  if [[ "$runtime_context" == "$root/runtime-images" ]]; then
    runtime_context="$cache/images/runtime-context"
    rm -rf "$runtime_context"
    cp -a "$root/runtime-images" "$runtime_context"
  fi
  rm -rf "$runtime_context/.prebuilt/python-vendor"
  mkdir -p "$runtime_context/.prebuilt"
  cp -a "$vendor" "$runtime_context/.prebuilt/python-vendor"
fi

# The builds, IMAGE_JOBS at a time (default 3: most of a build is apt-get's downloads and dpkg's unpacking). After a
# failure no new build starts; the others finish, then the failed build's output is shown.
image_jobs="${IMAGE_JOBS:-3}"
built=()
skipped=()
failed=""
declare -A building=()  # pid -> ref
declare -A build_started=()
# reap: waits for one build to end.
reap() {
  local pid rc=0
  wait -n -p pid || rc=$?
  local ref="${building[$pid]}"
  unset "building[$pid]"
  if ((rc == 0)); then
    say "$ref: built in $((SECONDS - build_started[$ref])) s"
    built+=("$ref")
  else
    say "error: $ref failed"
    [[ -n "$failed" ]] || failed="$ref"
  fi
}
while IFS='|' read -r name tag dockerfile context args release debian_args; do
  selected "$name" "$tag" || continue
  ref="$registry/$name:$tag"
  cmd=("${build[@]}" "${extra_flags[@]}" -f "$root/$dockerfile" -t "$ref")
  for a in $args; do cmd+=(--build-arg "$a"); done
  # This host's CA bundle, for builds that reach a package index through a TLS-intercepting proxy (Dockerfile).
  [[ -s "$ca_bundle" && "$name" == kubelambda ]] && cmd+=(--secret "id=ca-certificates,src=$ca_bundle")
  if [[ "$context" == runtime-images ]]; then ctx="$runtime_context"; else ctx="$kubelambda_context"; fi
  if [[ "$bases" == debian ]]; then
    if [[ "$release" == - ]]; then
      skipped+=("$ref")
      say "$ref: skipped (no Debian release has this version; it needs the official base: BASES=official)"
      continue
    fi
    base="$base_repo:$release"
    cmd+=(--build-arg "BASE=$base" --label "io.kubelambda.base=$base")
    [[ "$context" == runtime-images ]] && cmd+=(--build-arg AGENT_FROM=agent-prebuilt)
    for a in $debian_args; do cmd+=(--build-arg "$a"); done
  fi
  while ((${#building[@]} >= image_jobs)); do reap; done
  [[ -z "$failed" ]] || break
  say "$ref: building ($bases base${release:+, $([[ $bases == debian ]] && echo "Debian $release")})${wheels:+$([[ $name == kubelambda ]] && echo ", dependencies from $wheels")}"
  build_started[$ref]=$SECONDS
  "${cmd[@]}" "$ctx" >"$work/build-${ref//[\/:]/_}.log" 2>&1 &
  building[$!]="$ref"
done <<<"$table"
while ((${#building[@]})); do reap; done
if [[ -n "$failed" ]]; then
  say "error: $failed failed; the build's output ends with:"
  tail -n 30 "$work/build-${failed//[\/:]/_}.log" >&2
  exit 1
fi

filters=()
for ref in "${built[@]}"; do filters+=(--filter "reference=$ref"); done
if ((${#built[@]})) && [[ -z "${PUSH:-}" ]]; then
  docker image ls --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' "${filters[@]}"
fi
((${#skipped[@]} == 0)) || echo "not built here (need the official base, BASES=official): ${skipped[*]}"
echo "images: ${#built[@]} built with $bases bases in $((SECONDS - started)) s"
