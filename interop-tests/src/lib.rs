//! Harness for interop tests against real Go CometBFT / Tendermint processes.
//!
//! Not implemented yet: issue 3 adds the Go node installer and the harness here.
