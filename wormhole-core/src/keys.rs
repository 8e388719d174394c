//! WireGuard keys: Curve25519 key pairs and pre-shared keys, in WireGuard's base64 text form.
//!
//! Secrets ([`PrivateKey`], [`PresharedKey`]) are zeroized on drop, and their `Debug` and
//! `Display` print `(redacted)`; there is deliberately no way to format them except
//! [`PrivateKey::to_base64_secret`], which writers of key files call.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroize;

/// Length in bytes of every WireGuard key.
pub const KEY_LEN: usize = 32;

/// Why a key string was refused. Never contains the key material itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not valid standard base64.
    #[error("not valid base64")]
    Base64,
    /// The text decodes to the wrong number of bytes.
    #[error("decodes to {0} bytes, expected 32 (a WireGuard key is 44 base64 characters)")]
    Length(usize),
    /// The text is empty.
    #[error("empty")]
    Empty,
}

fn decode(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    // Decode into a stack buffer (no allocation on the hot path); a too-long input falls back
    // to a full decode, only to report its exact length.
    let mut buf = zeroize::Zeroizing::new([0u8; 48]);
    match STANDARD.decode_slice(text, &mut buf[..]) {
        Ok(KEY_LEN) => Ok(buf[..KEY_LEN].try_into().expect("length checked")),
        Ok(n) => Err(KeyError::Length(n)),
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            let mut bytes = STANDARD.decode(text).map_err(|_| KeyError::Base64)?;
            let n = bytes.len();
            bytes.zeroize();
            Err(KeyError::Length(n))
        }
        Err(base64::DecodeSliceError::DecodeError(_)) => Err(KeyError::Base64),
    }
}

/// A WireGuard public key. Public: prints as base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    /// Base64, as `wg` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode(s).map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A WireGuard private key. Zeroized on drop; never printed.
///
/// Equality compares the public halves, so no comparison ever branches on secret bytes.
#[derive(Clone)]
pub struct PrivateKey {
    secret: [u8; KEY_LEN],
    public: PublicKey,
}

impl PrivateKey {
    /// Generates a new key from the operating system's random source, clamped as `wg genkey` does.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Self::from_bytes(bytes)
    }

    /// Wraps raw bytes (the caller should zeroize its copy).
    pub fn from_bytes(secret: [u8; KEY_LEN]) -> Self {
        let static_secret = x25519_dalek::StaticSecret::from(secret);
        let public = PublicKey(x25519_dalek::PublicKey::from(&static_secret).to_bytes());
        PrivateKey { secret, public }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The raw secret, for backends that hand it to WireGuard.
    pub fn secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    /// The base64 form, for writing the key file. The name is long on purpose: grep for it.
    pub fn to_base64_secret(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(STANDARD.encode(self.secret))
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode(s).map(Self::from_bytes)
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.public == other.public
    }
}
impl Eq for PrivateKey {}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(redacted, public {})", self.public)
    }
}

impl fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(redacted)")
    }
}

/// A WireGuard pre-shared key: either the cluster secret or a derived pair key.
/// Zeroized on drop; never printed.
#[derive(Clone)]
pub struct PresharedKey([u8; KEY_LEN]);

/// Domain-separation salt of [`PresharedKey::derive_pair`]. Changing it changes every pair key.
const PAIR_SALT: &[u8] = b"wormhole pair psk v1";

impl PresharedKey {
    /// Generates a new random key (like `wg genpsk`).
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        PresharedKey(bytes)
    }

    /// Wraps raw bytes (the caller should zeroize its copy).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PresharedKey(bytes)
    }

    /// The raw secret, for backends that hand it to WireGuard.
    pub fn secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The base64 form, for writing a secret file.
    pub fn to_base64_secret(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(STANDARD.encode(self.0))
    }

    /// Derives the pre-shared key of the pair `(a, b)` from this cluster secret.
    ///
    /// HKDF-SHA256 (RFC 5869) with salt `"wormhole pair psk v1"`, input keying material the
    /// cluster secret, and info the two public keys in ascending byte order (64 bytes); the
    /// output is 32 bytes. Both ends compute the same key without exchanging anything, every pair
    /// gets its own key, and nothing changes unless the secret or a public key does.
    pub fn derive_pair(&self, a: &PublicKey, b: &PublicKey) -> PresharedKey {
        self.pair_deriver().derive(a, b)
    }

    /// The extract step of [`derive_pair`](Self::derive_pair) done once, for deriving many
    /// pair keys.
    pub fn pair_deriver(&self) -> PairDeriver {
        PairDeriver(hkdf::Hkdf::<sha2::Sha256>::new(Some(PAIR_SALT), &self.0))
    }
}

/// Derives pair keys from one cluster secret (see [`PresharedKey::derive_pair`]).
pub struct PairDeriver(hkdf::Hkdf<sha2::Sha256>);

impl fmt::Debug for PairDeriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairDeriver(redacted)")
    }
}

