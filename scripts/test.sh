#!/usr/bin/env bash
# The tests, on a fresh Debian-like machine: installs what they need, then runs formatting and
# lint checks, `cargo test --workspace` (as root nothing is skipped), the release build, the
# Kubernetes scale test on it, the container image (scripts/image.sh: size limit, reproducibility)
# and the shipped manifests run by podman from that image, and the VM lane (scripts/vm-lane.sh:
# the kernel backend in Debian's kernel under qemu). Run as root:  sudo env PATH="$PATH" scripts/test.sh
# Environment: SKIP_VM=1 leaves out the VM lane (for a quick run; CI never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "test: needs root (network namespaces, TUN, nftables, qemu); try: sudo env PATH=\"\$PATH\" $0" >&2
  exit 1
fi
command -v cargo >/dev/null || { echo "test: cargo not on PATH (sudo env PATH=\"\$PATH\" $0)" >&2; exit 1; }

need=()
for cmd in wireguard-go:wireguard-go wg:wireguard-tools nft:nftables ip:iproute2 tcpdump:tcpdump \
  ping:iputils-ping iperf3:iperf3 jq:jq pgrep:procps iptables:iptables \
  podman:podman runc:runc catatonit:catatonit skopeo:skopeo umoci:umoci \
  docker-registry:docker-registry readelf:binutils openssl:openssl nsenter:util-linux \
  man:man-db zsh:zsh fish:fish kubectl:kubernetes-client; do
  command -v "${cmd%%:*}" >/dev/null || need+=("${cmd##*:}")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "test: installing ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The workspace's rust-version is what the dependencies need, and rustc here is new enough for it.
bash scripts/check-msrv.sh
# Licenses: the policy (deny.toml), and the notices shipped with the binary and the image are
# current (scripts/notices.sh). cargo-deny is installed if missing (measured here: 10 min 43 s on
# 2 busy shared cores, 4 min 7 s of CPU).
cargo deny --version >/dev/null 2>&1 || cargo install --locked cargo-deny@0.20.2
cargo deny --locked check licenses
bash scripts/notices.sh --check
# vendor/gotatun is the published gotatun crate plus vendor/gotatun.patch, nothing else.
bash scripts/vendor-gotatun.sh --check
# The API docs: no broken or private links (docs/library.md's Rust examples run as wormhole-agent doctests).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
# kubernetes-validate (PyPI) checks every variant `wormhole manifests` renders (tests/it/manifests.rs).
kv=$PWD/target/kubernetes-validate
[ -x "$kv/bin/kubernetes-validate" ] ||
  { python3 -m venv "$kv" && "$kv/bin/pip" install -q kubernetes-validate==1.32.0; }
export KUBERNETES_VALIDATE=$kv/bin/kubernetes-validate
cargo test --workspace
# The release binary, built once (fat LTO: the longest build here). The image ships it and the
# scale test measures it, driven by the debug suite built above: `cargo test --release` would build
# every dependency again (tests unwind, the release profile aborts on panic: nothing is shared).
cargo build --release --locked -p wormhole-daemon
release_bin=$PWD/target/release/wormhole
# Kubernetes scale (5,000 Nodes against the fake API server): goals asserted on that binary.
WORMHOLE_BIN=$release_bin cargo test -p wormhole-daemon --test it -- --ignored --nocapture kubernetes_scale
# The release of that binary (scripts/release.sh: the image, which scripts/image.sh fails over
# its size limit, its SBOM, the install manifests naming it by digest), and the image once more:
# the same inputs must give the same digest. cargo-cyclonedx (the SBOM) is installed if missing.
cargo cyclonedx --version >/dev/null 2>&1 || cargo install --locked cargo-cyclonedx@0.5.9
release=$PWD/target/release-artifacts
bash scripts/release.sh --repository registry.example.com/wormhole --binary "$release_bin" --out "$release"
bash scripts/image.sh --binary "$release_bin" --out target/image-again --no-sbom
if ! cmp -s "$release/image/digest" target/image-again/digest; then
  echo "test: two builds of the image differ: $(cat "$release/image/digest"), then $(cat target/image-again/digest)" >&2
  exit 1
fi
rm -rf target/image-again
# The released install run by podman on three netns nodes, with that image from a registry on
# loopback, then its cleanup DaemonSet (wormhole-daemon/tests/it/container.rs).
WORMHOLE_RELEASE=$release cargo test -p wormhole-daemon --test it -- --ignored --exact \
  --nocapture container::container_the_released_install_runs_in_podman_on_every_node_and_uninstalls
if [ "${SKIP_VM:-}" != 1 ]; then
  bash scripts/vm-lane.sh
fi
