//! The cluster secret for pre-shared keys, from a Kubernetes Secret; the private key stays in its
//! file. The Secret is read on every pass (one GET: the agent needs `get` on that one Secret, not
//! list or watch), so a change converges without a restart.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use wormhole_core::{FileKeyStore, KeyStore, PresharedKey, PrivateKey};

use crate::{Error, PSK_SECRET_KEY};

/// The node's key from a file, the cluster secret from `namespace/name`, key `psk`.
pub struct SecretKeyStore {
    file: FileKeyStore,
    secrets: Api<Secret>,
    name: String,
    namespace: String,
}

impl SecretKeyStore {
    /// Reads the cluster secret from the Secret `namespace/name`.
    pub fn new(file: FileKeyStore, client: Client, namespace: &str, name: &str) -> Self {
        SecretKeyStore {
            file,
            secrets: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }
}

/// The cluster secret in a Secret's `psk` value: 32 raw bytes, or their base64 (as `wg genpsk`
/// prints it, e.g. `kubectl create secret generic wormhole-psk --from-literal=psk=$(wg genpsk)`).
pub fn parse_psk(bytes: &[u8]) -> Result<PresharedKey, String> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Ok(PresharedKey::from_bytes(raw));
    }
    let text =
        std::str::from_utf8(bytes).map_err(|_| "neither 32 bytes nor base64 text".to_owned())?;
    text.parse().map_err(|e| format!("{e}"))
}

#[async_trait]
impl KeyStore for SecretKeyStore {
    async fn load_or_create(&self) -> Result<PrivateKey, wormhole_core::Error> {
        self.file.load_or_create().await
    }

    async fn rotate(&self) -> Result<PrivateKey, wormhole_core::Error> {
        self.file.rotate().await
    }

    async fn cluster_secret(&self) -> Result<Option<PresharedKey>, wormhole_core::Error> {
        let what = format!("Secret {}/{}", self.namespace, self.name);
        let secret = self
            .secrets
            .get(&self.name)
            .await
            .map_err(Error::api(format!("get {what}")))?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(PSK_SECRET_KEY))
            .ok_or_else(|| Error::Invalid(format!("{what} has no key {PSK_SECRET_KEY:?}")))?;
        let psk = parse_psk(&value.0)
            .map_err(|e| Error::Invalid(format!("{what} key {PSK_SECRET_KEY:?}: {e}")))?;
        Ok(Some(psk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_raw_bytes_or_base64_and_says_why_not() {
        let psk = PresharedKey::generate();
        assert_eq!(parse_psk(psk.secret_bytes()).unwrap(), psk);
        assert_eq!(parse_psk(psk.to_base64_secret().as_bytes()).unwrap(), psk);
        assert_eq!(
            parse_psk(format!("{}\n", *psk.to_base64_secret()).as_bytes()).unwrap(),
            psk
        );
        let err = parse_psk(b"short").unwrap_err();
        assert!(err.contains("base64") || err.contains("bytes"), "{err}");
    }
}
