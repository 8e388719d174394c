//! The cluster secret for pre-shared keys, from a Kubernetes Secret; the private key stays in its
//! file. One GET of that one Secret (the agent needs `get` on it, not list or watch), at most
//! once per refresh interval (default a minute), so a change converges without a restart.
//!
//! The Secret is kept, `0600` like the private key, in a file of the state directory
//! ([`PSK_FILE`]): a pass never waits on the API server once the PSK is known (a request has a
//! deadline, and a failed one falls back to the PSK last read), and an agent started while the
//! API server is down uses the saved one. The PSK is never logged.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use wormhole_core::{ErrorChain, FileKeyStore, KeyError, KeyStore, PresharedKey, PrivateKey};
use wormhole_core::{read_secret_file, write_secret_file};

use crate::{API_TIMEOUT, Error, PSK_SECRET_KEY, call};

/// The saved PSK's file name in the state directory.
pub const PSK_FILE: &str = "psk";

/// The node's key from a file, the cluster secret from `namespace/name`, key `psk`.
pub struct SecretKeyStore {
    file: FileKeyStore,
    secrets: Api<Secret>,
    name: String,
    namespace: String,
    saved: Option<PathBuf>,
    timeout: Duration,
    refresh: Duration,
    known: Arc<Mutex<Known>>,
}

/// The PSK as last read, and when the Secret was last asked for.
#[derive(Default)]
struct Known {
    psk: Option<PresharedKey>,
    asked: Option<Instant>,
    /// The latest read failed (and the saved PSK is in use): said once, until it works again.
    failing: bool,
}

impl SecretKeyStore {
    /// Reads the cluster secret from the Secret `namespace/name`.
    pub fn new(file: FileKeyStore, client: Client, namespace: &str, name: &str) -> Self {
        SecretKeyStore {
            file,
            secrets: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            saved: None,
            timeout: API_TIMEOUT,
            refresh: Duration::from_secs(60),
            known: Arc::default(),
        }
    }

    /// Keeps the PSK last read in `path` (`0600`), and uses it when the Secret cannot be read.
    pub fn with_saved(mut self, path: impl Into<PathBuf>) -> Self {
        self.saved = Some(path.into());
        self
    }

    /// The deadline of the GET (default [`API_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a PSK read is used before the Secret is read again (default 60 s; zero: every
    /// pass).
    pub fn with_refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
    }

    fn what(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }

    /// One GET of the Secret, with its deadline.
    async fn fetch(&self) -> Result<PresharedKey, Error> {
        let what = self.what();
        let secret = call(
            format!("get {what}"),
            self.timeout,
            self.secrets.get(&self.name),
        )
        .await?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(PSK_SECRET_KEY))
            .ok_or_else(|| Error::PskMissing {
                secret: what.clone(),
            })?;
        parse_psk(&value.0).map_err(|source| Error::PskInvalid {
            secret: what,
            source,
        })
    }

    /// The PSK saved in the state directory, if any (and readable by us only).
    async fn load_saved(&self) -> Option<PresharedKey> {
        let path = self.saved.clone()?;
        let read = tokio::task::spawn_blocking(move || {
            let text = read_secret_file(&path)?;
            text.map(|t| t.parse::<PresharedKey>())
                .transpose()
                .map_err(|source| wormhole_core::Error::KeyFile { path, source })
        })
        .await
        .ok()?;
        match read {
            Ok(psk) => psk,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "the saved PSK cannot be used");
                None
            }
        }
    }

    async fn save(&self, psk: &PresharedKey) {
        let Some(path) = self.saved.clone() else {
            return;
        };
        let text = psk.to_base64_secret();
        let shown = path.display().to_string();
        let written = tokio::task::spawn_blocking(move || write_secret_file(&path, &text)).await;
        match written {
            Ok(Ok(())) => {
                tracing::info!(path = %shown, "saved the cluster PSK (0600) for restarts without the API server")
            }
            Ok(Err(e)) => tracing::warn!(error = %ErrorChain(&e), "cannot save the cluster PSK"),
            Err(e) => tracing::warn!(error = %e, "cannot save the cluster PSK"),
        }
    }
}

/// Why a Secret's `psk` value is not a key (see [`parse_psk`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PskError {
    /// Not 32 bytes, and not text either.
    #[error("neither 32 bytes nor base64 text")]
    NotText,
    /// Text, but not the base64 of 32 bytes.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The cluster secret in a Secret's `psk` value: 32 raw bytes, or their base64 (as `wg genpsk`
/// prints it, e.g. `kubectl create secret generic wormhole-psk --from-literal=psk=$(wg genpsk)`).
pub fn parse_psk(bytes: &[u8]) -> Result<PresharedKey, PskError> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Ok(PresharedKey::from_bytes(raw));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| PskError::NotText)?;
    Ok(text.parse()?)
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
        {
            let known = self.known.lock().unwrap();
            if let (Some(psk), Some(asked)) = (&known.psk, known.asked)
                && asked.elapsed() < self.refresh
            {
                return Ok(Some(psk.clone()));
            }
        }
        let asked = Instant::now();
        match self.fetch().await {
            Ok(psk) => {
                let changed = {
                    let mut known = self.known.lock().unwrap();
                    known.asked = Some(asked);
                    if known.failing {
                        known.failing = false;
                        tracing::info!(secret = %self.what(), "read the PSK Secret again");
                    }
                    let changed = known.psk.as_ref() != Some(&psk);
                    known.psk = Some(psk.clone());
                    changed
                };
                if changed {
                    self.save(&psk).await;
                }
                Ok(Some(psk))
            }
            Err(e) => {
                let held = self.known.lock().unwrap().psk.clone();
                let fallback = match held {
                    Some(psk) => Some(psk),
                    None => self.load_saved().await,
                };
                let Some(psk) = fallback else {
                    // A key error, not a peer source one (`Error::kind` "key").
                    return Err(wormhole_core::Error::KeyStore(Box::new(e)));
                };
                let mut known = self.known.lock().unwrap();
                known.asked = Some(asked);
                if !known.failing {
                    known.failing = true;
                    let saved = self.saved.as_ref().map(|p| p.display().to_string());
                    tracing::warn!(error = %ErrorChain(&e), saved = ?saved,
                        "cannot read the PSK Secret: using the PSK last read until it can");
                }
                known.psk = Some(psk.clone());
                Ok(Some(psk))
            }
        }
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
        assert_eq!(
            parse_psk(b"short").unwrap_err(),
            PskError::Key(KeyError::Base64)
        );
        assert_eq!(parse_psk(&[0xff; 31]).unwrap_err(), PskError::NotText);
    }
}
