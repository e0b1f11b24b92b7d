//! A node's long-term ed25519 identity key ([`NodeKey`]) and its CometBFT `node_key.json` file.
//!
//! The file format is byte-compatible with CometBFT: compact JSON, no trailing newline,
//!
//! ```text
//! {"priv_key":{"type":"tendermint/PrivKeyEd25519","value":"<base64 of seed || public key>"}}
//! ```
//!
//! Loading also accepts pretty-printed JSON and the `"id"` field Tendermint v0.35 writes.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// The amino type name of an ed25519 private key in `node_key.json`.
pub const PRIV_KEY_TYPE_ED25519: &str = "tendermint/PrivKeyEd25519";

/// The largest `node_key.json` [`NodeKey::load`] reads (a valid one is about 150 bytes).
pub const MAX_NODE_KEY_FILE_SIZE: u64 = 64 * 1024;

/// A node's ed25519 identity key. Its public key determines the [`NodeId`].
///
/// `Debug` shows only the node ID, never secret material.
#[derive(Clone)]
pub struct NodeKey {
    signing_key: SigningKey,
    node_id: NodeId,
}

impl NodeKey {
    /// A fresh random key (seeded from the operating system's RNG through `rand`).
    pub fn generate() -> Self {
        Self::from_seed(rand::random::<[u8; 32]>())
    }

    /// The key with this 32-byte ed25519 seed (the "secret key" of RFC 8032).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(&seed))
    }

    /// Wraps an existing signing key.
    pub fn from_signing_key(signing_key: SigningKey) -> Self {
        let node_id = NodeId::from_public_key(&signing_key.verifying_key());
        Self { signing_key, node_id }
    }

    /// The node ID: the first 20 bytes of SHA-256 of the public key.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The ed25519 public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    /// Signs `msg` with ed25519 (RFC 8032, deterministic).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.signing_key.sign(msg)
    }

    /// The underlying signing key (e.g. for a TLS certificate or the SecretConnection handshake).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The CometBFT `node_key.json` text: compact, without a trailing newline.
    pub fn to_json(&self) -> String {
        let mut bytes = [0u8; 64];
        let (seed, public) = bytes.split_at_mut(32);
        seed.copy_from_slice(self.signing_key.as_bytes());
        public.copy_from_slice(self.public_key().as_bytes());
        let file = NodeKeyFile {
            priv_key: PrivKey {
                key_type: PRIV_KEY_TYPE_ED25519.to_owned(),
                value: BASE64.encode(bytes),
            },
            id: None,
        };
        bytes.fill(0);
        // Serialising a struct of two strings into a String cannot fail; fall back to the same
        // text built by hand rather than panicking.
        serde_json::to_string(&file).unwrap_or_else(|_| {
            format!(
                r#"{{"priv_key":{{"type":"{}","value":"{}"}}}}"#,
                file.priv_key.key_type, file.priv_key.value
            )
        })
    }

    /// Parses `node_key.json` text.
    ///
    /// Whitespace and pretty-printing are accepted, as is an `"id"` field (Tendermint v0.35),
    /// which must then equal the ID derived from the key. The key type must be
    /// `tendermint/PrivKeyEd25519`, the value must decode to 64 bytes, and its last 32 bytes
    /// must be the public key of its first 32 (the seed).
    pub fn from_json(json: &str) -> Result<Self, NodeKeyError> {
        let file: NodeKeyFile = serde_json::from_str(json).map_err(NodeKeyError::Json)?;
        if file.priv_key.key_type != PRIV_KEY_TYPE_ED25519 {
            return Err(NodeKeyError::WrongKeyType { found: file.priv_key.key_type });
        }
        let mut bytes =
            BASE64.decode(file.priv_key.value.as_bytes()).map_err(NodeKeyError::Base64)?;
        let parsed = Self::from_keypair_bytes(&bytes);
        bytes.fill(0);
        let key = parsed?;
        if let Some(id) = file.id
            && id != key.node_id.to_string()
        {
            return Err(NodeKeyError::IdMismatch { stored: id, derived: key.node_id });
        }
        Ok(key)
    }

    /// Checks a 64-byte `seed || public key` and builds the key.
    fn from_keypair_bytes(bytes: &[u8]) -> Result<Self, NodeKeyError> {
        let (64, Some(seed), Some(stored_public)) =
            (bytes.len(), bytes.first_chunk::<32>(), bytes.last_chunk::<32>())
        else {
            return Err(NodeKeyError::BadLength { len: bytes.len() });
        };
        let key = Self::from_seed(*seed);
        let derived = key.public_key();
        if derived.as_bytes() != stored_public {
            return Err(NodeKeyError::PublicKeyMismatch {
                stored: hex::encode(stored_public),
                derived: hex::encode(derived.as_bytes()),
            });
        }
        Ok(key)
    }

    /// Reads and parses a `node_key.json` file (see [`NodeKey::from_json`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, NodeKeyError> {
        let path = path.as_ref();
        let io_err = |source| NodeKeyError::Io { path: path.to_owned(), source };
        let file = fs::File::open(path).map_err(io_err)?;
        let mut text = String::new();
        file.take(MAX_NODE_KEY_FILE_SIZE + 1).read_to_string(&mut text).map_err(io_err)?;
        if text.len() as u64 > MAX_NODE_KEY_FILE_SIZE {
            return Err(NodeKeyError::TooLarge {
                path: path.to_owned(),
                max: MAX_NODE_KEY_FILE_SIZE,
            });
        }
        Self::from_json(&text)
            .map_err(|e| NodeKeyError::InvalidFile { path: path.to_owned(), source: Box::new(e) })
    }

    /// Writes the key as `node_key.json` (see [`NodeKey::to_json`]).
    ///
    /// The file is written to a temporary file in the same directory, flushed and renamed over
    /// `path`, so a crash leaves either the old or the new file. On Unix the file mode is 0600.
    /// The parent directory must exist.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), NodeKeyError> {
        let path = path.as_ref();
        let io_err = |source| NodeKeyError::Io { path: path.to_owned(), source };
        let Some(file_name) = path.file_name() else {
            return Err(io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path has no file name",
            )));
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
        let tmp = dir.join(tmp_name);
        let tmp_err = |source| NodeKeyError::Io { path: tmp.clone(), source };

        let mut json = self.to_json().into_bytes();
        let written = write_new_private_file(&tmp, &json);
        json.fill(0);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(tmp_err(e));
        }
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        // Make the rename durable; not every platform can sync a directory, so this is best
        // effort.
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Loads the key at `path`, or generates one and saves it there if the file does not exist.
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<Self, NodeKeyError> {
        let path = path.as_ref();
        match Self::load(path) {
            Err(NodeKeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate();
                key.save(path)?;
                Ok(key)
            }
            other => other,
        }
    }
}

