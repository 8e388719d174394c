#!/usr/bin/env bash
# A local 3-node Wormhole mesh in network namespaces, no cluster needed:
#   - an "underlay" namespace with a bridge, three "node" namespaces plugged into it;
#   - `wormhole run` in each node, all reading one peers file;
#   - two "pods" per node, attached by the standard CNI bridge plugin using the conflist the
#     agent wrote;
#   - every pod pings every pod on the other nodes over IPv4 and IPv6 while tcpdump watches the
#     underlay: only WireGuard's UDP may cross it;
#   - `wormhole status` from node 1; then everything is removed.
#
# Run as root on a Debian-like machine:  sudo scripts/demo.sh
# Environment: BACKEND=embedded|userspace (default embedded), WORMHOLE_BIN=path (default: build
# target/release/wormhole), KEEP=1 (leave everything up and print how to poke at it).
set -euo pipefail

BACKEND=${BACKEND:-embedded}
P=whdemo                       # prefix of every namespace we create
N=3
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "demo: needs root (network namespaces, TUN, nftables); try: sudo $0" >&2
  exit 1
fi

need=()
for cmd in ip:iproute2 nft:nftables tcpdump:tcpdump ping:iputils-ping jq:jq; do
  command -v "${cmd%%:*}" >/dev/null || need+=("${cmd##*:}")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
if [ "$BACKEND" = userspace ]; then command -v wireguard-go >/dev/null || need+=(wireguard-go); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "demo: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

BIN=${WORMHOLE_BIN:-}
if [ -z "$BIN" ]; then
  echo "demo: building wormhole (cargo build --release -p wormhole-daemon)"
  cargo build --release -q -p wormhole-daemon
  BIN=$PWD/target/release/wormhole
fi

