//! [`Agent`]: start-up (keys, peer source, device), then the reconciler with the admin server, the
//! CNI conflist and Kubernetes publishing beside it, until the shutdown future resolves.
//! Stopping leaves the network in place.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wormhole_core::ErrorChain;

use ipnet::IpNet;
use tokio::sync::watch;
use wormhole_core::Backends;
use wormhole_core::HostSettings;
use wormhole_core::WireGuardDevice;
use wormhole_core::from_peer_source;
use wormhole_core::{
    FileKeyStore, FilePeerSource, KeyStore, PeerStream, PrivateKey, Reconciler, Settings, Snapshot,
    Status,
};
use wormhole_k8s::EventSink;
use wormhole_k8s::SecretKeyStore;
use wormhole_k8s::{KubePeerSource, detect_cluster_cidrs};
use wormhole_k8s::{LocalSettings, NodeSettings, PublishedEndpoint, Publisher};
use wormhole_k8s::{STATE_FILE, StateStore};
use wormhole_linux::{Network, Nftables};

use crate::admin::{self, Admin};
use crate::builder::{KubernetesOptions, Options, Peers};
use crate::checkup::{self, Checkup};
use crate::forwarding::{self, Forwarding};
use crate::health::{self, ProbeSettings};
use crate::host::Inputs;
use crate::metrics::Metrics;
use crate::preflight::{self, Phase, PodCidrs, PreflightReport};
use crate::{AgentBuilder, EnvironmentError, Error, cni, lock, node_settings};

/// The WireGuard MTU: underlay MTU - 80, the underlay being the interface holding this node's
/// endpoint address in the peers file (or its Node's InternalIP, saved for starts without the
/// API server), else the one of the default route.
async fn detect_mtu(
    config: &Options,
    peers: &Peers,
    peers_file: Option<&Snapshot>,
    network: &Network,
    client: Option<&kube::Client>,
    state: Option<&StateStore>,
) -> Result<u32, Error> {
    let local_ip = match peers {
        // Read (and checked) at the start of start-up.
        Peers::File(_) => peers_file.and_then(|s| {
            let me = s.nodes.iter().find(|n| n.name == config.node_name)?;
            me.endpoint
                .as_deref()?
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|e| e.ip())
        }),
        Peers::Kubernetes(k) => match (k.endpoint, client) {
            (PublishedEndpoint::Fixed(e), _) => Some(e.ip()),
            // The address other nodes reach us at (behind NAT: the one the NAT translates):
            // this Node's InternalIP.
            (_, Some(client)) => node_ip(config, client, state).await?,
            (_, None) => None,
        },
        // Your own source: the interface of the default route.
        Peers::Custom(_) => None,
    };
    let mtu = network.wireguard_mtu(local_ip).await?;
    tracing::info!(mtu, "detected MTU (underlay - 80); set --mtu to override");
    Ok(mtu)
}

/// This Node's InternalIP from the API server (saved), else as saved when the API server cannot
/// be reached.
async fn node_ip(
    config: &Options,
    client: &kube::Client,
    state: Option<&StateStore>,
) -> Result<Option<std::net::IpAddr>, Error> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let name = &config.node_name;
    let node = match tokio::time::timeout(wormhole_k8s::API_TIMEOUT, nodes.get(name)).await {
        Ok(Ok(node)) => node,
        // The API server answered: the Node is not there (or we may not read it).
        Ok(Err(kube::Error::Api(status))) => {
            return Err(EnvironmentError::NodeRefused {
                node: name.clone(),
                message: status.message,
            }
            .into());
        }
        failed => {
            let why: Box<dyn std::error::Error + Send + Sync> = match failed {
                Ok(Err(e)) => Box::new(e),
                _ => format!("no answer within {:?}", wormhole_k8s::API_TIMEOUT).into(),
            };
            let saved = state.and_then(|s| s.saved().node_ip);
            return match saved {
                Some(ip) => {
                    tracing::warn!(error = %ErrorChain(&*why), %ip, "cannot read this Node: using its address saved at the last start");
                    Ok(Some(ip))
                }
                None => Err(EnvironmentError::NodeUnreachable {
                    node: name.clone(),
                    source: why,
                }
                .into()),
            };
        }
    };
    let ip = wormhole_k8s::internal_ip(&node);
    if let (Some(state), Some(ip)) = (state, ip)
        && let Err(e) = state.save(|s| s.node_ip = Some(ip)).await
    {
        tracing::warn!(error = %ErrorChain(&e), "cannot save this Node's address");
    }
    Ok(ip)
}

