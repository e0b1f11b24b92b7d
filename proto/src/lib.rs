//! Protobuf wire types for the p2p crates.
//!
//! The messages are wire-compatible with the Tendermint/CometBFT p2p protocol
//! (multiplexed connection, SecretConnection handshake, node info, PEX and
//! mempool), plus the ADR-062 echo example protocol. The schemas live in
//! `proto/protos/`; the Rust code in `src/generated/` is produced by the
//! `p2p-proto-gen` crate and checked in. Regenerate it with
//! `cargo run -p p2p-proto-gen`; never edit it by hand.
//!
//! `bytes` fields are `Vec<u8>`, except [`tendermint::p2p::PacketMsg::data`],
//! which is a [`bytes::Bytes`] so that packetisation can avoid copies.

/// The `prost` version the generated code is built with.
pub use prost;

/// The `bytes` version used by the generated code.
pub use bytes;

/// Packages of the Tendermint/CometBFT wire protocol.
pub mod tendermint {
    /// `tendermint.crypto`: public keys.
    #[allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::nursery
    )]
    pub mod crypto {
        include!("generated/tendermint.crypto.rs");
    }

    /// `tendermint.p2p`: multiplexed-connection packets, the SecretConnection
    /// handshake, node info and PEX.
    #[allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::nursery
    )]
    pub mod p2p {
        include!("generated/tendermint.p2p.rs");
    }

    /// `tendermint.mempool`: transaction gossip.
    #[allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::nursery
    )]
    pub mod mempool {
        include!("generated/tendermint.mempool.rs");
    }

    #[allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::nursery
    )]
    pub mod consensus {
        include!("generated/tendermint.consensus.rs");
    }

    /// `tendermint.blocksync`: the status request and response (the first message an lp2p
    /// node sends to a CometBFT lp2p peer).
    #[allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::nursery
    )]
    pub mod blocksync {
        include!("generated/tendermint.blocksync.rs");
    }
}

/// libp2p protocols spoken by the lp2p transport.
pub mod libp2p {
    /// `libp2p.identify` (libp2p's `identify.pb`): the identify message of `/ipfs/id/1.0.0`.
    #[allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::nursery
    )]
    pub mod identify {
        include!("generated/libp2p.identify.rs");
    }
}

/// This project's own protobuf packages.
pub mod p2p {
    /// The ADR-062 echo example protocol.
    pub mod echo {
        /// `p2p.echo.v1`: version 1 of the echo protocol.
        #[allow(
            missing_docs,
            missing_debug_implementations,
            unreachable_pub,
            unused_qualifications,
            clippy::all,
            clippy::pedantic,
            clippy::nursery
        )]
        pub mod v1 {
            include!("generated/p2p.echo.v1.rs");
        }
    }
    /// Peer exchange with full node-address URLs, between nodes of this project.
    pub mod pex {
        /// `p2p.pex.v1`: version 1 of URL peer exchange.
        #[allow(
            missing_docs,
            missing_debug_implementations,
            unreachable_pub,
            unused_qualifications,
            clippy::all,
            clippy::pedantic,
            clippy::nursery
        )]
        pub mod v1 {
            include!("generated/p2p.pex.v1.rs");
        }
    }
}

/// The current version of the echo protocol (re-export of [`p2p::echo::v1`]).
pub mod echo {
    pub use crate::p2p::echo::v1::*;
}
