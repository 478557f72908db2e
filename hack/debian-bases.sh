#!/usr/bin/env bash
# Bootstraps minimal Debian base images for the offline image build, since no container registry answers here:
# `debootstrap --variant=minbase RELEASE` into a folder, slimmed like the official -slim images (no man pages,
# docs or locales), then `docker import` as kubelambda/debian:RELEASE. Cached twice: an image that exists is
# kept, and the root filesystem's tarball under ~/.cache/kubelambda/images is imported again without
# bootstrapping. Prints the image names on stdout; progress goes to stderr.
#   hack/debian-bases.sh [RELEASE...]     (default: bookworm trixie)
#   DEBIAN_MIRROR      the Debian mirror (default: the first deb.debian.org-style URI in /etc/apt/sources.list*,
#                      else http://deb.debian.org/debian)
#   BASE_REPO          image repository (default kubelambda/debian)
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda)
set -euo pipefail

cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}/images"
repo="${BASE_REPO:-kubelambda/debian}"
releases=("$@")
((${#releases[@]})) || releases=(bookworm trixie)
say() { echo "debian-bases: $*" >&2; }

mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  # deb822 (URIs: ...) or one-line (deb URI suite ...) sources; the security archive is not a full mirror.
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' \
             -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\/debian\)[[:space:]].*/\2/p' \
    | head -n 1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi
security="${mirror%/debian}/debian-security"

mkdir -p "$cache"
exec 9>"$cache/debian-bases.lock"
flock 9

# bootstrap RELEASE: the slimmed root filesystem of RELEASE as $cache/debian-RELEASE.tar.
bootstrap() {
  local release=$1  # (root: not local, the EXIT trap of this background subshell removes it)
  local tarball="$cache/debian-$release.tar"
  [[ -f "/usr/share/debootstrap/scripts/$release" ]] || {
    say "error: debootstrap does not know the release '$release'"
    return 1
  }
  say "$repo:$release: debootstrap --variant=minbase $release from $mirror"
  root="$(mktemp -d "$cache/debian-$release.XXXXXX")"
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase "$release" "$root" "$mirror" >"$root.log" 2>&1 || {
    say "error: debootstrap failed; its log ($root.log) ends with:"
    tail -n 20 "$root.log" >&2
    return 1
  }
  rm -f "$root.log"
  # Sources as in the official images (release, updates, security), and apt/dpkg set up for containers.
  cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror $release main
deb $mirror $release-updates main
deb $security $release-security main
SOURCES
  cat >"$root/etc/dpkg/dpkg.cfg.d/kubelambda-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
DPKG
  cat >"$root/etc/apt/apt.conf.d/kubelambda-container" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log "$root"/tmp/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  tar --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp" .
  mv -f "$tarball.tmp" "$tarball"
  rm -rf "$root"
  trap - EXIT
}

# The missing root filesystems are bootstrapped side by side (mostly downloads and unpacking), then imported.
declare -A bootstrapping=()
for release in "${releases[@]}"; do
  if ! docker image inspect "$repo:$release" >/dev/null 2>&1 && [[ ! -f "$cache/debian-$release.tar" ]]; then
    bootstrap "$release" &
    bootstrapping[$release]=$!
  fi
done
failed=0
for release in "${!bootstrapping[@]}"; do
  wait "${bootstrapping[$release]}" || failed=1
done
((failed == 0)) || exit 1

for release in "${releases[@]}"; do
  image="$repo:$release"
  tarball="$cache/debian-$release.tar"
  if docker image inspect "$image" >/dev/null 2>&1; then
    say "$image: present"
    echo "$image"
    continue
  fi
  say "$image: docker import $tarball"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $release $mirror" \
    "$tarball" "$image" >/dev/null
  echo "$image"
done
