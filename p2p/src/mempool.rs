//! The mempool channel (0x30) as CometBFT speaks it: `tendermint.mempool.Message{Txs}`.

use p2p_proto::tendermint::mempool::{Message, Txs as ProtoTxs, message::Sum};

use crate::router::{ChannelDescriptor, OverflowPolicy, UnwrapError, Wrapper};
use crate::types::ChannelId;

/// CometBFT's mempool channel.
pub const MEMPOOL_CHANNEL: ChannelId = ChannelId(0x30);

/// CometBFT's default `mempool.max_tx_bytes` (1 MiB).
pub const DEFAULT_MAX_TX_BYTES: usize = 1024 * 1024;

/// A batch of transactions. CometBFT sends one transaction per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txs(pub Vec<Vec<u8>>);

impl Wrapper for Txs {
    type Proto = Message;

    fn wrap(self) -> Message {
        Message { sum: Some(Sum::Txs(ProtoTxs { txs: self.0 })) }
    }

    /// Rejects what CometBFT v0.38.24+ disconnects for: no oneof, an empty batch, an empty tx.
    fn unwrap(proto: Message) -> Result<Self, UnwrapError> {
        match proto.sum {
            Some(Sum::Txs(ProtoTxs { txs })) => {
                if txs.is_empty() {
                    return Err(UnwrapError("mempool message with no transactions".into()));
                }
                if let Some(i) = txs.iter().position(Vec::is_empty) {
                    return Err(UnwrapError(format!("mempool transaction {i} is empty")));
                }
                Ok(Self(txs))
            }
            None => Err(UnwrapError("mempool message without a Txs field".into())),
        }
    }
}

/// The mempool channel's descriptor, with CometBFT's priority (5) and a receive limit fitting one
/// `max_tx_bytes` transaction in its wrapper (1 048 584 bytes at the default).
pub fn mempool_channel_descriptor(max_tx_bytes: usize) -> ChannelDescriptor {
    ChannelDescriptor::new(MEMPOOL_CHANNEL)
        .with_priority(5)
        .with_max_message_size(max_tx_bytes + 8)
        .with_overflow(OverflowPolicy::DropNewest)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn golden_bytes_and_strict_unwrap() {
        // wire-mconn.md §4.1: Message{Txs{["hello"]}} = 0a 07 0a 05 "hello".
        let bytes = Txs(vec![b"hello".to_vec()]).wrap().encode_to_vec();
        assert_eq!(hex::encode(&bytes), "0a070a0568656c6c6f");
        let back = Txs::unwrap(Message::decode(&bytes[..]).unwrap()).unwrap();
        assert_eq!(back, Txs(vec![b"hello".to_vec()]));
        assert!(Txs::unwrap(Message { sum: None }).is_err());
        assert!(Txs::unwrap(Txs(vec![]).wrap()).is_err());
        assert!(Txs::unwrap(Txs(vec![vec![]]).wrap()).is_err());
        // 1 MiB tx in its wrapper fits the descriptor's limit exactly.
        let max = Txs(vec![vec![1; DEFAULT_MAX_TX_BYTES]]).wrap().encoded_len();
        assert_eq!(max, mempool_channel_descriptor(DEFAULT_MAX_TX_BYTES).max_message_size);
    }
}
