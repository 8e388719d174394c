//! The preflight of a running agent ([`crate::preflight`]): once as it starts, then again after
//! reconcile passes (at most every [`RECHECK_EVERY`](crate::preflight::RECHECK_EVERY), and at
//! once when the pod CIDRs in use change). Each
//! change is logged (a problem at warn or error level with its fix, a fixed one at info); the
//! latest report goes to `/status` and `/readyz` through a watch channel, and in Kubernetes
//! mode each error becomes an Event on the Node (rate-limited).

use std::net::IpAddr;

use ipnet::IpNet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use wormhole_core::{ErrorChain, Escaped, Status};
use wormhole_k8s::EventSink;
use wormhole_linux::Network;

use crate::host::{self, Inputs};
use crate::preflight::{self, Check, Level, Phase, PodCidrs, PreflightReport, RECHECK_EVERY};

/// What a running agent's preflight needs.
pub(crate) struct Checkup {
    pub(crate) inputs: Inputs,
    pub(crate) network: Arc<Network>,
    /// The pod CIDRs as read (the peers file's entry at start, or the Node), until the mesh
    /// applied says which are in use.
    pub(crate) pod_cidrs: PodCidrs,
    /// Kubernetes mode: the client and this Node's name, to read its pod CIDRs while none are
    /// in use (in the background: a start never waits for it).
    pub(crate) node: Option<(kube::Client, String)>,
    /// The MTU in use.
    pub(crate) mtu: u32,
}

impl std::fmt::Debug for Checkup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkup")
            .field("inputs", &self.inputs)
            .field("pod_cidrs", &self.pod_cidrs)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

/// This Node's pod CIDRs and InternalIP, read from the API server (bounded by
/// [`API_TIMEOUT`](wormhole_k8s::API_TIMEOUT)).
pub(crate) async fn read_node(client: &kube::Client, name: &str) -> (PodCidrs, Option<IpAddr>) {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    match tokio::time::timeout(wormhole_k8s::API_TIMEOUT, nodes.get(name)).await {
        Ok(Ok(node)) => (
            preflight::from_node(&node),
            wormhole_k8s::internal_ip(&node),
        ),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => (
            PodCidrs::Missing {
                why: format!("Node {} does not exist", Escaped(name)),
                fix: "--node-name must be this node's Node name (the DaemonSet sets it from \
                      spec.nodeName)"
                    .into(),
            },
            None,
        ),
        Ok(Err(e)) => (
            PodCidrs::Unknown {
                why: format!("cannot read Node {}: {}", Escaped(name), ErrorChain(&e)),
            },
            None,
        ),
        Err(_) => (
            PodCidrs::Unknown {
                why: format!(
                    "cannot read Node {}: no answer within {:?}",
                    Escaped(name),
                    wormhole_k8s::API_TIMEOUT
                ),
            },
            None,
        ),
    }
}

impl Checkup {
    /// One preflight now; `in_use`: the pod CIDRs of the mesh applied (none before the first).
    pub(crate) async fn once(&mut self, in_use: &[IpNet]) -> PreflightReport {
        let pod_cidrs = if in_use.is_empty() {
            if let Some((client, name)) = &self.node {
                let (cidrs, ip) = read_node(client, name).await;
                self.pod_cidrs = cidrs;
                self.inputs.local_ip = self.inputs.local_ip.or(ip);
            }
            self.pod_cidrs.clone()
        } else {
            PodCidrs::Assigned {
                cidrs: in_use.to_vec(),
                from: "in use".into(),
            }
        };
        let facts = host::gather(
            &self.inputs,
            &self.network,
            pod_cidrs,
            Phase::Running,
            Some(self.mtu),
        )
        .await;
        preflight::report(&facts)
    }
}

/// Logs what changed from `before` to `now` (everything not ok, the first time).
fn log_changes(before: Option<&PreflightReport>, now: &PreflightReport) {
    let previous = |name: &str| -> Option<&Check> {
        before.and_then(|b| b.checks.iter().find(|c| c.check == name))
    };
    for check in &now.checks {
        let old = previous(&check.check);
        if old.is_some_and(|o| o.result == check.result && o.detail == check.detail) {
            continue;
        }
        let (name, detail) = (&check.check, &check.detail);
        let fix = check.fix.as_deref().unwrap_or("");
        match check.result {
            Level::Error => tracing::error!(check = %name, fix, "preflight: {detail}"),
            Level::Warning => tracing::warn!(check = %name, fix, "preflight: {detail}"),
            Level::Ok if old.is_some_and(|o| o.result != Level::Ok) => {
                tracing::info!(check = %name, "preflight: ok now: {detail}")
            }
            Level::Ok => tracing::debug!(check = %name, "preflight: {detail}"),
        }
    }
    if before.is_none() {
        tracing::info!("preflight: {}", now.summary());
    }
}

/// The Event reason of a check that failed.
fn reason(check: &Check) -> &'static str {
    match check.check.as_str() {
        "cni-config" => "ForeignCniConfig",
        _ => "PreflightFailed",
    }
}

/// Runs until the status channel closes: a preflight at once, then after passes.
pub(crate) async fn follow(
    mut checkup: Checkup,
    mut status: watch::Receiver<Status>,
    report: watch::Sender<Option<PreflightReport>>,
    mut events: Option<EventSink>,
) {
    let mut last: Option<PreflightReport> = None;
    loop {
        // Only the pod CIDRs: the status holds every peer (thousands).
        let in_use = status.borrow_and_update().pod_cidrs.clone();
        let started = Instant::now();
        let now = checkup.once(&in_use).await;
        log_changes(last.as_ref(), &now);
        if let Some(events) = events.as_mut() {
            for check in now.checks.iter().filter(|c| c.result == Level::Error) {
                let fix = check.fix.as_deref().unwrap_or_default();
                let note = format!("preflight {}: {} (fix: {fix})", check.check, check.detail);
                let key = format!("{}/{}", check.check, check.detail);
                events.warn_node(&key, reason(check), note).await;
            }
        }
        report.send_if_modified(|old| {
            let changed = old.as_ref() != Some(&now);
            *old = Some(now.clone());
            changed
        });
        last = Some(now);
        if status.changed().await.is_err() {
            return;
        }
        // The next pass after RECHECK_EVERY, or at once the pass that changes the pod CIDRs in
        // use (the first mesh applied: forwarding was just turned on for them, and a report
        // from before must not stand for RECHECK_EVERY).
        let deadline = (started + RECHECK_EVERY).into();
        while status.borrow_and_update().pod_cidrs == in_use {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                changed = status.changed() => if changed.is_err() { return },
            }
        }
    }
}
