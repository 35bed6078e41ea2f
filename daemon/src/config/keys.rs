//! Names that travel in remote commands and the keys that sign them: checked by the config
//! (`uplink.trusted_keys`) and used by the command verifier and the uplink.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;

/// Where results go when the message carried no usable request id (ids starting with `_` are
/// reserved for this).
pub const NO_REQUEST_ID: &str = "_invalid";

/// One `uplink.trusted_keys` entry: `name:base64-public-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub name: String,
    pub key: VerifyingKey,
}

/// Names of keys and request ids: what can be a topic level and a log word.
pub fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parses `name:base64-public-key` (32 bytes, a valid Ed25519 point).
pub fn parse_trusted_key(entry: &str) -> Result<TrustedKey, String> {
    let Some((name, b64)) = entry.split_once(':') else {
        return Err(format!(
            "\"{entry}\" is not name:base64-public-key; `edgevoice command keygen` prints such a line"
        ));
    };
    if !valid_id(name) {
        return Err(format!(
            "key name \"{name}\" must be 1-64 letters, digits, '-', '_' or '.'"
        ));
    }
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| format!("key \"{name}\": the public key is not base64 ({e})"))?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "key \"{name}\": the public key is {} bytes, an Ed25519 public key is 32",
            bytes.len()
        )
    })?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| format!("key \"{name}\": not a valid Ed25519 public key"))?;
    Ok(TrustedKey {
        name: name.to_owned(),
        key,
    })
}
