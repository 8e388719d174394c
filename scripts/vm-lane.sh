#!/usr/bin/env bash
# The VM lane: every test that needs the WireGuard kernel module (the `*_kernel` tests of the
# wormhole-linux and wormhole-daemon suites), run inside Debian's own kernel under qemu in TCG
# mode through virtme-ng. The guest shares this machine's root filesystem read-only, so the test
# binaries are built here and run there; results come back through one writable directory, and
# they (not the VM's exit code) decide.
#
# Run as root:  sudo scripts/vm-lane.sh [FILTER]     (FILTER: a libtest name filter, default _kernel)
#               sudo scripts/vm-lane.sh --bench     (the kernel scale measurements of BENCHMARKS.md)
# It installs what it needs: qemu-system-x86, linux-image-amd64, busybox-static (apt), virtme-ng (pip).
# Environment: VM_TIMEOUT (seconds, default 2400), WORMHOLE_TIME_FACTOR (default 4: TCG is slow).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
filter=${1:-_kernel}

if [ "$(id -u)" != 0 ]; then
  echo "vm-lane: needs root (qemu, network namespaces in the guest); try: sudo $0" >&2
  exit 1
fi

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
command -v busybox >/dev/null || need+=(busybox-static)
for cmd in ip:iproute2 nft:nftables tcpdump:tcpdump ping:iputils-ping wg:wireguard-tools \
  iperf3:iperf3 jq:jq iptables:iptables; do
  command -v "${cmd%%:*}" >/dev/null || need+=("${cmd##*:}")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then
  echo "vm-lane: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v vng >/dev/null; then
  echo "vm-lane: installing virtme-ng (PyPI)"
  if command -v pip >/dev/null; then
    pip install -q virtme-ng
  else
    # Debian's own Python: pip from its package, and PEP 668 acknowledged for this one tool.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    python3 -m pip install -q --break-system-packages virtme-ng
  fi
fi

# Build on the host; never compile in the guest. The plan: one line per run, "crate binary args...".
out=$(mktemp -d /tmp/wormhole-vm.XXXXXX)
test_binary() { # crate [cargo flags...]
  local crate=$1
  shift
  cargo test -p "$crate" --test it --no-run --message-format=json "$@" 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .profile.test and .target.name == "it") | .executable'
}
if [ "$filter" = --bench ]; then
  # The scale measurements of BENCHMARKS.md on the kernel backend, side by side with userspace
  # in the same guest (TCG: compare ratios, not absolute times).
  bench=$(cargo bench -p wormhole-linux --bench apply --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "apply") | .executable')
  echo "wormhole-linux $bench" >>"$out/plan"
  echo "wormhole-daemon $(test_binary wormhole-daemon --release) --ignored --nocapture kubernetes_scale" >>"$out/plan"
  printf 'export WORMHOLE_BENCH_BACKENDS=kernel,userspace WORMHOLE_SCALE_BACKENDS=kernel,userspace WORMHOLE_BENCH_REPS=%s\n' \
    "${WORMHOLE_BENCH_REPS:-5}" >"$out/env"
else
  for crate in wormhole-linux wormhole-daemon; do
    echo "$crate $(test_binary "$crate") --ignored --test-threads=1 $filter" >>"$out/plan"
  done
fi
while read -r crate exe args; do
  [ -x "$exe" ] || { echo "vm-lane: no binary for $crate" >&2; exit 1; }
done <"$out/plan"

kernel=$(ls /boot/vmlinuz-* | sort -V | tail -1)
echo "vm-lane: booting $kernel (TCG) for tests matching '$filter'"
started=$(date +%s)
# vng's own exit status says nothing about the tests: the result files do.
timeout "${VM_TIMEOUT:-2400}" vng --run "$kernel" --disable-kvm --memory 2G --cpus 2 \
  --rwdir "$out" --exec "bash $root/scripts/vm-guest.sh $root $out" \
  </dev/null >"$out/vng.log" 2>&1 || true

failed=0
while read -r crate exe args; do
  echo "=== $crate (in the VM) ==="
  cat "$out/$crate.log" 2>/dev/null || true
  rc=$(cat "$out/$crate.rc" 2>/dev/null || echo missing)
  if [ "$rc" != 0 ]; then
    echo "vm-lane: $crate: exit status $rc" >&2
    failed=1
  elif [ "$filter" != --bench ] && ! grep -q "^test result: ok\. [1-9]" "$out/$crate.log"; then
    echo "vm-lane: $crate: ran no test" >&2
    failed=1
  fi
done <"$out/plan"
if [ ! -f "$out/guest-done" ]; then
  echo "vm-lane: the guest did not finish; the last lines of the VM's console:" >&2
  tail -40 "$out/vng.log" >&2
  failed=1
fi
echo "vm-lane: $(( $(date +%s) - started )) s in the VM"
[ "$failed" = 0 ] && rm -rf "$out"
exit "$failed"
