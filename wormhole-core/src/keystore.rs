//! Where the node's private key (and the optional cluster secret) live.
//!
//! [`FileKeyStore`] keeps the key across restarts in a file created `0600` atomically (by
//! [`write_secret_file`]), and refuses to use a file that group or others can read. Rotation is explicit ([`KeyStore::rotate`]): a
//! restart never changes the key.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::Error;
use crate::atomic_file::{FileAccess, write_file_atomically};
use crate::keys::{PresharedKey, PrivateKey};

/// Loads (or creates) the node's private key and the optional cluster secret.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The node's private key, created on first use.
    async fn load_or_create(&self) -> Result<PrivateKey, Error>;
    /// Replaces the private key with a new one and returns it.
    async fn rotate(&self) -> Result<PrivateKey, Error>;
    /// The cluster secret from which pair pre-shared keys are derived, if one is configured.
    async fn cluster_secret(&self) -> Result<Option<PresharedKey>, Error>;
}

/// Keys in files: the private key (created if absent) and an optional cluster-secret file.
///
/// The store remembers the key it last loaded: if the file disappears while the agent runs, the
/// next load writes it back from that key (and says so) instead of creating a new one, so the
/// node's identity changes only through [`KeyStore::rotate`] (or a new file put in place).
#[derive(Debug, Clone)]
pub struct FileKeyStore {
    key_path: PathBuf,
    psk_path: Option<PathBuf>,
    held: std::sync::Arc<std::sync::Mutex<Option<PrivateKey>>>,
}

impl FileKeyStore {
    /// A store for the private key at `key_path` (for example `/var/lib/wormhole/private.key`).
    pub fn new(key_path: impl Into<PathBuf>) -> Self {
        FileKeyStore {
            key_path: key_path.into(),
            psk_path: None,
            held: Default::default(),
        }
    }

    /// Also read the cluster secret (base64, as `wg genpsk` prints) from `path`.
    pub fn with_cluster_secret(mut self, path: impl Into<PathBuf>) -> Self {
        self.psk_path = Some(path.into());
        self
    }

