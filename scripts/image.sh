#!/usr/bin/env bash
# The agent's container image, built without a container engine or a base image: an OCI image
# layout of one layer holding the release `wormhole` binary and, from pinned Debian packages
# (scripts/image/debs-ARCH.lock), exactly what it runs: `nft` (the firewall is loaded with
# `nft -f`), `wireguard-go` (for `--backend userspace`), the dynamic loader and the shared
# libraries these three need, found by following their ELF `NEEDED` entries. Beside them: our
# LICENSE and THIRD-PARTY-NOTICES.md, and each Debian package's copyright file. No shell, no
# package manager, no CA roots (the agent trusts only the cluster CA of its service account).
#
#   scripts/image.sh [--binary FILE] [--out DIR] [--arch amd64|arm64] [--tag TAG] [--max-mib N]
#   scripts/image.sh --update-lock [--arch ARCH]
#
# --binary  the `wormhole` binary to ship [default: `cargo build --release -p wormhole-daemon`
#           (with --target for another --arch) and its output]
# --out     where the results go [default: target/image]: `oci/` (the OCI image layout, tag TAG),
#           `digest` (the manifest digest), `wormhole.cdx.json` (CycloneDX SBOM of the binary's
#           crates, from cargo-cyclonedx), `contents.txt` (every file with its size)
# --tag     the image tag [default: the workspace version]
# --max-mib fail when the image (its uncompressed layer) is larger [default: 30]
# --no-sbom leave the SBOM out (it needs cargo-cyclonedx; CI and releases make it)
#
# Reproducible: the same commit and binary give the same digest. File times, the config's
# `created` and the history are SOURCE_DATE_EPOCH (default: the commit's time); owners are 0:0;
# entries are sorted; the .debs are verified against the lock's SHA256 before use.
# Needs: umoci, dpkg-deb, readelf (binutils), GNU tar, jq, sha256sum, apt-helper (apt).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=amd64 binary= out=target/image tag= max_mib=30 update_lock= sbom=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --max-mib) max_mib=$2; shift 2 ;;
    --update-lock) update_lock=1; shift ;;
    --no-sbom) sbom=; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$arch" in
  amd64) triplet=x86_64-linux-gnu rust_target=x86_64-unknown-linux-gnu machine="X86-64" ;;
  arm64) triplet=aarch64-linux-gnu rust_target=aarch64-unknown-linux-gnu machine="AArch64" ;;
  *) echo "image: --arch $arch: amd64 or arm64" >&2; exit 2 ;;
esac
lock=scripts/image/debs-$arch.lock
# Where the .debs come from: the pool paths of the lock under these. To rebuild an old release
# exactly after Debian dropped a version, point them at snapshot.debian.org's archive of a date.
main_mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if [ -n "$update_lock" ]; then
  # The lock's packages at the versions the host's apt lists offer now (run apt-get update first;
  # for another architecture, dpkg --add-architecture ARCH first).
  names=$(grep -v '^#' "$lock" | awk 'NF {print $1}')
  tmp=$(mktemp)
  grep '^#' "$lock" > "$tmp"
  for name in $names; do
    version=$(apt-cache policy "$name:$arch" | awk '/Candidate:/ {print $2}')
    [ -n "$version" ] && [ "$version" != "(none)" ] ||
      { echo "image: apt has no $name:$arch (apt-get update? dpkg --add-architecture $arch?)" >&2; exit 1; }
    apt-cache show "$name:$arch=$version" | awk -v n="$name" -v v="$version" \
      '/^SHA256:/ {s=$2} /^Filename:/ {f=$2} /^$/ {if (f) {print n, v, s, f; exit}} END {if (f && !s) exit 1}' >> "$tmp"
  done
  mv "$tmp" "$lock"
  echo "image: $lock updated"
  exit 0
fi

for tool in umoci dpkg-deb readelf tar jq sha256sum; do
  command -v "$tool" >/dev/null || { echo "image: $tool not found (apt-get install umoci dpkg binutils tar jq coreutils)" >&2; exit 1; }
done
helper=/usr/lib/apt/apt-helper
[ -x "$helper" ] || { echo "image: $helper not found (Debian's apt)" >&2; exit 1; }

version=$(cargo metadata --no-deps --format-version 1 | jq -r '.packages[] | select(.name == "wormhole-daemon") | .version')
tag=${tag:-$version}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
revision=$(git rev-parse HEAD)

if [ -z "$binary" ]; then
  if [ "$arch" = amd64 ] && [ "$(uname -m)" = x86_64 ]; then
    cargo build --release --locked -p wormhole-daemon
    binary=target/release/wormhole
  else
    # A cross build: `rustup target add $rust_target` and a cross linker (Debian's
    # gcc-aarch64-linux-gnu for arm64) named in CARGO_TARGET_<TRIPLE>_LINKER.
    cargo build --release --locked -p wormhole-daemon --target "$rust_target"
    binary=target/$rust_target/release/wormhole
  fi
