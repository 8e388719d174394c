#!/usr/bin/env bash
# Runs inside the VM lane's guest (see vm-lane.sh): loads the modules and runs each crate's test
# binary of the plan from its own directory, writing log and exit status to OUT.
root=$1 out=$2
export WORMHOLE_TIME_FACTOR=${WORMHOLE_TIME_FACTOR:-4} RUST_BACKTRACE=1
# shellcheck disable=SC1091
[ -f "$out/env" ] && . "$out/env"
modprobe -a wireguard tun veth bridge nf_tables 2>"$out/modprobe.log"
[ -d /sys/module/wireguard ] || echo "the guest kernel has no WireGuard module" >>"$out/modprobe.log"
mkdir -p /var/run/netns /var/run/wireguard
while read -r crate exe args; do
  # shellcheck disable=SC2086 # args are words
  (cd "$root/$crate" && "$exe" $args) >"$out/$crate.log" 2>&1
  echo $? >"$out/$crate.rc"
done <"$out/plan"
touch "$out/guest-done"