/// The cluster CIDRs from kubeadm-config (saved), else as saved when the API server cannot be
/// reached.
async fn kubeadm_cluster_cidrs(
    client: &kube::Client,
    state: &StateStore,
) -> Result<Vec<IpNet>, Error> {
    match detect_cluster_cidrs(client.clone()).await {
        Ok(cidrs) if cidrs.is_empty() => Err(EnvironmentError::NoClusterCidr.into()),
        Ok(cidrs) => {
            tracing::info!(?cidrs, "cluster CIDRs from kubeadm-config");
            if let Err(e) = state.save(|s| s.cluster_cidrs = cidrs.clone()).await {
                tracing::warn!(error = %ErrorChain(&e), "cannot save the cluster CIDRs");
            }
            Ok(cidrs)
        }
        Err(e @ wormhole_k8s::Error::KubeadmConfig(_)) => Err(wormhole_core::Error::from(e).into()),
        Err(e) => {
            let saved = state.saved().cluster_cidrs;
            if saved.is_empty() {
                return Err(wormhole_core::Error::from(e).into());
            }
            tracing::warn!(error = %ErrorChain(&e), cidrs = ?saved, path = %state.path().display(),
                "cannot read kubeadm-config: using the cluster CIDRs saved at the last start");
            Ok(saved)
        }
    }
}

