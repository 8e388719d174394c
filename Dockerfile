# The agent's image: the `wormhole` binary and nft (the firewall is loaded with `nft -f`).
# wireguard-go is included for `--backend userspace`; `auto` uses the kernel module or the
# embedded WireGuard and needs neither.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p wormhole-daemon

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables wireguard-go \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/wormhole /usr/local/bin/wormhole
# Our license and the third-party notices (every crate in the binary, with its license texts;
# scripts/notices.sh keeps them current).
COPY LICENSE THIRD-PARTY-NOTICES.md /usr/share/doc/wormhole/
ENTRYPOINT ["/usr/local/bin/wormhole"]
