# Sourced by the hack/<tool>.sh scripts that build a test server or tool once and cache it:
#   cached_tool NAME VERSION BINARY BUILD_FUNCTION
# builds into ~/.cache/kubelambda/bin/NAME-VERSION/ (KUBELAMBDA_CACHE overrides the root) by calling
# `BUILD_FUNCTION DIR` (it must leave BINARY in DIR), unless that directory holds a `.complete` stamp; safe to run
# concurrently (flock per tool); prints the binary's path on stdout, the build's output on stderr.
cached_tool() {
  local name=$1 version=$2 binary=$3 build=$4
  local cache=${KUBELAMBDA_CACHE:-$HOME/.cache/kubelambda}
  local dir=$cache/bin/$name-$version
  mkdir -p "$cache/bin"
  exec 9>"$cache/.$name.lock"
  flock 9
  if [[ ! -f "$dir/.complete" ]]; then
    echo "$name: building $version into $dir" >&2
    local started=$SECONDS
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    "$build" "$dir.tmp" >&2
    [[ -x "$dir.tmp/$binary" ]] || { echo "$name: the build left no $binary" >&2; return 1; }
    touch "$dir.tmp/.complete"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    echo "$name: built in $((SECONDS - started)) s" >&2
  fi
  exec 9>&-
  echo "$dir/$binary"
}