/// Where the agent keeps what it must not lose: the directory of its private key
/// (`/var/lib/wormhole` by default).
fn state_dir(key_file: &Path) -> PathBuf {
    key_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Keeps the CNI conflist equal to this node's pod CIDRs and MTU: checked on every status
/// change (every pass), so a deleted or edited file is rewritten at the next pass.
async fn follow_cni(mut status: watch::Receiver<Status>, dir: PathBuf, bridge: String, mtu: u32) {
    let mut written: Option<Vec<IpNet>> = None;
    loop {
        let cidrs = status.borrow_and_update().pod_cidrs.clone();
        if !cidrs.is_empty() {
            match cni::write(&dir, &cni::render(&bridge, &cidrs, mtu)) {
                Ok(true) => {
                    if written.as_ref() == Some(&cidrs) {
                        tracing::warn!(dir = %dir.display(), "the CNI conflist was deleted or changed by someone else; rewrote it");
                    } else {
                        tracing::info!(dir = %dir.display(), ?cidrs, mtu, "wrote CNI conflist");
                    }
                    written = Some(cidrs);
                }
                Ok(false) => written = Some(cidrs),
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %ErrorChain(&e), "cannot write the CNI conflist")
                }
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// The peers file (or directory) as it is at start: it must exist, be readable and parse.
async fn read_peers_file(path: PathBuf) -> Result<Snapshot, Error> {
    tokio::task::spawn_blocking(move || wormhole_core::load_peers_file(&path))
        .await
        .map_err(|e| Error::Io {
            what: "read the peers file".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| EnvironmentError::PeersFile { source }.into())
}

/// A `kube` client from the kubeconfig file given, else the in-cluster service account.
async fn kube_client(options: &KubernetesOptions) -> Result<kube::Client, Error> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let unusable = |e: kube::config::KubeconfigError| EnvironmentError::Kubeconfig {
                path: path.clone(),
                source: Box::new(e),
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(unusable)?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(unusable)?
        }
        None => kube::Config::incluster().map_err(|e| EnvironmentError::NotInCluster {
            source: Box::new(e),
        })?,
    };
    let mut config = config;
    wormhole_k8s::configure_client(&mut config);
    kube::Client::try_from(config)
        .map_err(|e| EnvironmentError::KubeClient {
            source: Box::new(e),
        })
        .map_err(Error::from)
}

/// The cluster CIDRs: given, else (Kubernetes mode) from kubeadm-config.
async fn cluster_cidrs(
    config: &Options,
    client: Option<&kube::Client>,
    state: Option<&StateStore>,
) -> Result<Vec<IpNet>, Error> {
    match (client, state) {
        (Some(client), Some(state)) if config.cluster_cidrs.is_empty() => {
            kubeadm_cluster_cidrs(client, state).await
        }
        _ => Ok(config.cluster_cidrs.clone()),
    }
}

/// This node's annotations, as the Kubernetes source passes them on.
type NodeAnnotations = watch::Receiver<Option<wormhole_k8s::Annotations>>;

/// The peer source and key store of the chosen mode, and in Kubernetes mode this node's
/// annotations from the source's Node watch.
fn source_and_keys(
    config: &Options,
    peers: Peers,
    file_keys: FileKeyStore,
    key: &PrivateKey,
    cidrs: &[IpNet],
    client: Option<&kube::Client>,
    state: Option<&StateStore>,
) -> (PeerStream, Arc<dyn KeyStore>, Option<NodeAnnotations>) {
    match peers {
        Peers::File(path) => (
            from_peer_source(FilePeerSource::new(path)),
            Arc::new(file_keys),
            None,
        ),
        Peers::Custom(source) => (source, Arc::new(file_keys), None),
        Peers::Kubernetes(options) => {
            let client = client.expect("start() makes the client before loading keys");
            let state = state.expect("start() opens the state file in Kubernetes mode");
            let keys: Arc<dyn KeyStore> = match &options.psk_secret {
                Some((namespace, name)) => Arc::new(
                    SecretKeyStore::new(file_keys, client.clone(), namespace, name)
                        .with_saved(state_dir(&config.key_file).join(wormhole_k8s::PSK_FILE)),
                ),
                None => Arc::new(file_keys),
            };
            let source = KubePeerSource::new(
                client.clone(),
                &config.node_name,
                key.public_key(),
                cidrs.to_vec(),
            )
            .with_external_cidrs(options.external_cidrs.clone())
            .with_state(state.clone());
            let annotations = source.node_annotations();
            (from_peer_source(source), keys, Some(annotations))
        }
    }
}

/// Kubernetes mode: publishes this node's WormholeNode and Events as the status changes, with
/// the per-node settings its Node's annotations give (published once they were read).
async fn follow_kubernetes(
    mut status: watch::Receiver<Status>,
    mut publisher: Publisher,
    mut events: EventSink,
    mut settings: node_settings::Follower,
    node: String,
) {
    loop {
        if let Some(in_force) = settings.update() {
            publisher.set_settings(in_force);
        }
        settings.report(&mut events, &node).await;
        let current = status.borrow_and_update().clone();
        if settings.known()
            && let Some(key) = current.public_key
        {
            if let Err(e) = publisher.publish_spec(&key).await {
                tracing::warn!(error = %ErrorChain(&e), "cannot publish this node's WormholeNode; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            if let Err(e) = publisher.publish_status(&current).await {
                tracing::warn!(error = %ErrorChain(&e), "cannot publish the WormholeNode status");
            }
        }
        events.observe(&current).await;
        // The next status change, or a changed status held back by the interval.
        let due = publisher.status_due();
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            () = settings.changed() => {}
            () = async { tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await },
                if due.is_some() => {}
        }
    }
}

/// The least time between two writes of this node's WormholeNode status: a state change is
/// written at once, further ones within this time once at its end (pairs flapping between `ok`
/// and `lossy` cost each node at most one write per 10 s, and no state change waits longer).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// `--cleanup-on-exit`: removes the interface, the firewall table and the conflist (absent is
/// fine: also what an earlier agent left).
async fn clean_up(
    network: &Network,
    firewall: &Nftables,
    cni_conf_dir: Option<&Path>,
) -> Result<(), Error> {
    tracing::info!("cleanup on exit: removing interface, firewall table and conflist");
    network.delete_link().await?;
    firewall.delete().await?;
    if let Some(dir) = cni_conf_dir {
        cni::remove(dir).map_err(|source| Error::Io {
            what: "remove the CNI conflist".into(),
            source,
        })?;
    }
    Ok(())
}

/// What the preflight checks need of `options`; `local_ip`: the address this node is reached
/// at, if known (else a fixed endpoint's).
fn inputs(options: &Options, peers: &Peers, local_ip: Option<std::net::IpAddr>) -> Inputs {
    let fixed = match peers {
        Peers::Kubernetes(KubernetesOptions {
            endpoint: PublishedEndpoint::Fixed(e),
            ..
        }) => Some(e.ip()),
        _ => None,
    };
    Inputs {
        kubernetes: matches!(peers, Peers::Kubernetes(_)),
        backend: options.backend,
        cni_conf_dir: options.cni_conf_dir.clone(),
        cni_bin_dirs: options.cni_bin_dirs.clone(),
        proc_sys_net: options.proc_sys_net.clone(),
        mtu: options.mtu,
        forwarding: options.forwarding,
        local_ip: local_ip.or(fixed),
    }
}

/// A node agent, built by [`AgentBuilder::build`]: start it with [`Agent::run`] (or
/// [`Agent::start`], then [`Running::run_until`]).
#[derive(Debug)]
pub struct Agent {
    options: Options,
    peers: Peers,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("node_name", &self.node_name)
            .field("interface", &self.interface)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts building the agent of node `node_name` (its Kubernetes Node name, or its name in
    /// the peers file) with peers from `peers`.
    pub fn builder(node_name: impl Into<String>, peers: Peers) -> AgentBuilder {
        AgentBuilder::new(node_name, peers)
    }

    pub(crate) fn new(options: Options, peers: Peers) -> Self {
        Agent { options, peers }
    }

    /// Checks what this node needs for the agent with these options (see [`PreflightReport`]),
    /// changing nothing: its pod CIDRs (the peers file's entry, or in Kubernetes mode its
    /// Node's `spec.podCIDRs`), the CNI plugins, the backend's device, forwarding,
    /// br_netfilter, CNI configurations that take precedence over Wormhole's, and the
    /// underlay's MTU. What `wormhole preflight` prints; a running agent checks the same
    /// things, serves them in `/status` and logs what changes.
    pub async fn preflight(&self) -> Result<PreflightReport, Error> {
        let options = &self.options;
        let node = &options.node_name;
        let mut inputs = inputs(options, &self.peers, None);
        let pod_cidrs = match &self.peers {
            Peers::File(path) => match read_peers_file(path.clone()).await {
                Ok(snapshot) => {
                    inputs.local_ip = preflight::endpoint_ip(&snapshot, node);
                    preflight::from_peers_file(&snapshot, node)
                }
                Err(e) => PodCidrs::Missing {
                    why: ErrorChain(&e).to_string(),
                    fix: "fix the peers file: `wormhole run` refuses to start without one that \
                          reads and parses"
                        .into(),
                },
            },
            Peers::Kubernetes(k) => match kube_client(k).await {
                Ok(client) => {
                    let (cidrs, ip) = checkup::read_node(&client, node).await;
                    inputs.local_ip = inputs.local_ip.or(ip);
                    cidrs
                }
                Err(e) => PodCidrs::Unknown {
                    why: ErrorChain(&e).to_string(),
                },
            },
            Peers::Custom(_) => PodCidrs::Unknown {
                why: "a custom peer source says once it runs".into(),
            },
        };
        let network = Network::new(options.interface.as_str())?;
        let facts =
            crate::host::gather(&inputs, &network, pod_cidrs, Phase::BeforeStart, None).await;
        Ok(preflight::report(&facts))
    }

    /// Starts, then runs until `shutdown` resolves. A shutdown during start-up (say, while an
    /// API server does not answer) ends it at once: nothing has been applied yet (but with
    /// [`AgentBuilder::cleanup_on_exit`], what an earlier agent left is removed all the same).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        tokio::pin!(shutdown);
        let cleanup = self.options.cleanup_on_exit.then(|| {
            (
                self.options.interface.clone(),
                self.options.cni_conf_dir.clone(),
            )
        });
        let running = tokio::select! {
            running = self.start() => running?,
            () = &mut shutdown => {
                tracing::info!("stopped during start-up; nothing was applied");
                if let Some((interface, cni_conf_dir)) = cleanup {
                    let network = Network::new(interface.as_str())?;
                    clean_up(&network, &Nftables::new(), cni_conf_dir.as_deref()).await?;
                }
                return Ok(());
            }
        };
        running.run_until(shutdown).await
    }

    /// Start-up: checks what it is given (the peers file, the Kubernetes configuration, the
    /// PSK file, an existing key file, `nft`), detects the MTU and the cluster CIDRs, then
    /// creates the key if there is none and opens the peer source and the WireGuard device.
    /// Nothing on the host changes yet, and a refused start (each error naming its file or
    /// option and the cause) leaves no new key file behind.
    pub async fn start(self) -> Result<Running, Error> {
        let Agent { options, peers } = self;
        let mut file_keys = FileKeyStore::new(&options.key_file);
        if let Some(psk) = &options.psk_file {
            file_keys = file_keys.with_cluster_secret(psk);
        }
        // Fail fast, before creating a key file or touching the host: the peers file must read
        // and parse (once running, a bad change keeps the last good mesh instead); no cluster,
        // no start.
        let peers_file = match &peers {
            Peers::File(path) => Some(read_peers_file(path.clone()).await?),
            Peers::Kubernetes(_) | Peers::Custom(_) => None,
        };
        let client = match &peers {
            Peers::Kubernetes(k) => Some(kube_client(k).await?),
            Peers::File(_) | Peers::Custom(_) => None,
        };
        file_keys
            .cluster_secret()
            .await
            .map_err(|source| EnvironmentError::PskFile { source })?;
        // An existing key file is checked now (mode, contents); a missing one is created last.
        let existing_key = file_keys
            .load()
            .await
            .map_err(|source| EnvironmentError::KeyFile { source })?;
        let firewall = Arc::new(Nftables::new());
        firewall.check().await?;
        // What the API server said last, beside the key: a start without it uses that.
        let state = client
            .is_some()
            .then(|| StateStore::open(state_dir(&options.key_file).join(STATE_FILE)));
        let publish = match &peers {
            // The settings it publishes are told once its Node's annotations were read.
            Peers::Kubernetes(k) => client.clone().map(|c| (c, k.clone())),
            _ => None,
        };
        let network = Arc::new(Network::new(options.interface.as_str())?);
        let source_text = format!("{peers:?}");
        let mtu = match options.mtu {
            Some(mtu) => mtu,
            None => {
                detect_mtu(
                    &options,
                    &peers,
                    peers_file.as_ref(),
                    &network,
                    client.as_ref(),
                    state.as_ref(),
                )
                .await?
            }
        };
        let cluster_cidrs = cluster_cidrs(&options, client.as_ref(), state.as_ref()).await?;
        // After every check, so a start refused for any reason above leaves no new key file.
        let key = match existing_key {
            Some(key) => key,
            None => file_keys
                .load_or_create()
                .await
                .map_err(|source| EnvironmentError::KeyFile { source })?,
        };
        // The preflight's view of this node, kept for the running agent (the Node is read in the
        // background: a start never waits for it).
        let checkup = Checkup {
            inputs: inputs(
                &options,
                &peers,
                peers_file
                    .as_ref()
                    .and_then(|s| preflight::endpoint_ip(s, &options.node_name)),
            ),
            network: network.clone(),
            pod_cidrs: match &peers_file {
                Some(snapshot) => preflight::from_peers_file(snapshot, &options.node_name),
                None => PodCidrs::Unknown {
                    why: "not read yet".into(),
                },
            },
            node: client.clone().map(|c| (c, options.node_name.clone())),
            mtu,
        };
        // Present on this node from here on (`wormhole uninstall` refuses while it is held).
        let presence = match lock::hold_shared(&state_dir(&options.key_file)) {
            Ok(held) => Some(held),
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot hold the agent lock in the state directory: `wormhole uninstall` will not see that this agent runs");
                None
            }
        };
        let (source, keys, annotations) = source_and_keys(
            &options,
            peers,
            file_keys,
            &key,
            &cluster_cidrs,
            client.as_ref(),
            state.as_ref(),
        );
        let device = options.backend.device(&network)?;
        tracing::info!(
            node = %options.node_name, public_key = %key.public_key(), backend = options.backend.as_str(),
            interface = %options.interface, mtu, source = %source_text, "starting"
        );

        // An endpoint annotation inside the overlay would make every peer refuse this node.
        let overlay: Vec<IpNet> = match &publish {
            Some((_, k)) => cluster_cidrs
                .iter()
                .chain(&k.external_cidrs)
                .copied()
                .collect(),
            None => Vec::new(),
        };
        let mut settings = Settings::new(&options.node_name, cluster_cidrs);
        settings.host = HostSettings {
            interface: options.interface.clone(),
            bridge: options.bridge.clone(),
            listen_port: options.listen_port,
            mtu,
        };
        settings.resync = options.resync;
        if publish.is_some() {
            // The Kubernetes source already gathers watch events for 25 ms before it builds a
            // snapshot (5,000 Nodes list as 5,000 events): a second window here would only add
            // its length to every change (the scale test's Node change took 125 ms with both).
            settings.debounce = Duration::ZERO;
        }
        // Cluster CIDRs must never hold the underlay: refused with a reason, not applied.
        settings.underlay = match network.underlay_addresses().await {
            Ok(addresses) => addresses,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot read the underlay addresses; cluster CIDRs are checked against the nodes' endpoints only");
                Vec::new()
            }
        };
        let backends = Backends {
            keys,
            device: device.clone(),
            network: network.clone(),
            firewall: firewall.clone(),
        };
        let mut reconciler = Reconciler::new(settings, backends);
        // What every reader sees: the reconciler's status with the probes' results in it.
        let (status, _) = watch::channel(reconciler.status().borrow().clone());
        let metrics = Arc::new(Metrics::new(options.peer_metrics));
        let observed = metrics.clone();
        reconciler.on_pass(move |info, _| observed.observe_pass(info.duration));
        Ok(Running {
            options,
            reconciler,
            source,
            publish: publish.map(|(client, kubernetes)| Publish {
                client,
                kubernetes,
                annotations: annotations.expect("the Kubernetes source passes annotations"),
                overlay,
            }),
            network,
            firewall,
            device,
            metrics,
            mtu,
            status,
            checkup,
            _presence: presence,
        })
    }
}

