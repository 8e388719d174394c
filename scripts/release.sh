#!/usr/bin/env bash
# A release in one command: the release binary, the image (scripts/image.sh) with its SBOM, and
# the install manifests with the image's reference and digest filled in, all in one directory:
#
#   scripts/release.sh --repository registry.example.com/wormhole [--out DIR] [--binary FILE]
#                      [--push] [-- MANIFESTS-FLAGS...]
#
# --repository  where the image will live (registry and path, no tag): the manifests name it
#               as REPOSITORY@sha256:DIGEST, so every node runs exactly this build
# --out         the release directory [default: target/release-artifacts]
# --binary      ship this `wormhole` binary [default: cargo build --release -p wormhole-daemon]
# --push        push the image there with skopeo (else: the command to do it is printed)
# after `--`    more `wormhole manifests` flags for wormhole.yaml (e.g. --psk, --cluster-cidr)
#
# The directory then holds:
#   wormhole                  the binary (linux, the host's architecture)
#   image/oci/                the OCI image layout, tag VERSION; image/digest its digest
#   wormhole.cdx.json         the CycloneDX SBOM of the binary's crates
#   wormhole.yaml             the whole install: kubectl apply -f wormhole.yaml
#   wormhole-uninstall.yaml   the cleanup DaemonSet (docs/uninstall.md)
#   kustomization.yaml        wormhole.yaml as a kustomize base, for overlays
#   SHA256SUMS                of every file above but the image layout (its digest says it)
set -euo pipefail
cd "$(dirname "$0")/.."

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
if [ -z "$repository" ]; then
  echo "release: --repository is needed (where the image will be pushed, e.g. registry.example.com/wormhole)" >&2
  exit 2
fi
if [[ "$repository" == *@* ]] || [[ "${repository##*/}" == *:* ]]; then
  echo "release: --repository $repository: give the repository without a tag or digest (the digest is filled in)" >&2
  exit 2
fi

if [ -z "$binary" ]; then
  cargo build --release --locked -p wormhole-daemon
  binary=target/release/wormhole
fi
rm -rf "$out"
mkdir -p "$out"
install -m 0755 "$binary" "$out/wormhole"
bash scripts/image.sh --binary "$out/wormhole" --out "$out/image"
mv "$out/image/wormhole.cdx.json" "$out/wormhole.cdx.json"
digest=$(cat "$out/image/digest")
version=$("$out/wormhole" version -o json | jq -r .version)
image="$repository@$digest"

# The manifests come from the binary released (its compiled-in deploy/), so they match it.
"$out/wormhole" manifests --image "$image" "${manifest_flags[@]}" > "$out/wormhole.yaml"
"$out/wormhole" manifests --uninstall --image "$image" > "$out/wormhole-uninstall.yaml"
cat > "$out/kustomization.yaml" <<EOF
# Wormhole $version as a kustomize base: refer to this directory from an overlay's resources.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - wormhole.yaml
EOF
(cd "$out" && sha256sum wormhole wormhole.cdx.json wormhole.yaml wormhole-uninstall.yaml \
  kustomization.yaml > SHA256SUMS)

if [ -n "$push" ]; then
  skopeo copy --preserve-digests "oci:$out/image/oci:$version" "docker://$repository:$version"
else
  echo "release: push the image with (its digest must stay $digest):"
  echo "  skopeo copy --preserve-digests oci:$out/image/oci:$version docker://$repository:$version"
fi
echo "release: $out: wormhole $version, image $image"
echo "release: install with: kubectl apply -f $out/wormhole.yaml"