WORK=$(mktemp -d /tmp/whdemo.XXXXXX)
cleanup() {
  set +e
  if [ "${KEEP:-}" = 1 ]; then return; fi
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-"); do
    for pid in $(ip netns pids "$ns"); do kill "$pid" 2>/dev/null; done
  done
  sleep 0.3
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-"); do
    for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null; done
    ip netns del "$ns"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
cleanup   # leftovers of an interrupted run
KEEP_SAVED=${KEEP:-}; KEEP=; cleanup; KEEP=$KEEP_SAVED
mkdir -p "$WORK"

ns() { ip netns exec "$@"; }

echo "demo: underlay bridge and $N nodes (192.168.77.1-$N)"
ip netns add $P-u
ns $P-u sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ns $P-u ip link add br0 type bridge
ns $P-u ip link set br0 up
{
  echo 'cluster_cidrs = ["10.99.0.0/16", "fd99::/48"]'
  for i in $(seq $N); do
    ip netns add $P-n$i
    ns $P-n$i ip link set lo up
    ns $P-n$i ip link add eth0 type veth peer name v$i
    ns $P-n$i ip link set v$i netns $P-u
    ns $P-u ip link set v$i master br0 up
    ns $P-n$i sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1
    ns $P-n$i ip addr add 192.168.77.$i/24 dev eth0
    ns $P-n$i ip link set eth0 up
    mkdir -p "$WORK/n$i"
    (umask 077; "$BIN" genkey > "$WORK/n$i/private.key")
    cat <<NODE

[[node]]
name = "n$i"
public_key = "$("$BIN" pubkey < "$WORK/n$i/private.key")"
endpoint = "192.168.77.$i:51820"
pod_cidrs = ["10.99.$i.0/24", "fd99:0:0:$i::/64"]
NODE
  done
} > "$WORK/peers.toml"

echo "demo: starting \`wormhole run --backend $BACKEND\` in each node"
for i in $(seq $N); do
  # Each node gets its own interface name: userspace UAPI sockets share /var/run/wireguard.
  ns $P-n$i "$BIN" run --node-name n$i --peers "$WORK/peers.toml" --backend "$BACKEND" \
    --interface wh-n$i --key-file "$WORK/n$i/private.key" --cni-conf-dir "$WORK/n$i/cni" \
    > "$WORK/n$i/log" 2>&1 &
done
for i in $(seq $N); do
  for _ in $(seq 100); do [ -s "$WORK/n$i/cni/10-wormhole.conflist" ] && break; sleep 0.1; done
  [ -s "$WORK/n$i/cni/10-wormhole.conflist" ] || { echo "n$i did not write its conflist:"; cat "$WORK/n$i/log"; exit 1; }
done

# What a container runtime does with a conflist: run each plugin in turn, passing the result on.
cni_add() { # node pod
  local node=$1 pod=$2 conf=$WORK/$1/cni/10-wormhole.conflist result='' plugin
  for idx in 0 1 2; do
    plugin=$(jq -c --argjson i $idx --arg data "$WORK/$node/ipam" --argjson prev "${result:-null}" \
      '.plugins[$i] + {name: .name, cniVersion: .cniVersion}
       | if .ipam then .ipam.dataDir = $data else . end
       | if $prev then .prevResult = $prev else . end' "$conf")
    result=$(ns $P-$node env CNI_COMMAND=ADD CNI_CONTAINERID=$P-$node-$pod CNI_NETNS=/var/run/netns/$P-$node-$pod \
      CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "/usr/lib/cni/$(jq -r .type <<<"$plugin")" <<<"$plugin")
  done
  echo "$result"
}

echo "demo: two pods per node, attached by the CNI bridge plugin from the agent's conflist"
declare -A IP4 IP6
for i in $(seq $N); do
  for pod in a b; do
    ip netns add $P-n$i-$pod
    out=$(cni_add n$i $pod)
    IP4[n$i-$pod]=$(jq -r '.ips[] | select(.address | contains(".")) | .address | split("/")[0]' <<<"$out")
    IP6[n$i-$pod]=$(jq -r '.ips[] | select(.address | contains(":")) | .address | split("/")[0]' <<<"$out")
    echo "  pod n$i-$pod: ${IP4[n$i-$pod]} ${IP6[n$i-$pod]}"
  done
done

ns $P-u tcpdump -i br0 --immediate-mode -nn -U -w "$WORK/underlay.pcap" 2>/dev/null &
sleep 1

echo "demo: every pod pings every pod on the other nodes (IPv4 and IPv6)"
ok=0; bad=0
for src in "${!IP4[@]}"; do
  for dst in "${!IP4[@]}"; do
    [ "${src%-*}" = "${dst%-*}" ] && continue
    for target in "${IP4[$dst]}" "${IP6[$dst]}"; do
      if ns $P-$src ping -c 1 -W 3 "$target" >/dev/null 2>&1; then ok=$((ok+1)); else bad=$((bad+1)); echo "  FAILED $src -> $dst ($target)"; fi
    done
  done
done
echo "  $ok pings answered, $bad failed"

sleep 0.5
kill %?tcpdump 2>/dev/null || pkill -f "tcpdump -i br0 -nn -U -w $WORK" || true
sleep 0.5
total=$(tcpdump -r "$WORK/underlay.pcap" -nn 2>/dev/null | grep -c ' IP ' || true)
wg=$(tcpdump -r "$WORK/underlay.pcap" -nn 'udp port 51820' 2>/dev/null | grep -c ' IP ' || true)
clear=$(tcpdump -r "$WORK/underlay.pcap" -nn 'icmp or icmp6 or tcp or net 10.99.0.0/16' 2>/dev/null | grep -c . || true)
echo "demo: the underlay carried $total IP packets: $wg WireGuard UDP/51820, $clear in cleartext"

echo
echo "demo: wormhole status on n1"
ns $P-n1 "$BIN" status || true
echo
if [ "$bad" -ne 0 ] || [ "$clear" -ne 0 ] || [ "$wg" -eq 0 ]; then
  echo "demo: FAILED (logs in $WORK/n*/log)"; KEEP=1; exit 1
fi
if [ "${KEEP:-}" = 1 ]; then
  echo "demo: left running. Try: ip netns exec $P-n1 $BIN status; ip netns exec $P-n1 nft list table inet wormhole"
  echo "      clean up with: KEEP= $0 (or ip netns del each $P-*)"
else
  echo "demo: OK, encrypted mesh works; cleaning up"
fi
