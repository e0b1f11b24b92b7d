//! QUIC transport for the `quic://` scheme.
//!
//! Not implemented yet: this crate is a placeholder so the workspace layout is in place.
//! Issue 4 builds the quinn/rustls transport here.