/// Kubernetes mode: what the publishing task needs.
struct Publish {
    client: kube::Client,
    kubernetes: KubernetesOptions,
    /// This node's annotations, from the source's Node watch.
    annotations: NodeAnnotations,
    /// The cluster and external CIDRs: no endpoint may lie inside.
    overlay: Vec<IpNet>,
}

/// A started agent: [`Running::run_until`] applies and keeps the mesh.
pub struct Running {
    options: Options,
    reconciler: Reconciler,
    source: PeerStream,
    /// Kubernetes mode: the client and what to publish.
    publish: Option<Publish>,
    network: Arc<Network>,
    firewall: Arc<Nftables>,
    device: Arc<dyn WireGuardDevice>,
    metrics: Arc<Metrics>,
    mtu: u32,
    /// The reconciler's status with each peer's probe report.
    status: watch::Sender<Status>,
    /// The preflight of the running agent.
    checkup: Checkup,
    /// The shared lock that tells `wormhole uninstall` an agent runs here.
    _presence: Option<lock::Held>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("options", &self.options)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The status after every pass, with each peer's probe results (updated at most once a
    /// second); `borrow()` is cheap. Ready ([`Status::ready`]) once a pass applied a mesh.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The MTU of the WireGuard interface (given, or detected at start).
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Applies and keeps the mesh until `shutdown` resolves, with the admin server, the CNI
    /// conflist and Kubernetes publishing beside it. Stopping leaves the network in place,
    /// unless [`AgentBuilder::cleanup_on_exit`] was asked for.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Running {
            options,
            reconciler,
            source,
            publish,
            network,
            firewall,
            device,
            metrics,
            mtu,
            status: merged,
            checkup,
            _presence,
        } = self;
        let (preflight_tx, preflight_rx) = watch::channel(None);
        let checkup_events = publish
            .as_ref()
            .map(|p| EventSink::new(p.client.clone(), &options.node_name));
        let (settings_tx, settings_rx) = watch::channel(None);
        let status = merged.subscribe();
        let probes = options.probe_interval.map(|interval| ProbeSettings {
            interval,
            rate: options.probe_rate,
            mtu,
        });
        // Forwarding is checked (and turned on) at every pass, before the probes' merge.
        let (passes, forwarding_task) = if options.forwarding {
            let (checked, passes) = watch::channel(Status::default());
            let forwarding = Forwarding::new(options.proc_sys_net.clone());
            let task = tokio::spawn(forwarding::follow(reconciler.status(), forwarding, checked));
            (passes, Some(task))
        } else {
            (reconciler.status(), None)
        };
        // The preflight sees each pass after forwarding was turned on for it.
        let checkup_task = tokio::spawn(checkup::follow(
            checkup,
            passes.clone(),
            preflight_tx,
            checkup_events,
        ));
        let health_task = tokio::spawn(health::run(passes, probes, merged));
        // Bound in the background: a busy admin port must not keep the mesh from being applied.
        let admin_task = options.admin_addr.map(|addr| {
            let admin = Admin {
                status: status.clone(),
                device: device.clone(),
                metrics,
                liveness: options.resync * 3 + Duration::from_secs(60),
                started: SystemTime::now(),
                access: admin::Access {
                    status: options.admin_allow.clone(),
                    metrics: options.metrics_allow.clone(),
                },
                preflight: preflight_rx.clone(),
                foreign_cni: options.foreign_cni,
                node_settings: settings_rx,
            };
            tokio::spawn(admin::listen_and_serve(addr, Arc::new(admin)))
        });
        let cni_task = options.cni_conf_dir.clone().map(|dir| {
            // The reconciler's own status: it changes at every pass, not with every probe.
            tokio::spawn(follow_cni(
                reconciler.status(),
                dir,
                options.bridge.to_string(),
                mtu,
            ))
        });
        let kube_task = publish.map(|publish| {
            let Publish {
                client,
                kubernetes,
                annotations,
                overlay,
            } = publish;
            let publisher = Publisher::new(
                client.clone(),
                &options.node_name,
                options.listen_port,
                kubernetes.endpoint,
            )
            .with_keepalive(kubernetes.persistent_keepalive)
            .with_status_interval(STATUS_INTERVAL);
            let events = EventSink::new(client, &options.node_name);
            let flags = NodeSettings {
                endpoint: kubernetes.endpoint,
                persistent_keepalive: kubernetes.persistent_keepalive,
            };
            let settings = node_settings::Follower::new(
                LocalSettings::new(flags, options.listen_port, overlay),
                annotations,
                settings_tx,
            );
            let node = options.node_name.clone();
            tokio::spawn(follow_kubernetes(status, publisher, events, settings, node))
        });

        reconciler.run(source, shutdown).await;
        for task in [
            admin_task,
            cni_task,
            kube_task,
            forwarding_task,
            Some(health_task),
            Some(checkup_task),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }

        if options.cleanup_on_exit {
            clean_up(&network, &firewall, options.cni_conf_dir.as_deref()).await?;
        } else {
            tracing::info!("stopped; interface, routes, firewall and conflist left in place");
        }
        drop(device);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (bounded, generously: a loaded machine) until `path` holds exactly `want`.
    async fn until_holds(path: &std::path::Path, want: &str) -> bool {
        for _ in 0..2000 {
            if std::fs::read_to_string(path).is_ok_and(|t| t == want) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_deleted_or_edited_conflist_is_rewritten_at_the_next_pass() {
        let dir = tempfile::tempdir().unwrap();
        let cidrs: Vec<IpNet> = vec!["10.99.1.0/24".parse().unwrap()];
        let (tx, rx) = watch::channel({
            let mut v = Status::default();
            v.pod_cidrs = cidrs.clone();
            v
        });
        let task = tokio::spawn(follow_cni(rx, dir.path().to_owned(), "br0".into(), 1420));
        let path = dir.path().join("10-wormhole.conflist");
        let want = cni::render("br0", &cidrs, 1420);
        assert!(until_holds(&path, &want).await, "never written");

        // Deleted, then a pass (any status change): written again.
        std::fs::remove_file(&path).unwrap();
        tx.send_modify(|s| s.errors += 1);
        assert!(
            until_holds(&path, &want).await,
            "not rewritten after deletion"
        );

        // Edited by hand, then a pass: restored.
        std::fs::write(&path, "{}").unwrap();
        tx.send_modify(|s| s.errors += 1);
        assert!(
            until_holds(&path, &want).await,
            "not restored after an edit"
        );
        task.abort();
    }
}
