#!/usr/bin/env bash
# The workspace's `rust-version` (Cargo.toml, [workspace.package]) is what the tree really needs:
# fails if a package of the dependency graph (normal, build and dev dependencies, for this host's
# target) declares a higher `rust-version`, or if the workspace's is above the rustc on PATH.
# Prints the highest requirement and who declares it. (Our own code is held to the workspace's
# rust-version by clippy's `incompatible_msrv` lint, which scripts/test.sh runs with -D warnings.)
# Needs cargo and jq.   Usage: scripts/check-msrv.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# "1.89" -> "1.89.0", so that `sort -V` compares like cargo does.
norm() { local v=$1; case $v in *.*.*) ;; *) v=$v.0 ;; esac; echo "$v"; }
# Whether version $1 < version $2.
lt() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]; }

host=$(rustc -vV | sed -n 's/^host: //p')
rustc_version=$(rustc -vV | sed -n 's/^release: //p')
rustc_version=${rustc_version%%-*}
meta=$(cargo metadata --format-version 1 --locked --filter-platform "$host")

workspace=$(jq -r '[.workspace_members[] as $m | .packages[] | select(.id == $m) | .rust_version]
  | unique | if length == 1 then .[0] else "mismatch: \(.)" end' <<<"$meta")
case $workspace in
  null | mismatch*) echo "check-msrv: the workspace members' rust-version: $workspace (want one, from [workspace.package])" >&2; exit 1 ;;
esac
workspace=$(norm "$workspace")

# Every package in the resolved graph (not the workspace's own) with a declared rust-version.
required=$(jq -r '[.resolve.nodes[].id] as $used | .workspace_members as $ours | .packages[]
  | select(.id as $id | ($used | index($id)) and (($ours | index($id)) | not))
  | select(.rust_version != null) | "\(.rust_version) \(.name) \(.version)"' <<<"$meta" \
  | while read -r v name version; do echo "$(norm "$v") $name $version"; done | sort -V)
max=$(tail -1 <<<"$required" | cut -d' ' -f1)
needers=$(awk -v m="$max" '$1 == m { printf "%s%s %s", sep, $2, $3; sep = ", " }' <<<"$required")

status=0
echo "check-msrv: workspace rust-version $workspace; the dependencies need $max ($needers); rustc on PATH $rustc_version"
if lt "$workspace" "$max"; then
  echo "check-msrv: dependencies declare a rust-version above the workspace's $workspace:" >&2
  while read -r v name version; do
    if lt "$workspace" "$v"; then echo "  $name $version: $v" >&2; fi
  done <<<"$required"
  echo "check-msrv: raise rust-version in Cargo.toml's [workspace.package] to $max" >&2
  status=1
fi
if lt "$rustc_version" "$workspace"; then
  echo "check-msrv: the workspace's rust-version $workspace is above rustc on PATH ($rustc_version)" >&2
  status=1
fi
exit $status
