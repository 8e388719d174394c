//! Reading the whole cluster's view for `wormhole status --cluster` and `wormhole graph`: every
//! WormholeNode (what each agent publishes about its peers) and every Node (their pod CIDRs),
//! listed in pages so that a 5,000-node cluster is not one huge answer.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::crd::WormholeNode;
use crate::{Error, call};

/// Objects per list request.
const PAGE: u32 = 500;

/// Every WormholeNode and Node of the cluster (what a reader of the cluster's state needs: list
/// on both; the agent's own RBAC already has it).
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    /// Every WormholeNode.
    pub wormhole_nodes: Vec<WormholeNode>,
    /// Every Node.
    pub nodes: Vec<Node>,
}

pub(crate) async fn list_all<K>(
    api: &Api<K>,
    what: &str,
    timeout: Duration,
) -> Result<Vec<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(t) = token.take() {
            params = params.continue_token(&t);
        }
        let page = call(format!("list {what}"), timeout, api.list(&params)).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

/// Lists every WormholeNode and Node, each request within `timeout`.
pub async fn read_cluster(client: Client, timeout: Duration) -> Result<ClusterObjects, Error> {
    let wormhole_nodes = list_all(
        &Api::<WormholeNode>::all(client.clone()),
        "WormholeNodes",
        timeout,
    )
    .await?;
    let nodes = list_all(&Api::<Node>::all(client), "Nodes", timeout).await?;
    Ok(ClusterObjects {
        wormhole_nodes,
        nodes,
    })
}
