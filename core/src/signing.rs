//! Signed tasks (optional): clients sign each task spec with an ed25519
//! key, and workers that hold only the public keys run only tasks that
//! verify.
//!
//! What it protects: workers on untrusted hosts share a Redis role, so a
//! compromised node could write tasks into other workers' inboxes or into
//! the queue. With [`WorkerConfig::verify_keys`](crate::WorkerConfig) set, a
//! worker refuses (fails, never runs) a task whose spec is unsigned, signed
//! by another key, or changed after signing; the signature also covers the
//! queue name, so a signed task cannot be replayed into another queue.
//!
//! What it does not protect: it does not hide task input or results
//! (Redis and anyone who can read it still see them; use TLS and ACLs for
//! that); it does not stop a node from replaying a task signed for the
//! same queue under the same id, from cancelling or failing tasks, or from
//! forging results; a leaked signing key lets its holder sign anything.
//!
//! The signed message is `rtq-task-sig-v1`, NUL, the queue name, NUL, then
//! the spec's JSON without its `sig` field, as serde_json writes it.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::error::Error;
use crate::protocol::TaskSpec;

const DOMAIN: &[u8] = b"rtq-task-sig-v1\0";

/// An ed25519 private key that signs task specs (clients only).
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The public half only.
        f.debug_struct("SigningKey")
            .field("verify_key", &self.verify_key().to_hex())
            .finish()
    }
}

impl SigningKey {
    /// A key from PKCS#8 (DER), as `openssl genpkey -algorithm ed25519
    /// -outform DER` writes it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if it is not an ed25519 PKCS#8 key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(|pair| Self { pair })
            .map_err(|e| Error::InvalidInput(format!("not an ed25519 PKCS#8 key: {e}")))
    }

    /// A key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as `openssl
    /// genpkey -algorithm ed25519` writes it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if it is not an ed25519 PKCS#8 PEM key.
    pub fn from_pkcs8_pem(pem: &[u8]) -> Result<Self, Error> {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| Error::InvalidInput(format!("not a PKCS#8 PEM key: {e}")))?;
        Self::from_pkcs8_der(der.secret_pkcs8_der())
    }

    /// A new random key and its PKCS#8 (DER) form, to store.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the system's random source fails.
    pub fn generate() -> Result<(Self, Vec<u8>), Error> {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| Error::InvalidInput("cannot generate an ed25519 key".into()))?;
        let key = Self::from_pkcs8_der(der.as_ref())?;
        Ok((key, der.as_ref().to_vec()))
    }

    /// A new random key and its PKCS#8 PEM form (`-----BEGIN PRIVATE
    /// KEY-----`), to store (readable by its owner only).
    ///
    /// # Errors
    /// As [`SigningKey::generate`].
    pub fn generate_pem() -> Result<(Self, String), Error> {
        let (key, der) = Self::generate()?;
        let body = base64(&der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        Ok((key, pem))
    }

    /// The public key that verifies this key's signatures.
    pub fn verify_key(&self) -> VerifyKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        VerifyKey(raw)
    }

    /// Signs `spec` for `queue`; the hex signature to store in `spec.sig`.
    pub(crate) fn sign(&self, queue: &str, spec: &TaskSpec) -> String {
        hex(self.pair.sign(&message(queue, spec)).as_ref())
    }
}

/// An ed25519 public key (workers): 32 bytes, written as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyKey([u8; 32]);

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({})", self.to_hex())
    }
}

impl VerifyKey {
    /// A key from 64 hex digits (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for anything else.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let bytes = unhex(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                Error::InvalidInput("an ed25519 verify key is 64 hex digits (32 bytes)".to_string())
            })?;
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&bytes);
        Ok(Self(raw))
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    fn verifies(&self, queue: &str, spec: &TaskSpec, sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(&message(queue, spec), sig)
            .is_ok()
    }
}

/// Checks that `spec`, delivered on `queue`, is signed by one of `keys`.
///
/// # Errors
/// [`Error::Forged`] saying why not (unsigned, not hex, no key verifies).
pub(crate) fn check(keys: &[VerifyKey], queue: &str, spec: &TaskSpec) -> Result<(), Error> {
    let refuse = |reason: &str| Error::Forged {
        id: spec.id.clone(),
        reason: reason.to_string(),
    };
    let sig = spec
        .sig
        .as_deref()
        .ok_or_else(|| refuse("the task is not signed"))?;
    let sig = unhex(sig).ok_or_else(|| refuse("its signature is not hex"))?;
    if keys.iter().any(|k| k.verifies(queue, spec, &sig)) {
        Ok(())
    } else {
        Err(refuse(
            "its signature does not verify with any trusted key (signed by another key, changed after signing, or signed for another queue)",
        ))
    }
}

fn message(queue: &str, spec: &TaskSpec) -> Vec<u8> {
    let mut unsigned = spec.clone();
    unsigned.sig = None;
    let mut out = DOMAIN.to_vec();
    out.extend_from_slice(queue.as_bytes());
    out.push(0);
    // Serializing a TaskSpec cannot fail (string keys, finite numbers).
    out.extend_from_slice(&serde_json::to_vec(&unsigned).unwrap_or_default());
    out
}

/// Standard base64 with padding (RFC 4648), for PEM.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PROTOCOL_VERSION;

    fn spec(id: &str) -> TaskSpec {
        serde_json::from_value(serde_json::json!({
            "v": PROTOCOL_VERSION, "id": id, "input": {"prompt": "hi", "n": 1.5}
        }))
        .unwrap()
    }

    #[test]
    fn a_signed_spec_verifies_through_its_json_and_nothing_else_does() {
        let (key, der) = SigningKey::generate().unwrap();
        let trusted = [key.verify_key()];
        let mut s = spec("t1");
        s.sig = Some(key.sign("q", &s));
        // Through the JSON the worker receives.
        let wire = serde_json::to_vec(&s).unwrap();
        let received = TaskSpec::decode(&wire).unwrap();
        check(&trusted, "q", &received).unwrap();
        assert!(
            check(&trusted, "other", &received).is_err(),
            "replay into another queue"
        );
        let mut changed = received.clone();
        changed.priority = 5;
        assert!(
            check(&trusted, "q", &changed).is_err(),
            "changed after signing"
        );
        let (stranger, _) = SigningKey::generate().unwrap();
        assert!(check(&[stranger.verify_key()], "q", &received).is_err());
        assert!(check(&trusted, "q", &spec("t2"))
            .unwrap_err()
            .to_string()
            .contains("not signed"));
        // The stored key and the hex form come back.
        let again = SigningKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(again.verify_key(), key.verify_key());
        assert_eq!(
            VerifyKey::from_hex(&key.verify_key().to_hex()).unwrap(),
            key.verify_key()
        );
        assert!(VerifyKey::from_hex("abc").is_err());
        assert!(!format!("{key:?}").contains(&hex(&der)));
        let (pem_key, pem) = SigningKey::generate_pem().unwrap();
        let parsed = SigningKey::from_pkcs8_pem(pem.as_bytes()).unwrap();
        assert_eq!(parsed.verify_key(), pem_key.verify_key());
    }
}