    /// The private key's path.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Reads a secret file (`None` if there is none), refusing it if group or others have any
/// access.
pub fn read_secret_file(path: &Path) -> Result<Option<zeroize::Zeroizing<String>>, Error> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("stat", path)(e)),
    };
    if !meta.is_file() {
        return Err(io("read", path)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a directory?)",
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::InsecureKeyFile {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    Ok(Some(zeroize::Zeroizing::new(text)))
}

/// Writes `text` (and a newline) to `path` atomically, `0600` from the first instant, through the
/// one writer of every file the agent persists ([`write_file_atomically`]): no leftover of an
/// earlier crash blocks it. The directory is created `0700` if missing. Blocking: call it from
/// `spawn_blocking` in async code.
pub fn write_secret_file(path: &Path, text: &str) -> Result<(), Error> {
    let mut contents = zeroize::Zeroizing::new(Vec::with_capacity(text.len() + 1));
    contents.extend_from_slice(text.as_bytes());
    contents.push(b'\n');
    write_file_atomically(path, &contents, FileAccess::Secret)
}

impl FileKeyStore {
    /// The key in the file, if there is one, checked as [`KeyStore::load_or_create`] checks it
    /// (mode, contents); nothing is created. For a start-up that checks everything it was given
    /// before it creates anything.
    pub async fn load(&self) -> Result<Option<PrivateKey>, Error> {
        let this = self.clone();
        blocking(move || {
            let path = &this.key_path;
            let Some(text) = read_secret_file(path)? else {
                return Ok(None);
            };
            let key: PrivateKey = text.parse().map_err(|source| Error::KeyFile {
                path: path.clone(),
                source,
            })?;
            *this.held.lock().unwrap() = Some(key.clone());
            Ok(Some(key))
        })
        .await
    }

    fn load_or_create_blocking(&self) -> Result<PrivateKey, Error> {
        let path = &self.key_path;
        let held = self.held.lock().unwrap().clone();
        let key = match (read_secret_file(path)?, held) {
            (Some(text), _) => text.parse().map_err(|source| Error::KeyFile {
                path: path.clone(),
                source,
            })?,
            // Deleted while we run: the key in use stays, and so does the node's identity.
            (None, Some(key)) => {
                write_secret_file(path, &key.to_base64_secret())?;
                tracing::warn!(path = %path.display(), public_key = %key.public_key(),
                    "private key file was missing: restored it from the key in use (change keys with `wormhole rotate-key`)");
                key
            }
            (None, None) => {
                let key = PrivateKey::generate();
                write_secret_file(path, &key.to_base64_secret())?;
                tracing::info!(path = %path.display(), public_key = %key.public_key(), "created private key");
                key
            }
        };
        *self.held.lock().unwrap() = Some(key.clone());
        Ok(key)
    }

    fn rotate_blocking(&self) -> Result<PrivateKey, Error> {
        let key = PrivateKey::generate();
        write_secret_file(&self.key_path, &key.to_base64_secret())?;
        *self.held.lock().unwrap() = Some(key.clone());
        tracing::info!(path = %self.key_path.display(), public_key = %key.public_key(), "rotated private key");
        Ok(key)
    }

    fn cluster_secret_blocking(&self) -> Result<Option<PresharedKey>, Error> {
        let Some(path) = &self.psk_path else {
            return Ok(None);
        };
        let text = read_secret_file(path)?.ok_or_else(|| Error::Io {
            action: "read",
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file (make one: wg genpsk > FILE; chmod 600 FILE)",
            ),
        })?;
        text.parse().map(Some).map_err(|source| Error::KeyFile {
            path: path.clone(),
            source,
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::KeyStore(Box::new(e)))?
}

#[async_trait]
impl KeyStore for FileKeyStore {
    async fn load_or_create(&self) -> Result<PrivateKey, Error> {
        let this = self.clone();
        blocking(move || this.load_or_create_blocking()).await
    }

    async fn rotate(&self) -> Result<PrivateKey, Error> {
        let this = self.clone();
        blocking(move || this.rotate_blocking()).await
    }

    async fn cluster_secret(&self) -> Result<Option<PresharedKey>, Error> {
        let this = self.clone();
        blocking(move || this.cluster_secret_blocking()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_0600_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/private.key");
        let store = FileKeyStore::new(&path);
        let first = store.load_or_create().await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second store (a restarted daemon) reads the same key.
        let again = FileKeyStore::new(&path).load_or_create().await.unwrap();
        assert_eq!(first, again);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
        // Rotation is explicit and persistent.
        let rotated = store.rotate().await.unwrap();
        assert_ne!(rotated, first);
        assert_eq!(store.load_or_create().await.unwrap(), rotated);
    }

    #[tokio::test]
    async fn load_checks_without_creating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/private.key");
        let store = FileKeyStore::new(&path);
        assert!(store.load().await.unwrap().is_none());
        assert!(!dir.path().join("sub").exists(), "load created something");
        let key = store.load_or_create().await.unwrap();
        assert_eq!(FileKeyStore::new(&path).load().await.unwrap(), Some(key));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            FileKeyStore::new(&path).load().await,
            Err(Error::InsecureKeyFile { .. })
        ));
    }

    #[tokio::test]
    async fn a_key_file_deleted_while_running_is_restored_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        let store = FileKeyStore::new(&path);
        let key = store.load_or_create().await.unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            store.load_or_create().await.unwrap(),
            key,
            "the key changed"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A restarted agent (a new store) finds the same key on disk.
        assert_eq!(
            FileKeyStore::new(&path).load_or_create().await.unwrap(),
            key
        );
    }

    #[tokio::test]
    async fn refuses_a_key_file_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        let key = PrivateKey::generate();
        std::fs::write(&path, key.to_base64_secret().as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = FileKeyStore::new(&path).load_or_create().await.unwrap_err();
        assert!(
            matches!(err, Error::InsecureKeyFile { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        // The file was not replaced by a new key.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            *key.to_base64_secret()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(FileKeyStore::new(&path).load_or_create().await.is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            FileKeyStore::new(&path).load_or_create().await.unwrap(),
            key
        );
    }

    #[tokio::test]
    async fn corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        std::fs::write(&path, "garbage").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = FileKeyStore::new(&path).load_or_create().await.unwrap_err();
        assert!(err.to_string().contains("not valid base64"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");
    }

    /// The files the agent keeps in its state directory: the key, the Kubernetes state, the
    /// saved PSK. After a crash mid-write, every later write must still go through: in a
    /// container the agent is always PID 1, so a name derived from the PID is always taken.
    #[test]
    fn leftovers_of_a_crashed_writer_never_block_a_write() {
        for name in ["private.key", "kubernetes-state.json", "psk"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(name);
            std::fs::write(&path, "old").unwrap();
            crate::atomic_file::tests::plant_leftovers(dir.path(), name);
            write_secret_file(&path, "new").unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o600, "{name}");
            assert_eq!(
                std::fs::read_to_string(dir.path().join("victim")).unwrap(),
                "precious",
                "a leftover symlink was followed"
            );
            // And again (the leftovers of this writer's own runs count too).
            write_secret_file(&path, "newer").unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "newer\n");
        }
    }

    /// The first start after a crash during the first key creation: no key file yet, a
    /// leftover temporary file of the key. The key is created, and kept across restarts.
    #[tokio::test]
    async fn first_key_creation_with_a_leftover_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        crate::atomic_file::tests::plant_leftovers(dir.path(), "private.key");
        let key = FileKeyStore::new(&path).load_or_create().await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            FileKeyStore::new(&path).load_or_create().await.unwrap(),
            key
        );
        let rotated = FileKeyStore::new(&path).rotate().await.unwrap();
        assert_eq!(
            FileKeyStore::new(&path).load_or_create().await.unwrap(),
            rotated
        );
    }

    #[tokio::test]
    async fn cluster_secret_is_optional_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("private.key");
        assert!(
            FileKeyStore::new(&key)
                .cluster_secret()
                .await
                .unwrap()
                .is_none()
        );
        let psk_path = dir.path().join("psk");
        let psk = PresharedKey::generate();
        std::fs::write(&psk_path, psk.to_base64_secret().as_bytes()).unwrap();
        std::fs::set_permissions(&psk_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = FileKeyStore::new(&key).with_cluster_secret(&psk_path);
        assert!(matches!(
            store.cluster_secret().await,
            Err(Error::InsecureKeyFile { .. })
        ));
        std::fs::set_permissions(&psk_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(store.cluster_secret().await.unwrap(), Some(psk));
    }
}
