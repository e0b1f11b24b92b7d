//! MConnection transport for the `mconn://` scheme.
//!
//! Not implemented yet: this crate is a placeholder so the workspace layout is in place.
//! Issue 3 builds SecretConnection, the NodeInfo handshake and the MConnection packetiser here.
