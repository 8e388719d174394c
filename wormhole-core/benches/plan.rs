//! Validation + planning: what the reconciler does on every pass, at 10 to 10,000 peers.
//!
//! Each iteration runs the whole per-pass pipeline: [`Mesh::build`] on a snapshot (handed over by
//! value, as a source hands it to the reconciler; the copy is made outside the timing),
//! [`HostState::desired`] on the mesh, and [`plan()`] against an observed state. Three scenarios:
//!
//! - `all_new`: first pass, no previous mesh, nothing on the host yet;
//! - `no_change`: a resync tick, the previous mesh given, the host already equal to the desired state
//!   (the plan is empty);
//! - `one_change`: one peer's IPv4 pod CIDR changed, planned against the previous desired state (the
//!   plan holds exactly one device change).
//!
//! A second group repeats the 10,000-peer `no_change` with a cluster secret, so the cost of
//! deriving one pre-shared key per peer is visible.
//!
//! Run with `cargo bench -p wormhole-core --bench plan`.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main,
};
use criterion::{SamplingMode, measurement::WallTime};
use ipnet::IpNet;
use wormhole_core::HostSettings;
use wormhole_core::{DeviceChange, PeerField};
use wormhole_core::{HostState, Mesh, NodeEntry, Plan, PresharedKey, PrivateKey, Snapshot, plan};

/// Peer counts measured.
const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

/// This node's name in the snapshots.
const LOCAL: &str = "local";

/// The IPv4 pod CIDR the changed peer moves to in `one_change` (unused by any generated node).
const MOVED_CIDR: &str = "10.254.0.0/24";

/// Everything one peer count needs, built outside the timing loop.
struct Fixture {
    key: PrivateKey,
    cluster: Vec<IpNet>,
    host: HostSettings,
    /// N peers plus the local node.
    snapshot: Snapshot,
    /// `snapshot` with one peer's IPv4 pod CIDR changed.
    changed: Snapshot,
    /// The mesh built from `snapshot` without history: the previous pass's mesh.
    mesh: Mesh,
    /// The desired state of `mesh`, which is also what the host looks like after that pass.
    desired: HostState,
}

/// Peer `i`: IPv4 pod CIDR `10.(i/256).(i%256).0/24`, IPv6 pod CIDR `fd00:0:0:i::/64`, a
/// distinct underlay endpoint in `172.16.0.0/12`, and a persistent keepalive on every fourth.
fn peer_entry(i: usize, public_key: String) -> NodeEntry {
    let v6_subnet = u16::try_from(i).expect("fewer than 65,536 peers");
    let endpoint_ip = Ipv4Addr::from(0xac10_0000_u32 + u32::from(v6_subnet) + 1);
    NodeEntry {
        name: format!("node-{i:05}"),
        public_key,
        endpoint: Some(SocketAddr::from((endpoint_ip, 51820)).to_string()),
        pod_cidrs: vec![
            format!("10.{}.{}.0/24", i / 256, i % 256),
            format!("{}/64", Ipv6Addr::new(0xfd00, 0, 0, v6_subnet, 0, 0, 0, 0)),
        ],
        persistent_keepalive: i.is_multiple_of(4).then_some(25),
        origin: format!("bench node[{i}]"),
    }
}

impl Fixture {
    /// A fixture of `n` peers whose keys are the first `n` of `peer_keys`.
    fn new(n: usize, peer_keys: &[String]) -> Self {
        let key = PrivateKey::generate();
        let cluster: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().expect("valid CIDR"),
            "fd00::/48".parse().expect("valid CIDR"),
        ];
        let mut nodes: Vec<NodeEntry> = peer_keys[..n]
            .iter()
            .enumerate()
            .map(|(i, k)| peer_entry(i, k.clone()))
            .collect();
        nodes.push(NodeEntry {
            name: LOCAL.into(),
            public_key: key.public_key().to_base64(),
            endpoint: Some("172.31.255.254:51820".into()),
            pod_cidrs: vec!["10.255.255.0/24".into(), "fd00:0:0:ffff::/64".into()],
            persistent_keepalive: None,
            origin: "bench local".into(),
        });
        let snapshot = Snapshot {
            nodes,
            ..Snapshot::default()
        };
        let mut changed = snapshot.clone();
        changed.nodes[n / 2].pod_cidrs[0] = MOVED_CIDR.into();