/// Creates `path` (which must not exist) with mode 0600 on Unix, writes `data` and syncs it.
fn write_new_private_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.node_id)
    }
}

/// The JSON layout of `node_key.json`.
#[derive(Serialize, Deserialize)]
struct NodeKeyFile {
    priv_key: PrivKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

/// The amino-JSON `{"type": ..., "value": ...}` envelope of a private key.
#[derive(Serialize, Deserialize)]
struct PrivKey {
    #[serde(rename = "type")]
    key_type: String,
    value: String,
}

/// Why a node key could not be loaded, parsed or saved.
///
/// Messages never contain secret key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeKeyError {
    /// Reading or writing a file failed.
    #[error("node key file {path:?}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is larger than [`MAX_NODE_KEY_FILE_SIZE`].
    #[error("node key file {path:?} is larger than {max} bytes; it is not a node_key.json")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The size limit.
        max: u64,
    },
    /// The file's content is invalid.
    #[error("node key file {path:?} is invalid: {source}")]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        source: Box<Self>,
    },
    /// The text is not JSON of the expected shape.
    #[error(
        "node key is not valid JSON of the form \
         {{\"priv_key\":{{\"type\":\"tendermint/PrivKeyEd25519\",\"value\":\"<base64>\"}}}}: {0}"
    )]
    Json(#[source] serde_json::Error),
    /// The key type is not `tendermint/PrivKeyEd25519`.
    #[error("node key has type {found:?}; only \"tendermint/PrivKeyEd25519\" is supported")]
    WrongKeyType {
        /// The type found in the file.
        found: String,
    },
    /// The key value is not valid standard (padded) base64.
    #[error("node key value is not valid base64: {0}")]
    Base64(#[source] base64::DecodeError),
    /// The key value does not decode to 64 bytes.
    #[error(
        "node key value decodes to {len} bytes; expected 64 (32-byte seed || 32-byte public key)"
    )]
    BadLength {
        /// The decoded length.
        len: usize,
    },
    /// The stored public key (last 32 bytes) is not the one derived from the seed.
    #[error(
        "node key is corrupt: stored public key {stored} does not match public key {derived} \
         derived from its seed"
    )]
    PublicKeyMismatch {
        /// The stored public key, hex.
        stored: String,
        /// The public key derived from the seed, hex.
        derived: String,
    },
    /// The `"id"` field does not match the ID derived from the key.
    #[error("node key file has \"id\" {stored:?} but its key gives node ID {derived}")]
    IdMismatch {
        /// The stored ID.
        stored: String,
        /// The ID derived from the key.
        derived: NodeId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_VALUE: &str =
        "EVkqJO/jIXp3rkASXfh9YnyToYXRXhBr6g9cQVxPFnQBP/5povV4HTjvsy530kybxKHwEi85iU8YL0qQhSYVoQ==";
    const VECTOR_ID: &str = "a3258dcbf45dca0df052981870f2d1441a36d145";

    fn vector_json() -> String {
        format!(r#"{{"priv_key":{{"type":"tendermint/PrivKeyEd25519","value":"{VECTOR_VALUE}"}}}}"#)
    }

    fn with_value(value: &str) -> String {
        format!(r#"{{"priv_key":{{"type":"tendermint/PrivKeyEd25519","value":"{value}"}}}}"#)
    }

    #[test]
    fn cometbft_vector_round_trips_byte_identically() {
        let json = vector_json();
        let key = NodeKey::from_json(&json).unwrap();
        assert_eq!(key.node_id().to_string(), VECTOR_ID);
        assert_eq!(key.to_json(), json);
        assert_eq!(
            hex::encode(key.public_key().as_bytes()),
            "013ffe69a2f5781d38efb32e77d24c9bc4a1f0122f39894f182f4a90852615a1"
        );
    }

    #[test]
    fn seed_vector() {
        let key = NodeKey::from_seed([0x11; 32]);
        assert_eq!(key.node_id().to_string(), "10ba682c8ad13513971e8b56881aab8bd702bb80");
        assert_eq!(
            hex::encode(key.public_key().as_bytes()),
            "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"
        );
        assert_eq!(NodeKey::from_json(&key.to_json()).unwrap().node_id(), key.node_id());
    }

    #[test]
    fn debug_hides_secret() {
        let key = NodeKey::from_seed([0x11; 32]);
        let dbg = format!("{key:?}");
        assert_eq!(dbg, "NodeKey(10ba682c8ad13513971e8b56881aab8bd702bb80)");
        assert!(!dbg.contains("1111"));
    }

    #[test]
    fn sign_verifies() {
        let key = NodeKey::generate();
        let other = NodeKey::generate();
        assert_ne!(key.node_id(), other.node_id());
        let sig = key.sign(b"hello");
        assert!(key.public_key().verify_strict(b"hello", &sig).is_ok());
        assert!(key.public_key().verify_strict(b"hellO", &sig).is_err());
        assert_eq!(key.signing_key().verifying_key(), key.public_key());
        assert_eq!(NodeId::from_public_key(&key.public_key()), key.node_id());
    }

    #[test]
    fn accepts_pretty_json_and_v035_id() {
        let pretty = format!(
            "{{\n  \"id\": \"{VECTOR_ID}\",\n  \"priv_key\": {{\n    \"type\": \
             \"tendermint/PrivKeyEd25519\",\n    \"value\": \"{VECTOR_VALUE}\"\n  }}\n}}\n"
        );
        assert_eq!(NodeKey::from_json(&pretty).unwrap().node_id().to_string(), VECTOR_ID);
    }

    #[test]
    fn rejects_id_mismatch() {
        let json = format!(
            r#"{{"id":"10ba682c8ad13513971e8b56881aab8bd702bb80","priv_key":{{"type":"tendermint/PrivKeyEd25519","value":"{VECTOR_VALUE}"}}}}"#
        );
        let e = NodeKey::from_json(&json).unwrap_err();
        assert!(matches!(e, NodeKeyError::IdMismatch { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("10ba682c8ad13513971e8b56881aab8bd702bb80") && msg.contains(VECTOR_ID)
        );
    }

    #[test]
    fn rejects_wrong_type() {
        let json = vector_json().replace("PrivKeyEd25519", "PrivKeySecp256k1");
        let e = NodeKey::from_json(&json).unwrap_err();
        assert!(
            matches!(&e, NodeKeyError::WrongKeyType { found } if found == "tendermint/PrivKeySecp256k1")
        );
        assert!(e.to_string().contains("tendermint/PrivKeySecp256k1"));
    }

    #[test]
    fn rejects_bad_json() {
        for bad in ["", "{", "[]", r#"{"priv_key":{"type":"tendermint/PrivKeyEd25519"}}"#, "{}"] {
            let e = NodeKey::from_json(bad).unwrap_err();
            assert!(matches!(e, NodeKeyError::Json(_)), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn rejects_bad_base64() {
        for bad in ["not base64!", "EVk", "EVk=====", &VECTOR_VALUE.replace("==", "")] {
            let e = NodeKey::from_json(&with_value(bad)).unwrap_err();
            assert!(matches!(e, NodeKeyError::Base64(_)), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn rejects_bad_length() {
        for len in [0usize, 32, 63, 65, 96] {
            let e = NodeKey::from_json(&with_value(&BASE64.encode(vec![7u8; len]))).unwrap_err();
            assert!(matches!(e, NodeKeyError::BadLength { len: l } if l == len), "{len}: {e:?}");
            assert!(e.to_string().contains(&len.to_string()));
        }
    }

    #[test]
    fn rejects_public_key_mismatch() {
        let mut bytes = BASE64.decode(VECTOR_VALUE).unwrap();
        bytes[63] ^= 1;
        let e = NodeKey::from_json(&with_value(&BASE64.encode(&bytes))).unwrap_err();
        assert!(matches!(e, NodeKeyError::PublicKeyMismatch { .. }), "{e:?}");
        // All-zero public key (Go panics on it).
        bytes[32..].fill(0);
        let e = NodeKey::from_json(&with_value(&BASE64.encode(&bytes))).unwrap_err();
        assert!(matches!(e, NodeKeyError::PublicKeyMismatch { .. }), "{e:?}");
        assert!(e.to_string().contains(&"00".repeat(32)));
        // The message must not leak the seed.
        assert!(!e.to_string().contains(&hex::encode(&bytes[..32])));
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        let key = NodeKey::from_seed([0x11; 32]);
        key.save(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), key.to_json());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = NodeKey::load(&path).unwrap();
        assert_eq!(loaded.node_id(), key.node_id());
        assert_eq!(loaded.signing_key().to_bytes(), key.signing_key().to_bytes());
        // Overwrite works and leaves no temporary file behind.
        NodeKey::from_json(&vector_json()).unwrap().save(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), vector_json());
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node_key.json")]);
    }

    #[test]
    fn load_cometbft_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        fs::write(&path, vector_json()).unwrap();
        assert_eq!(NodeKey::load(&path).unwrap().node_id().to_string(), VECTOR_ID);
    }

    #[test]
    fn load_or_generate_creates_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        let first = NodeKey::load_or_generate(&path).unwrap();
        assert!(path.exists());
        let second = NodeKey::load_or_generate(&path).unwrap();
        assert_eq!(first.node_id(), second.node_id());
    }

    #[test]
    fn io_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("node_key.json");
        let e = NodeKey::load(&missing).unwrap_err();
        assert!(
            matches!(&e, NodeKeyError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(e.to_string().contains("no-such-dir"), "{e}");
        // Saving does not create parent directories.
        let e = NodeKey::generate().save(&missing).unwrap_err();
        assert!(matches!(e, NodeKeyError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("no-such-dir"), "{e}");
        // load_or_generate does not either.
        assert!(matches!(NodeKey::load_or_generate(&missing), Err(NodeKeyError::Io { .. })));
    }

    #[test]
    fn invalid_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        fs::write(&path, vector_json().replace("Ed25519", "Sr25519")).unwrap();
        let e = NodeKey::load(&path).unwrap_err();
        let NodeKeyError::InvalidFile { path: p, source } = &e else { panic!("{e:?}") };
        assert_eq!(p, &path);
        assert!(matches!(**source, NodeKeyError::WrongKeyType { .. }));
        assert!(e.to_string().contains("node_key.json") && e.to_string().contains("Sr25519"));
        // load_or_generate must not overwrite an invalid file.
        assert!(matches!(NodeKey::load_or_generate(&path), Err(NodeKeyError::InvalidFile { .. })));
    }

    #[test]
    fn too_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        fs::write(&path, " ".repeat(MAX_NODE_KEY_FILE_SIZE as usize + 1)).unwrap();
        assert!(matches!(NodeKey::load(&path), Err(NodeKeyError::TooLarge { .. })));
    }
}
