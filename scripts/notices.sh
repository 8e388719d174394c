#!/usr/bin/env bash
# THIRD-PARTY-NOTICES.md: every crate compiled into the `wormhole` binary (normal dependencies
# of wormhole-daemon on Linux, x86_64 and aarch64), its version, license and authors, and the
# license texts: each crate's own license files (LICENSE*, COPYING*, NOTICE*, ...), or, for a crate
# that ships none, the standard texts in licenses/ for the licenses it names, plus the notices
# below that a crate's files do not carry. Identical texts are printed once.
# The image ships it (scripts/image.sh: /usr/share/doc/wormhole/); CI runs the check.
#
#   scripts/notices.sh           write THIRD-PARTY-NOTICES.md (after a dependency change)
#   scripts/notices.sh --check   fail if it is out of date with Cargo.lock, or if a crate's
#                                license has no text (then add licenses/<SPDX id>.txt)
# Needs cargo, jq and sha256sum.
set -euo pipefail
cd "$(dirname "$0")/.."
out=THIRD-PARTY-NOTICES.md
check=false
case ${1:-} in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# Notices a crate's published files do not carry (its code is under them too).
extra_notices() {
  case $1 in
    # gotatun (MPL-2.0) ships no license file; its code from before 5 March 2026 (boringtun's)
    # is under Cloudflare's BSD-3-Clause, whose notice must be reproduced.
    gotatun | boringtun) echo licenses/BSD-3-Clause-Cloudflare.txt ;;
  esac
}

targets=(--target x86_64-unknown-linux-gnu --target aarch64-unknown-linux-gnu)
# name<TAB>version of every registry crate in the binary (proc-macros run at build time only).
# A vendored crate (vendor/NAME: a published crate with our patch) counts as a third-party crate;
# our own path crates do not.
crates=$(cargo tree --locked -p wormhole-daemon -e normal "${targets[@]}" --prefix none -f '{p}' \
  | sed 's/ (\*)$//; s| (/[^)]*/vendor/[^)/]*)$||' | grep -v -e ' (/' -e ' (proc-macro)' -e '^$' \
  | sed 's/ v/\t/' | LC_ALL=C sort -u)
# "name version" -> license<TAB>directory<TAB>authors, for every package.
declare -A packages
while IFS=$'\t' read -r key row; do packages[$key]=$row; done < <(cargo metadata --locked \
  --format-version 1 | jq -r '.packages[] | [.name + " " + .version,
    (.license // ("file: " + (.license_file // "none"))),
    (.manifest_path | rtrimstr("/Cargo.toml")), (.authors | join(", "))] | @tsv')

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/texts"
errors=0
n=0
: >"$work/table"
: >"$work/order"
mpl=()
patched=()
while IFS=$'\t' read -r name version; do
  row=${packages["$name $version"]:-}
  [ -n "$row" ] || { echo "notices: $name $version: not in cargo metadata" >&2; errors=1; continue; }
  IFS=$'\t' read -r license dir authors <<<"$row"
  files=$(find "$dir" -maxdepth 1 -type f \( -iname 'LICEN[CS]E*' -o -iname 'COPYING*' \
    -o -iname 'NOTICE*' -o -iname 'COPYRIGHT*' -o -iname 'UNLICENSE*' \) | LC_ALL=C sort)
  extra=$(extra_notices "$name")
  if [ -z "$files" ]; then
    # No file of its own: the standard text of each license its expression names.
    for id in $(tr '()/' '   ' <<<"$license" | tr ' ' '\n' | grep -v -x -E 'OR|AND|WITH|' | LC_ALL=C sort -u); do
      if [ -f "licenses/$id.txt" ]; then files+=$'\n'"licenses/$id.txt"; fi
    done
    files=$(sed '/^$/d' <<<"$files")
    if [ -z "$files" ] && [ -z "$extra" ]; then
      echo "notices: $name $version ($license) ships no license file and licenses/ has no text for it: add licenses/<SPDX id>.txt" >&2
      errors=1
    fi
  fi
  [ -z "$extra" ] || files+=$'\n'"$extra"
  refs=()
  while read -r f; do
    [ -n "$f" ] || continue
    # Identical up to white space: the same text.
    sum=$(tr -s " \t\r\n" " " <"$f" | sed "s/^ //; s/ $//" | sha256sum | cut -c1-16)
    if [ ! -f "$work/texts/$sum" ]; then
      n=$((n + 1))
      tr -d '\r' <"$f" >"$work/texts/$sum"
      echo "$n $sum" >>"$work/order"
    fi
    id=$(awk -v s="$sum" '$2 == s { print $1 }' "$work/order")
    echo "$name $version" >>"$work/users.$sum"
    refs+=("[$id](#text-$id)")
  done <<<"$files"
  case $license in *MPL-2.0*)
    if [ -f "vendor/$name.patch" ]; then patched+=("$name $version"); else mpl+=("$name $version"); fi ;;
  esac
  printf '| %s | %s | %s | %s | %s |\n' "$name" "$version" "$license" "${authors//|/\\|}" \
    "$(IFS=' '; echo "${refs[*]}")" >>"$work/table"
