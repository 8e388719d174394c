#!/usr/bin/env bash
# Looks at `wormhole graph`'s SVG the way a reader does: rendered by a real browser (headless
# Chromium, installed with apt when missing) into a PNG.
#
#   scripts/graph-screenshot.sh FILE.svg [OUT.png]   screenshot one SVG (default: FILE.png)
#   scripts/graph-screenshot.sh --example DIR        make the example of docs/troubleshooting.md in DIR: fake
#       admin endpoints on loopback serving /status of an 8-node mesh with faults (and of a
#       120-node one), then `wormhole status --cluster` and `wormhole graph` against them as a
#       user would run them, and screenshots of the SVGs
#
# Not part of CI (Chromium is a large install); run it after changing the SVG renderer.
set -euo pipefail
cd "$(dirname "$0")/.."

need_chromium() {
    for c in chromium chromium-browser google-chrome; do
        if command -v "$c" >/dev/null; then
            echo "$c"
            return
        fi
    done
    echo "installing chromium (apt)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
    echo chromium
}

# screenshot SVG PNG: the window is the SVG's own size (its width and height attributes).
screenshot() {
    local svg=$1 png=$2 browser size width height
    browser=$(need_chromium)
    size=$(head -c 2000 "$svg" | grep -o '<svg[^>]*' | head -1)
    width=$(sed -n 's/.* width="\([0-9]*\)".*/\1/p' <<<"$size")
    height=$(sed -n 's/.* height="\([0-9]*\)".*/\1/p' <<<"$size")
    "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --window-size="${width:-1200},${height:-900}" --screenshot="$png" \
        "file://$(realpath "$svg")" 2>/dev/null
    echo "$png (${width}x${height})"
}

# serve DIR: one loopback HTTP server per DIR/PORT.json, answering GET /status with it.
serve() {
    python3 - "$1" <<'EOF' &
import http.server, os, sys, threading
root = sys.argv[1]
class Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open(os.path.join(root, f"{self.server.server_port}.json"), "rb").read()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
for name in os.listdir(root):
    port = int(name.split(".")[0])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
open(os.path.join(root, "ready"), "w").close()
threading.Event().wait()
EOF
    SERVER=$!
    for _ in $(seq 100); do [ -e "$1/ready" ] && return; sleep 0.1; done
    echo "the fake admin endpoints did not start" >&2
    exit 1
}

# views DIR BASE_PORT N FAULTS: writes DIR/PORT.json, the /status of each of N nodes (node-1 on
# BASE_PORT, ...), from the faults named (see the Python).
views() {
    python3 - "$@" <<'EOF'
import json, os, sys
root, base, n, scenario = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.makedirs(root, exist_ok=True)
width = len(str(n))
name = lambda i: f"node-{i:0{width}d}" if n > 9 else f"node-{i}"
cidr = lambda i: f"10.244.{i}.0/24" if i < 256 else f"10.{i // 256}.{i % 256}.0/24"
def state(a, b):
    """What node a says of node b."""
    if scenario == "small":
        if {a, b} == {2, 5}:
            return "mtu-blackhole (max 1344)"
        if 7 in (a, b):
            return "never"
        if 8 == b:
            return "stale"
        if 4 in (a, b):
            return "lossy (30 %)" if a == 4 else "lossy (27 %)"
        return "ok"
    if 17 in (a, b):
        return "unreachable"
    if {a, b} in ({40, 90}, {41, 90}, {42, 90}):
        return "mtu-blackhole (max 1380)"
    return "ok"
down = {8} if scenario == "small" else set()
for a in range(1, n + 1):
    if a in down:
        continue
    peers = []
    for b in range(1, n + 1):
        if a == b:
            continue
        s = state(a, b)
        peers.append({
            "name": name(b), "public_key": None, "endpoint": f"192.168.77.{b}:51820",
            "allowed_ips": [cidr(b)], "latest_handshake_age_seconds": 12, "rx_bytes": 0,
            "tx_bytes": 0, "state": s, "hint": None, "rtt_ms": 0.4, "last_rtt_ms": 0.4,
            "probe_loss": 0.0, "path_mtu": 1420,
        })
    view = {
        "node": name(a), "public_key": None, "backend": "embedded", "interface": "wormhole0",
        "mtu": 1420, "pod_cidrs": [cidr(a)], "ready": True, "last_reconcile": None,
        "source_error": None, "passes": 1, "errors": 0, "peers": peers,
    }
    json.dump(view, open(os.path.join(root, f"{base + a}.json"), "w"))
EOF
}

example() {
    local out=$1 bin base=39470 admins=()
    mkdir -p "$out"
    TMP=$(mktemp -d)
    trap 'kill "${SERVER:-}" 2>/dev/null || true; rm -rf "$TMP"' EXIT
    cargo build -q -p wormhole-daemon
    bin=${CARGO_TARGET_DIR:-target}/debug/wormhole
    views "$TMP/small" "$base" 8 small
    serve "$TMP/small"
    for i in $(seq 8); do admins+=(--admin "127.0.0.1:$((base + i))"); done
    "$bin" status --cluster "${admins[@]}" >"$out/status-cluster.txt" || true
    "$bin" graph "${admins[@]}" >"$out/mesh.svg"
    "$bin" graph -o dot "${admins[@]}" >"$out/mesh.dot"
    kill "$SERVER"
    screenshot "$out/mesh.svg" "$out/mesh.png"

    base=40000 admins=()
    views "$TMP/big" "$base" 120 big
    serve "$TMP/big"
    for i in $(seq 120); do admins+=(--admin "127.0.0.1:$((base + i))"); done
    "$bin" status --cluster "${admins[@]}" >"$out/status-cluster-120.txt" || true
    "$bin" graph "${admins[@]}" >"$out/mesh-120.svg"
    kill "$SERVER"
    screenshot "$out/mesh-120.svg" "$out/mesh-120.png"
    cat "$out/status-cluster.txt"
}

case "${1:-}" in
--example) example "${2:?usage: $0 --example DIR}" ;;
"" | -h | --help) sed -n '2,12p' "$0" ;;
*) screenshot "$1" "${2:-${1%.svg}.png}" ;;
esac
