#!/usr/bin/env bash
# vendor/gotatun is gotatun (the embedded data plane, MPL-2.0) as published on crates.io, plus
# one patch of ours, vendor/gotatun.patch (what it changes and why: vendor/README.md). The
# workspace builds it through `[patch.crates-io]` in Cargo.toml. CI runs the check.
#
#   scripts/vendor-gotatun.sh --check   fail unless vendor/gotatun is exactly the published crate
#                                       (checksum below) with vendor/gotatun.patch applied
#   scripts/vendor-gotatun.sh           rewrite vendor/gotatun: the published crate + the patch
#   scripts/vendor-gotatun.sh --diff    rewrite vendor/gotatun.patch from vendor/gotatun (after
#                                       editing the vendored files)
#
# On a new gotatun release: set VERSION and SHA256 below (the `checksum` Cargo.lock records for
# it, or the sha256 of the .crate file), run this script without arguments (fix the patch where
# it no longer applies, then --diff), update the version in Cargo.toml's [workspace.dependencies]
# and run `cargo update -p gotatun`. When upstream boxes the session slots itself, delete
# vendor/ and the [patch.crates-io] entry instead.
# Needs git (to apply the patch), diff, tar, sha256sum, and cargo (to fetch the .crate file when
# it is not in cargo's download cache).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.10.2
SHA256=5e37c2134d46523ed5b3c4bbdb578225e2e7379d03aea65baef41584725b1991
vendored=vendor/gotatun
patch_file=vendor/gotatun.patch

mode=${1:-write}
case $mode in --check | --diff | write) ;; *) echo "usage: $0 [--check | --diff]" >&2; exit 2 ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
crate=$work/gotatun-$VERSION.crate
cached=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "gotatun-$VERSION.crate" 2>/dev/null | head -n1 || true)
if [ -n "$cached" ]; then
  cp "$cached" "$crate"
else
  # Through cargo, so that its registry configuration (a mirror, a proxy) applies: a throwaway
  # package that depends on exactly this version, fetched into cargo's cache.
  mkdir -p "$work/fetch/src"
  printf '[package]\nname = "fetch-gotatun"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\ngotatun = { version = "=%s", default-features = false }\n' \
    "$VERSION" >"$work/fetch/Cargo.toml"
  : >"$work/fetch/src/lib.rs"
  cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml"
  cached=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "gotatun-$VERSION.crate" | head -n1)
  cp "$cached" "$crate"
fi
echo "$SHA256  $crate" | sha256sum -c --quiet - || {
  echo "vendor-gotatun: gotatun-$VERSION.crate does not have the expected sha256" >&2
  exit 1
}
mkdir "$work/a"
tar -xzf "$crate" -C "$work/a" --strip-components=1

if [ "$mode" = --diff ]; then
  mkdir "$work/b"
  (cd "$vendored" && git ls-files --cached --others --exclude-standard -z | xargs -0 cp --parents -t "$work/b")
  # Plain unified diff, without timestamps, applied with -p1.
  (cd "$work" && diff -ruN a b || true) | sed -E '/^diff -ruN /d; s/^(---|\+\+\+) ([^\t]*)\t.*/\1 \2/' >"$patch_file"
  echo "vendor-gotatun: wrote $patch_file ($(grep -c '^+++ ' "$patch_file") files)"
  exit 0
fi

git -C "$work/a" apply -p1 --whitespace=nowarn "$PWD/$patch_file"
if [ "$mode" = --check ]; then
  if ! diff -r --exclude=target "$work/a" "$vendored" >"$work/out"; then
    echo "vendor-gotatun: $vendored is not gotatun $VERSION + $patch_file:" >&2
    head -40 "$work/out" >&2
    exit 1
  fi
  echo "vendor-gotatun: $vendored is gotatun $VERSION + $patch_file"
  exit 0
fi
rm -rf "$vendored"
cp -a "$work/a" "$vendored"
echo "vendor-gotatun: wrote $vendored (gotatun $VERSION + $patch_file)"