done <<<"$crates"

{
  echo "# Third-party notices"
  echo
  echo "The \`wormhole\` binary and its container image include the Rust crates below. Each crate's"
  echo "license and copyright notices follow the table; identical texts are printed once, with the"
  echo "crates they cover. Where a crate offers a choice of licenses, we use it under any one of"
  echo "them. Generated from Cargo.lock by \`scripts/notices.sh\` (CI checks it is current): do not"
  echo "edit by hand. Container images also contain Debian packages (nftables, wireguard-go), whose"
  echo "notices are in the image's /usr/share/doc."
  echo
  if [ ${#mpl[@]} -gt 0 ]; then
    echo "The MPL-2.0 crates ($(IFS=,; echo "${mpl[*]}" | sed 's/,/, /g')) are used unmodified; their"
    echo "source code is available from crates.io (https://crates.io/crates/NAME/VERSION)."
    echo
  fi
  if [ ${#patched[@]} -gt 0 ]; then
    echo "The MPL-2.0 crates ($(IFS=,; echo "${patched[*]}" | sed 's/,/, /g')) are built with a change of"
    echo "ours to some of their files, which stay under MPL-2.0. Their source code as built into the"
    echo "binary, changed files included, is part of Wormhole's source code (the repository the binary"
    echo "is built from), at vendor/NAME; the change is vendor/NAME.patch, a patch against the crate"
    echo "published on crates.io (https://crates.io/crates/NAME/VERSION), explained in vendor/README.md."
    echo
  fi
  echo "| Crate | Version | License | Authors | Texts |"
  echo "|---|---|---|---|---|"
  cat "$work/table"
  echo
  echo "## License texts"
  while read -r id sum; do
    echo
    echo "### Text $id"
    echo "<a id=\"text-$id\"></a>"
    echo
    echo "Covers: $(paste -sd, "$work/users.$sum" | sed 's/,/, /g')."
    echo
    echo '~~~~text'
    cat "$work/texts/$sum"
    [ -z "$(tail -c1 "$work/texts/$sum")" ] || echo
    echo '~~~~'
  done <"$work/order"
} >"$work/$out"

if $check; then
  if ! cmp -s "$work/$out" "$out"; then
    echo "notices: $out is out of date with the dependency tree (run scripts/notices.sh):" >&2
    diff <(grep '^| ' "$out" 2>/dev/null || true) <(grep '^| ' "$work/$out") | head -40 >&2 || true
    errors=1
  fi
  [ "$errors" = 0 ] && echo "notices: $out is current ($(wc -l <<<"$crates") crates, $n texts)"
  exit "$errors"
fi
[ "$errors" = 0 ] || exit 1
cp "$work/$out" "$out"
echo "notices: wrote $out ($(wc -l <<<"$crates") crates, $n texts)"
