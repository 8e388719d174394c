//! Where `wormhole status --cluster` and `wormhole graph` get the cluster from: each node's
//! admin endpoint (`--admin`, repeated), else the cluster's WormholeNodes.

use std::net::{SocketAddr, ToSocketAddrs as _};

use wormhole_agent::ClusterView;
use wormhole_core::ErrorChain;

use crate::cli::ClusterSource;
use crate::status;

/// The cluster as `source` says.
pub fn read(source: &ClusterSource) -> Result<ClusterView, String> {
    if source.admin.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        return runtime
            .block_on(ClusterView::read_kubernetes(source.kubeconfig.as_deref()))
            .map_err(|e| {
                format!(
                    "cannot read the cluster's WormholeNodes: {}",
                    ErrorChain(&e)
                )
            });
    }
    Ok(from_admin(&source.admin))
}

/// Fetches every node's `/status` at once (an address given twice, once); an address that
/// does not resolve or answer is named among the view's unreadable sources. Each reply is kept
/// with the address it came from (see [`ClusterView::from_status_views`]).
pub fn from_admin(addresses: &[String]) -> ClusterView {
    let mut views = Vec::new();
    let mut resolved: Vec<(String, SocketAddr)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for text in addresses {
        match text.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => {
                if seen.insert(addr) {
                    resolved.push((text.clone(), addr));
                }
            }
            Ok(None) => views.push((text.clone(), Err(format!("{text}: no address")))),
            Err(e) => views.push((text.clone(), Err(format!("{text}: {e}")))),
        }
    }
    let addrs: Vec<SocketAddr> = resolved.iter().map(|(_, addr)| *addr).collect();
    views.extend(status::fetch_all(&addrs).into_iter().zip(resolved).map(
        |(view, (text, addr))| {
            let view = view.map_err(|e| {
                let e = e.to_string();
                if e.contains(&addr.to_string()) {
                    e
                } else {
                    format!("{addr}: {e}")
                }
            });
            (text, view)
        },
    ));
    ClusterView::from_status_views(views)
}