        let host = HostSettings::default();
        let mesh = Mesh::build(LOCAL, &key.public_key(), &cluster, snapshot.clone(), None)
            .expect("the generated snapshot is valid");
        assert_eq!(mesh.peers.len(), n, "every generated peer is accepted");
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        let desired = HostState::desired(&mesh, &key, None, &host);
        Fixture {
            key,
            cluster,
            host,
            snapshot,
            changed,
            mesh,
            desired,
        }
    }

    /// One pass: validate `snapshot`, build the desired state, plan it against `observed`.
    fn pass(
        &self,
        snapshot: Snapshot,
        previous: Option<&Mesh>,
        secret: Option<&PresharedKey>,
        observed: &HostState,
    ) -> Pass {
        let mesh = Mesh::build(
            LOCAL,
            &self.key.public_key(),
            &self.cluster,
            snapshot,
            previous,
        )
        .expect("the generated snapshot is valid");
        let desired = HostState::desired(&mesh, &self.key, secret, &self.host);
        let plan = plan(&desired, observed);
        Pass {
            plan,
            _mesh: mesh,
            _desired: desired,
        }
    }
}

/// One pass's results. Returned whole so that criterion drops them after timing: freeing the
/// snapshot (which the mesh owns) is memory management, not validation or planning (see
/// BENCHMARKS.md for the cost with the drops timed too).
struct Pass {
    plan: Plan,
    _mesh: Mesh,
    _desired: HostState,
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.plan.fmt(f)
    }
}

impl std::ops::Deref for Pass {
    type Target = Plan;
    fn deref(&self) -> &Plan {
        &self.plan
    }
}

/// Generates `n` distinct public keys, as base64 text.
fn peer_keys(n: usize) -> Vec<String> {
    let keys: Vec<String> = (0..n)
        .map(|_| PrivateKey::generate().public_key().to_base64())
        .collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), n, "generated keys are distinct");
    keys
}

/// Fewer, flat samples for the large sizes so the whole run stays within a few minutes.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    if n >= 10_000 {
        group.sample_size(20).sampling_mode(SamplingMode::Flat);
    } else if n >= 1_000 {
        group.sample_size(50).sampling_mode(SamplingMode::Flat);
    } else {
        group.sample_size(100).sampling_mode(SamplingMode::Auto);
    }
}

fn validate_and_plan(c: &mut Criterion) {
    let keys = peer_keys(SIZES[SIZES.len() - 1]);
    let empty = HostState::default();
    let mut group = c.benchmark_group("validate_and_plan");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in SIZES {
        let fx = Fixture::new(n, &keys);
        configure(&mut group, n);

        let first = fx.pass(fx.snapshot.clone(), None, None, &empty);
        assert!(first.device.create);
        // Private key, listen port, then one addition per peer.
        assert_eq!(first.device.changes.len(), n + 2);
        group.bench_with_input(BenchmarkId::new("all_new", n), &fx, |b, fx| {
            b.iter_batched(
                || fx.snapshot.clone(),
                |s| fx.pass(s, None, None, black_box(&empty)),
                BatchSize::LargeInput,
            );
        });

        let steady = fx.pass(fx.snapshot.clone(), Some(&fx.mesh), None, &fx.desired);
        assert!(steady.is_empty(), "no change plans nothing:\n{steady}");
        group.bench_with_input(BenchmarkId::new("no_change", n), &fx, |b, fx| {
            b.iter_batched(
                || fx.snapshot.clone(),
                |s| fx.pass(s, Some(&fx.mesh), None, black_box(&fx.desired)),
                BatchSize::LargeInput,
            );
        });

        let one = fx.pass(fx.changed.clone(), Some(&fx.mesh), None, &fx.desired);
        assert!(!one.device.create);
        assert!(
            matches!(
                &one.device.changes[..],
                [DeviceChange::UpdatePeer(_, fields)]
                    if matches!(&fields[..], [PeerField::AllowedIps(_)])
            ),
            "exactly one device change:\n{one}"
        );
        group.bench_with_input(BenchmarkId::new("one_change", n), &fx, |b, fx| {
            b.iter_batched(
                || fx.changed.clone(),
                |s| fx.pass(s, Some(&fx.mesh), None, black_box(&fx.desired)),
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn validate_and_plan_psk(c: &mut Criterion) {
    let n = SIZES[SIZES.len() - 1];
    let fx = Fixture::new(n, &peer_keys(n));
    let secret = PresharedKey::generate();
    let observed = HostState::desired(&fx.mesh, &fx.key, Some(&secret), &fx.host);
    let steady = fx.pass(
        fx.snapshot.clone(),
        Some(&fx.mesh),
        Some(&secret),
        &observed,
    );
    assert!(steady.is_empty(), "no change plans nothing:\n{steady}");

    let mut group = c.benchmark_group("validate_and_plan_psk");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    configure(&mut group, n);
    group.bench_with_input(BenchmarkId::new("no_change", n), &fx, |b, fx| {
        b.iter_batched(
            || fx.snapshot.clone(),
            |s| {
                fx.pass(
                    s,
                    Some(&fx.mesh),
                    Some(black_box(&secret)),
                    black_box(&observed),
                )
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, validate_and_plan, validate_and_plan_psk);
criterion_main!(benches);
