//! Persistence of peer records in a [redb](redb) database.
//!
//! One table, `peers`, maps a node ID (40 hex characters) to the JSON encoding of its
//! [`PeerRecord`]. The API is blocking: call it from a blocking thread.

use std::path::{Path, PathBuf};

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::Timestamp;
use crate::types::NodeId;

const PEERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("peers");

/// What is remembered about a peer across restarts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer.
    #[serde(with = "node_id_hex")]
    pub node_id: NodeId,
    /// Its known addresses, with their dial failures.
    pub addresses: Vec<AddressRecord>,
    /// Whether it was a persistent peer (the configuration decides again on load).
    pub persistent: bool,
    /// Its score at `score_updated_at`, before decay.
    pub score: f64,
    /// When `score` was last changed.
    pub score_updated_at: Timestamp,
    /// The end of its ban, if it was banned.
    pub banned_until: Option<Timestamp>,
    /// When a connection to it last became ready.
    pub last_connected: Option<Timestamp>,
    /// The protocol (URL scheme) of its last successful dial; absent in records written
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_protocol: Option<String>,
}

/// One address of a [`PeerRecord`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    /// The address, as written by [`NodeAddress`](crate::address::NodeAddress)'s `Display`.
    pub address: String,
    /// Consecutive failed dials.
    pub failures: u32,
    /// When the last dial failed.
    pub last_failure: Option<Timestamp>,
    /// The peer that gossiped it (absent: configuration or operator).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_node_id_hex")]
    pub source: Option<NodeId>,
    /// A handshake verified it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verified: bool,
}

/// A change to the peer store.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    /// Insert or overwrite the record of a peer.
    Put(PeerRecord),
    /// Remove the record of a peer (no-op if absent).
    Delete(NodeId),
}

/// Why the peer store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerStoreError {
    /// The database could not be opened or created.
    #[error("cannot open peer store {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The database error.
        #[source]
        source: redb::Error,
    },
    /// The records could not be read.
    #[error("cannot read peer store {}: {source}", path.display())]
    Read {
        /// The database file.
        path: PathBuf,
        /// The database error.
        #[source]
        source: redb::Error,
    },
    /// The changes could not be written.
    #[error("cannot write peer store {}: {source}", path.display())]
    Write {
        /// The database file.
        path: PathBuf,
        /// The database error.
        #[source]
        source: redb::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode the record of peer {node_id} for peer store {}: {source}", path.display())]
    Encode {
        /// The database file.
        path: PathBuf,
        /// The peer.
        node_id: NodeId,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// The peer database: a redb file, or memory for tests.
#[derive(Debug)]
pub struct PeerStore {
    db: Database,
    path: PathBuf,
}

impl PeerStore {
    /// Opens the database at `path`, creating it if it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PeerStoreError> {
        let path = path.as_ref().to_path_buf();
        match Database::create(&path) {
            Ok(db) => Self::init(db, path),
            Err(e) => Err(PeerStoreError::Open { path, source: e.into() }),
        }
    }

    /// An empty database in memory.
    pub fn in_memory() -> Result<Self, PeerStoreError> {
        let path = PathBuf::from("<memory>");
        match Database::builder().create_with_backend(InMemoryBackend::new()) {
            Ok(db) => Self::init(db, path),
            Err(e) => Err(PeerStoreError::Open { path, source: e.into() }),
        }
    }

    /// Creates the table, so that reads find it.
    fn init(db: Database, path: PathBuf) -> Result<Self, PeerStoreError> {
        let created = (|| -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            tx.open_table(PEERS)?;
            tx.commit()?;
            Ok(())
        })();
        match created {
            Ok(()) => Ok(Self { db, path }),
            Err(source) => Err(PeerStoreError::Open { path, source }),
        }
    }

    /// The database file (`<memory>` for [`in_memory`](Self::in_memory)).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every record. A record that cannot be decoded is skipped with a warning.
    pub fn load(&self) -> Result<Vec<PeerRecord>, PeerStoreError> {
        let read = || -> Result<Vec<PeerRecord>, redb::Error> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(PEERS)?;
            let mut records = Vec::new();
            for entry in redb::ReadableTable::iter(&table)? {
                let (key, value) = entry?;
                match serde_json::from_slice::<PeerRecord>(value.value()) {
                    Ok(record) if record.node_id.to_string() == key.value() => records.push(record),
                    Ok(_) => tracing::warn!(
                        key = key.value(),
                        "skipping peer record stored under another node ID"
                    ),
                    Err(error) => {
                        tracing::warn!(key = key.value(), %error, "skipping undecodable peer record")
                    }
                }
            }
            Ok(records)
        };
        read().map_err(|source| PeerStoreError::Read { path: self.path.clone(), source })
    }

    /// Applies `ops` in one write transaction.
    pub fn apply(&self, ops: &[StoreOp]) -> Result<(), PeerStoreError> {
        let write_err =
            |source: redb::Error| PeerStoreError::Write { path: self.path.clone(), source };
        let tx = self.db.begin_write().map_err(|e| write_err(e.into()))?;
        {
            let mut table = tx.open_table(PEERS).map_err(|e| write_err(e.into()))?;
            for op in ops {
                match op {
                    StoreOp::Put(record) => {
                        let value = serde_json::to_vec(record).map_err(|source| {
                            PeerStoreError::Encode {
                                path: self.path.clone(),
                                node_id: record.node_id,
                                source,
                            }
                        })?;
                        let key = record.node_id.to_string();
                        table
                            .insert(key.as_str(), value.as_slice())
                            .map_err(|e| write_err(e.into()))?;
                    }
                    StoreOp::Delete(node_id) => {
                        table
                            .remove(node_id.to_string().as_str())
                            .map_err(|e| write_err(e.into()))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| write_err(e.into()))
    }
}

/// Serde of a [`NodeId`] as its hex string.
mod node_id_hex {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::types::NodeId;

    pub(super) fn serialize<S: Serializer>(id: &NodeId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(id)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<NodeId, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(D::Error::custom)
    }
}

/// Serde of an optional [`NodeId`] as its hex string.
mod opt_node_id_hex {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::types::NodeId;

    pub(super) fn serialize<S: Serializer>(
        id: &Option<NodeId>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => serializer.collect_str(id),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<NodeId>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|s| s.parse().map_err(D::Error::custom))
            .transpose()
    }
}
