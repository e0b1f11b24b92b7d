//! The ADR-062 echo reactor: pings peers, answers pings with pongs.
//!
//! It shows the [`Wrapper`] pattern: the reactor works with the domain enum [`Echo`] and the
//! router (un)wraps it into the protobuf `p2p.echo.v1.EchoMessage` oneof on the wire.

use p2p_proto::echo::{EchoMessage, PingMessage, PongMessage, echo_message::Inner};

use crate::peer_manager::Severity;
use crate::router::{
    Channel, ChannelDescriptor, Envelope, Outbound, PeerError, UnwrapError, Wrapper,
};
use crate::types::{ChannelId, NodeId};

/// The echo channel's ID (not used by CometBFT).
pub const ECHO_CHANNEL: ChannelId = ChannelId(0x7e);

/// A message of the echo protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// Asks the peer to answer with a pong carrying the same content.
    Ping(String),
    /// Answers a ping.
    Pong(String),
}

impl Wrapper for Echo {
    type Proto = EchoMessage;

    fn wrap(self) -> EchoMessage {
        let inner = match self {
            Self::Ping(content) => Inner::Ping(PingMessage { content }),
            Self::Pong(content) => Inner::Pong(PongMessage { content }),
        };
        EchoMessage { inner: Some(inner) }
    }

    fn unwrap(proto: EchoMessage) -> Result<Self, UnwrapError> {
        match proto.inner {
            Some(Inner::Ping(p)) => Ok(Self::Ping(p.content)),
            Some(Inner::Pong(p)) => Ok(Self::Pong(p.content)),
            None => Err(UnwrapError("EchoMessage without a ping or pong".into())),
        }
    }
}

/// The echo channel's descriptor: low priority, small messages.
pub fn echo_channel_descriptor() -> ChannelDescriptor {
    ChannelDescriptor::new(ECHO_CHANNEL).with_priority(1).with_max_message_size(64 * 1024)
}

/// What [`handle_echo`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EchoEvent {
    /// A ping arrived and a pong was queued.
    Pinged {
        /// The peer.
        from: NodeId,
        /// The content.
        content: String,
    },
    /// A pong arrived.
    Ponged {
        /// The peer.
        from: NodeId,
        /// The content.
        content: String,
    },
}

/// Handles one received echo message: answers pings with pongs.
pub async fn handle_echo(channel: &Channel<Echo>, envelope: Envelope<Echo>) -> EchoEvent {
    match envelope.message {
        Echo::Ping(content) => {
            if let Err(e) =
                channel.send(Outbound::to(envelope.from, Echo::Pong(content.clone()))).await
            {
                channel.report_error(PeerError {
                    node_id: envelope.from,
                    severity: Severity::Minor,
                    reason: format!("could not answer ping: {e}"),
                });
            }
            EchoEvent::Pinged { from: envelope.from, content }
        }
        Echo::Pong(content) => EchoEvent::Ponged { from: envelope.from, content },
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn wrap_unwrap_round_trip_and_empty_oneof_is_rejected() {
        for m in [Echo::Ping("👋".into()), Echo::Pong("x".into())] {
            let bytes = m.clone().wrap().encode_to_vec();
            assert_eq!(Echo::unwrap(EchoMessage::decode(&bytes[..]).unwrap()).unwrap(), m);
        }
        assert!(Echo::unwrap(EchoMessage { inner: None }).is_err());
    }
}