fi
[ -f "$binary" ] || { echo "image: no binary at $binary" >&2; exit 1; }
readelf -h "$binary" | grep -q "Machine:.*$machine" ||
  { echo "image: $binary is not a $arch binary ($(readelf -h "$binary" | grep Machine:))" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkgs=$work/pkgs root=$work/root
mkdir -p "$pkgs" "$root"

# The packages, downloaded once into target/image-debs and checked against the lock each time.
cache=target/image-debs
mkdir -p "$cache"
while read -r name pkg_version sha path; do
  case "$name" in ''|'#'*) continue ;; esac
  deb=$cache/$(basename "$path")
  if ! echo "$sha  $deb" | sha256sum --check --status 2>/dev/null; then
    case "$path" in pool/updates/*) base=$security_mirror ;; *) base=$main_mirror ;; esac
    "$helper" download-file "$base/$path" "$deb.part" "SHA256:$sha" >/dev/null 2>"$work/download.err" || {
      echo "image: cannot download $name $pkg_version with the SHA256 of $lock ($base/$path): $(tail -2 "$work/download.err")" >&2
      echo "image: if Debian no longer has this version, run: apt-get update && scripts/image.sh --update-lock --arch $arch" >&2
      exit 1
    }
    mv "$deb.part" "$deb"
  fi
  echo "$sha  $deb" | sha256sum --check --status || { echo "image: $deb does not match the lock's SHA256" >&2; exit 1; }
  mkdir -p "$pkgs/$name"
  dpkg-deb -x "$deb" "$pkgs/$name"
done < "$lock"

# copy PACKAGE PATH: one file (or symlink, and what it points to) from a package into the root.
copied=()
copy() {
  local pkg=$1 path=$2
  [ -e "$root$path" ] || [ -L "$root$path" ] && return 0
  mkdir -p "$root$(dirname "$path")"
  cp -a "$pkgs/$pkg$path" "$root$path"
  copied+=("$pkg")
  if [ -L "$pkgs/$pkg$path" ]; then
    local target
    target=$(readlink "$pkgs/$pkg$path")
    case "$target" in /*) ;; *) target=$(dirname "$path")/$target ;; esac
    copy "$pkg" "$(realpath -ms "$target")"
  fi
}

# owner PATH: the package that ships PATH.
owner() {
  local dir
  for dir in "$pkgs"/*; do
    if [ -e "$dir$1" ] || [ -L "$dir$1" ]; then basename "$dir"; return 0; fi
  done
  return 1
}

# needs FILE: the ELF interpreter and NEEDED libraries of FILE, into the root, recursively.
needs() {
  local interp lib dir pkg found
  interp=$(readelf -l "$1" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
  if [ -n "$interp" ]; then
    pkg=$(owner "$interp") || { echo "image: the loader $interp of $1 is in no locked package" >&2; exit 1; }
    copy "$pkg" "$interp"
  fi
  for lib in $(readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    found=
    for dir in /lib/$triplet /usr/lib/$triplet; do
      if pkg=$(owner "$dir/$lib"); then
        if [ ! -e "$root$dir/$lib" ]; then
          copy "$pkg" "$dir/$lib"
          needs "$root$dir/$lib"
        fi
        found=1
        break
      fi
    done
    [ -n "$found" ] || { echo "image: $lib, needed by $1, is in no locked package: add its package to $lock" >&2; exit 1; }
  done
}

mkdir -p "$root/usr/local/bin"
install -m 0755 "$binary" "$root/usr/local/bin/wormhole"
copy nftables /usr/sbin/nft
copy wireguard-go /usr/bin/wireguard-go
for elf in "$root/usr/local/bin/wormhole" "$root/usr/sbin/nft" "$root/usr/bin/wireguard-go"; do
  needs "$elf"
done

# Licenses: ours, the crates' (THIRD-PARTY-NOTICES.md), each Debian package's copyright file.
mkdir -p "$root/usr/share/doc/wormhole"
install -m 0644 LICENSE THIRD-PARTY-NOTICES.md "$root/usr/share/doc/wormhole/"
for pkg in $(printf '%s\n' "${copied[@]}" | sort -u); do
  doc=/usr/share/doc/$pkg
  if [ -L "$pkgs/$pkg$doc" ]; then
    # Its documentation is another package's of the same source (libgcc-s1 -> gcc-12-base).
    mkdir -p "$root/usr/share/doc"
    cp -a "$pkgs/$pkg$doc" "$root$doc"
    doc=/usr/share/doc/$(readlink "$pkgs/$pkg$doc")
    pkg=$(owner "$doc/copyright") || { echo "image: $doc/copyright is in no locked package" >&2; exit 1; }
    copied+=("$pkg")
  fi
  [ -f "$pkgs/$pkg$doc/copyright" ] || { echo "image: $pkg has no $doc/copyright" >&2; exit 1; }
  install -D -m 0644 "$pkgs/$pkg$doc/copyright" "$root$doc/copyright"
done
grep -v '^#' "$lock" | awk 'NF {print $1, $2}' | while read -r name pkg_version; do
  if printf '%s\n' "${copied[@]}" | grep -qx "$name"; then echo "$name $pkg_version"; fi
done > "$root/usr/share/doc/wormhole/debian-packages.txt"
chmod 0644 "$root/usr/share/doc/wormhole/debian-packages.txt"

# Mount points and the directories the agent expects; /var/run is /run (UAPI sockets are in
# /var/run/wireguard, the DaemonSet mounts the host's /run/wireguard).
mkdir -p "$root"/{dev,proc,sys,etc,run,tmp,var/lib/wormhole} "$root/etc/cni/net.d"
ln -s /run "$root/var/run"
chmod 1777 "$root/tmp"
find "$root" -type d -exec chmod 0755 {} + && chmod 1777 "$root/tmp"

# The layer: sorted, owned by 0:0, every time SOURCE_DATE_EPOCH, no atime/ctime.
(cd "$root" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) > "$work/list"
tar --create --file "$work/layer.tar" --directory "$root" --no-recursion --files-from "$work/list" \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner

rm -rf "$out/oci"
mkdir -p "$out"
oci=$out/oci
umoci init --layout "$oci"
umoci new --image "$oci:$tag"
umoci raw add-layer --image "$oci:$tag" --history.created "$created" \
  --history.created_by "scripts/image.sh (wormhole $version, $revision)" "$work/layer.tar"
umoci config --image "$oci:$tag" --no-history --created "$created" --os linux --architecture "$arch" \
  --config.entrypoint /usr/local/bin/wormhole --config.cmd run --config.user 0:0 \
  --config.env PATH=/usr/local/bin:/usr/sbin:/usr/bin \
  --config.label org.opencontainers.image.title=wormhole \
  --config.label org.opencontainers.image.version="$version" \
  --config.label org.opencontainers.image.revision="$revision" \
  --config.label org.opencontainers.image.created="$created" \
  --config.label org.opencontainers.image.licenses=Apache-2.0
umoci gc --layout "$oci"
digest=$(jq -r --arg tag "$tag" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $tag) | .digest' "$oci/index.json")
echo "$digest" > "$out/digest"

# What takes the space.
size=$(stat -c %s "$work/layer.tar")
compressed=$(jq '[.layers[].size] | add' "$oci/blobs/sha256/${digest#sha256:}")
(cd "$root" && find . -type f -printf '%s\t%P\n' | sort -rn) > "$out/contents.txt"
mib() { awk -v s="$1" 'BEGIN {printf "%.1f MiB", s / 1048576}'; }
{
  echo "image wormhole:$tag ($arch) $digest"
  echo "uncompressed $(mib "$size") (limit $max_mib MiB), compressed $(mib "$compressed")"
  head -12 "$out/contents.txt" | awk -F'\t' '{printf "  %7.2f MiB  /%s\n", $1 / 1048576, $2}'
} | tee "$out/summary.txt"

if [ -n "$sbom" ]; then
  # The crates of the `wormhole` binary (normal dependencies of wormhole-daemon with its default
  # features, for this target; build-only and dev dependencies are not in the binary).
  # SOURCE_DATE_EPOCH makes it reproducible too (its timestamp, no random serial number).
  cargo cyclonedx --version >/dev/null 2>&1 || {
    echo "image: cargo-cyclonedx not found (cargo install --locked cargo-cyclonedx@0.5.9), or pass --no-sbom" >&2; exit 1; }
  (cd wormhole-daemon && cargo cyclonedx --quiet --format json --spec-version 1.5 \
    --target "$rust_target" --no-build-deps --describe binaries)
  mv wormhole-daemon/wormhole_bin.cdx.json "$out/wormhole.cdx.json"
  echo "sbom $out/wormhole.cdx.json: $(jq '.components | length' "$out/wormhole.cdx.json") crates"
fi

if [ "$size" -gt $((max_mib * 1048576)) ]; then
  echo "image: $size bytes uncompressed, over the limit of $max_mib MiB (see $out/contents.txt)" >&2
  exit 1
fi