impl PairDeriver {
    /// The pre-shared key of the pair `(a, b)`, in either order.
    pub fn derive(&self, a: &PublicKey, b: &PublicKey) -> PresharedKey {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut info = [0u8; 2 * KEY_LEN];
        info[..KEY_LEN].copy_from_slice(lo.as_bytes());
        info[KEY_LEN..].copy_from_slice(hi.as_bytes());
        let mut out = [0u8; KEY_LEN];
        self.0
            .expand(&info, &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        PresharedKey(out)
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode(s).map(PresharedKey)
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        // Constant time: fold every byte before deciding.
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}
impl Eq for PresharedKey {}

impl Drop for PresharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(redacted)")
    }
}

impl fmt::Display for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Every way a secret could be formatted, checked for its base64 and hex forms.
    fn assert_not_leaked(secret: &[u8; KEY_LEN], outputs: &[String]) {
        let b64 = STANDARD.encode(secret);
        let hex_lower = hex(secret);
        let hex_upper = hex_lower.to_uppercase();
        // An 8-byte window is enough to catch partial leaks of either encoding.
        for out in outputs {
            for probe in [&b64, &hex_lower, &hex_upper] {
                for window in probe.as_bytes().windows(8) {
                    let window = std::str::from_utf8(window).unwrap();
                    assert!(!out.contains(window), "secret leaked in {out:?}");
                }
            }
            assert!(
                !out.contains(&format!("{:?}", secret)),
                "raw bytes leaked in {out:?}"
            );
        }
    }

    #[test]
    fn no_formatting_path_prints_a_secret() {
        let key = PrivateKey::generate();
        let psk = PresharedKey::generate();
        let derived = psk.derive_pair(&key.public_key(), &PrivateKey::generate().public_key());
        let err: crate::Error = "!!".parse::<PrivateKey>().unwrap_err().into();
        for (secret, outputs) in [
            (
                *key.secret_bytes(),
                vec![
                    format!("{key}"),
                    format!("{key:?}"),
                    format!("{key:#?}"),
                    err.to_string(),
                ],
            ),
            (
                *psk.secret_bytes(),
                vec![format!("{psk}"), format!("{psk:?}"), format!("{psk:#?}")],
            ),
            (
                *derived.secret_bytes(),
                vec![format!("{derived}"), format!("{derived:?}")],
            ),
        ] {
            assert_not_leaked(&secret, &outputs);
        }
        // The public key is printed, and only it.
        assert!(format!("{key:?}").contains(&key.public_key().to_base64()));
    }

    #[test]
    fn parse_errors_are_precise_and_secret_free() {
        assert_eq!("".parse::<PublicKey>(), Err(KeyError::Empty));
        assert_eq!("not base64!".parse::<PublicKey>(), Err(KeyError::Base64));
        assert_eq!("AAAA".parse::<PublicKey>(), Err(KeyError::Length(3)));
        let long = STANDARD.encode([7u8; 33]);
        assert_eq!(
            long.parse::<PrivateKey>().unwrap_err(),
            KeyError::Length(33)
        );
        // The message of a bad private key never echoes its text.
        let bad = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2Vj!";
        let msg = bad.parse::<PrivateKey>().unwrap_err().to_string();
        assert!(!msg.contains("c2Vj"), "{msg}");
    }

    #[test]
    fn round_trips_and_matches_wireguard() {
        // RFC 7748 section 6.1 test vector (Alice).
        let private: PrivateKey = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
            .parse()
            .unwrap();
        assert_eq!(
            private.public_key().to_base64(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        let again: PrivateKey = private.to_base64_secret().parse().unwrap();
        assert_eq!(again, private);
        let public: PublicKey = private.public_key().to_base64().parse().unwrap();
        assert_eq!(public, private.public_key());
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a, b);
        assert_eq!(a.secret_bytes()[0] & 7, 0);
        assert_eq!(a.secret_bytes()[31] & 0xc0, 0x40);
    }

    #[test]
    fn pair_psk_is_symmetric_unique_and_stable() {
        let secret: PresharedKey = STANDARD.encode([1u8; 32]).parse().unwrap();
        let (a, b, c) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        assert_eq!(secret.derive_pair(&a, &b), secret.derive_pair(&b, &a));
        assert_ne!(secret.derive_pair(&a, &b), secret.derive_pair(&a, &c));
        let other: PresharedKey = STANDARD.encode([2u8; 32]).parse().unwrap();
        assert_ne!(secret.derive_pair(&a, &b), other.derive_pair(&a, &b));
        // Pinned output: a change of KDF would silently break mixed-version clusters.
        let zero = PublicKey::from_bytes([0; 32]);
        let one = PublicKey::from_bytes([1; 32]);
        let pinned = secret.derive_pair(&one, &zero);
        assert_eq!(pinned, secret.derive_pair(&zero, &one));
        // Computed independently (Python's hmac module, RFC 5869 extract + expand).
        assert_eq!(
            hex(pinned.secret_bytes()),
            "640026761d0ca3ec83cd00f0717f475be2a763e76cd21b42199e512ba2accd98"
        );
    }
}
