#!/usr/bin/env bash
# A release in one command: the release binary, the image (scripts/image.sh) with its SBOM, and
# the install manifests with the image's reference and digest filled in, all in one directory:
#
#   scripts/release.sh --repository registry.example.com/wormhole [--out DIR] [--binary FILE]
#                      [--push] [-- MANIFESTS-FLAGS...]
#
# --repository  where the image will live (registry and path, no tag): the manifests name it
#               as REPOSITORY@sha256:DIGEST, so every node runs exactly this build
# --out         the release directory [default: target/release-artifacts]; an existing one is
#               replaced only if it holds a release (its SHA256SUMS) or nothing
# --binary      ship this `wormhole` binary, built from this checkout [default: cargo build
#               --release -p wormhole-daemon]
# --push        push the image there with skopeo, tags VERSION and VERSION-COMMIT, and check
#               that the registry serves the digest the manifests name
# after `--`    more `wormhole manifests` flags for wormhole.yaml (e.g. --psk, --cluster-cidr;
#               not --image, --arch or --uninstall, which this script sets)
#
# The image is for this machine's architecture (amd64 or arm64: scripts/image.sh --arch), and
# the manifests run it only there (nodeSelector kubernetes.io/arch). The directory then holds:
#   wormhole                  the binary
#   image/oci/, image/digest  the OCI image layout (tag VERSION) and its digest
#   wormhole.cdx.json         the CycloneDX SBOM of the binary's crates
#   wormhole.yaml             the whole install: kubectl apply -f wormhole.yaml
#   wormhole-uninstall.yaml   the cleanup DaemonSet (docs/uninstall.md)
#   kustomization.yaml        wormhole.yaml as a kustomize base, for overlays
#   SHA256SUMS                of every file above but the image layout (its digest says it)
set -euo pipefail

repository= out=target/release-artifacts binary= push= manifest_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --repository) repository=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --push) push=1; shift ;;
    --) shift; manifest_flags=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "release: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
fail() { echo "release: $*" >&2; exit 2; }
# Paths as the caller gave them, before this script moves to the checkout.
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
out=$(absolute "$out")
[ -z "$binary" ] || binary=$(absolute "$binary")
cd "$(dirname "$0")/.."

[ -n "$repository" ] ||
  fail "--repository is needed (where the image will be pushed, e.g. registry.example.com/wormhole)"
if [[ "$repository" == *@* ]] || [[ "${repository##*/}" == *:* ]]; then
  fail "--repository $repository: give the repository without a tag or digest (the digest is filled in)"
fi
for flag in "${manifest_flags[@]}"; do
  case "$flag" in
    --image|--image=*|--arch|--arch=*|--uninstall) fail "$flag after --: this script sets it" ;;
  esac
done
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) fail "this machine ($(uname -m)) is neither amd64 nor arm64" ;;
esac
if [ -n "$binary" ]; then
  [ -x "$binary" ] || fail "--binary $binary: no such executable"
fi
if [ -e "$out" ] && [ ! -f "$out/SHA256SUMS" ] && [ -n "$(ls -A "$out")" ]; then
  fail "--out $out exists and holds no release (no SHA256SUMS): choose another directory or empty it"
fi

if [ -z "$binary" ]; then
  cargo build --release --locked -p wormhole-daemon
  binary=$PWD/target/release/wormhole
fi
# The reference (the OCI grammar) and the flags, checked by `wormhole manifests` before
# anything is written.
"$binary" manifests --image "$repository@sha256:$(printf '0%.0s' {1..64})" --arch "$arch" \
  "${manifest_flags[@]}" > /dev/null
version=$("$binary" version -o json | jq -r .version)
commit=$("$binary" version -o json | jq -r .commit)
checkout=$(cargo metadata --no-deps --format-version 1 |
  jq -r '.packages[] | select(.name == "wormhole-daemon") | .version')
[ "$version" = "$checkout" ] ||
  fail "--binary is version $version, this checkout $checkout: the image's labels and SBOM would describe another build"

rm -rf "$out"
mkdir -p "$out"
install -m 0755 "$binary" "$out/wormhole"
bash scripts/image.sh --binary "$out/wormhole" --out "$out/image" --arch "$arch" --tag "$version"
mv "$out/image/wormhole.cdx.json" "$out/wormhole.cdx.json"
digest=$(cat "$out/image/digest")
image="$repository@$digest"

# The manifests come from the binary released (its compiled-in deploy/), so they match it.
"$out/wormhole" manifests --image "$image" --arch "$arch" "${manifest_flags[@]}" > "$out/wormhole.yaml"
"$out/wormhole" manifests --uninstall --image "$image" --arch "$arch" > "$out/wormhole-uninstall.yaml"
cat > "$out/kustomization.yaml" <<EOF
# Wormhole $version as a kustomize base: refer to this directory from an overlay's resources.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - wormhole.yaml
EOF
(cd "$out" && sha256sum wormhole wormhole.cdx.json wormhole.yaml wormhole-uninstall.yaml \
  kustomization.yaml > SHA256SUMS)

tags=("$version" "$version-${commit:0:12}")
if [ -n "$push" ]; then
  for tag in "${tags[@]}"; do
    skopeo copy --preserve-digests "oci:$out/image/oci:$version" "docker://$repository:$tag"
    served=$(skopeo inspect --format '{{.Digest}}' "docker://$repository:$tag")
    [ "$served" = "$digest" ] || fail "the registry serves $served for $repository:$tag, not $digest"
  done
else
  echo "release: push the image with (its digest must stay $digest):"
  for tag in "${tags[@]}"; do
    echo "  skopeo copy --preserve-digests oci:$out/image/oci:$version docker://$repository:$tag"
  done
fi
echo "release: $out: wormhole $version ($arch), image $image"
echo "release: install with: kubectl apply -f $out/wormhole.yaml"
