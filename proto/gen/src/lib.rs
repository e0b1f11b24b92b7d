//! Code generator for the `p2p-proto` crate.
//!
//! Compiles the hand-written `.proto` files under `proto/protos/` with
//! [`protox`] (pure Rust; no system `protoc` is needed) and turns the resulting
//! descriptor set into Rust with [`prost_build`]. The output is checked in
//! under `proto/src/generated/`, one file per protobuf package.
//!
//! Run `cargo run -p p2p-proto-gen` from the workspace root to regenerate. The
//! crate's `fresh` test fails when the checked-in files are stale.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Message printed when the checked-in generated code is out of date.
pub const REGENERATE_HINT: &str =
    "the generated protobuf code is stale: run `cargo run -p p2p-proto-gen` and commit the result";

/// Fields whose `bytes` type is generated as `bytes::Bytes` instead of
/// `Vec<u8>`, so that large payloads can be shared without copying.
const BYTES_FIELDS: &[&str] = &[".tendermint.p2p.PacketMsg.data"];

/// An error while generating code.
#[derive(Debug)]
pub enum Error {
    /// Reading or writing files failed.
    Io(io::Error),
    /// The `.proto` files did not compile.
    Protox(Box<protox::Error>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Protox(e) => write!(f, "protobuf compile error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Protox(e) => Some(e.as_ref()),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<protox::Error> for Error {
    fn from(e: protox::Error) -> Self {
        Self::Protox(Box::new(e))
    }
}

/// The `proto/` directory of the workspace (the `p2p-proto` crate).
#[must_use]
pub fn proto_crate_dir() -> PathBuf {
    // This crate lives at `proto/gen`, so its parent is `proto/`.
    let gen_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    gen_dir.parent().map_or_else(|| gen_dir.join(".."), Path::to_path_buf)
}

/// The directory holding the hand-written `.proto` files.
#[must_use]
pub fn protos_dir() -> PathBuf {
    proto_crate_dir().join("protos")
}

/// The directory holding the checked-in generated Rust code.
#[must_use]
pub fn generated_dir() -> PathBuf {
    proto_crate_dir().join("src").join("generated")
}

/// Lists every `.proto` file under `root`, as sorted paths relative to `root`
/// with `/` separators (the form protobuf imports use).
pub fn list_protos(root: &Path) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    collect_protos(root, "", &mut out)?;
    out.sort();
    Ok(out)
}

fn collect_protos(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), Error> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_protos(&entry.path(), &rel, out)?;
        } else if kind.is_file() && name.ends_with(".proto") {
            out.push(rel);
        }
    }
    Ok(())
}

/// Compiles the `.proto` files under `protos` and writes the generated Rust
/// code (one `<package>.rs` file per protobuf package) into `out_dir`, which
/// must exist.
pub fn generate_from(protos: &Path, out_dir: &Path) -> Result<(), Error> {
    let files = list_protos(protos)?;
    let fds = protox::compile(&files, [protos])?;
    prost_build::Config::new().out_dir(out_dir).bytes(BYTES_FIELDS).compile_fds(fds)?;
    Ok(())
}

/// Generates the code for the workspace's `.proto` files into `out_dir`,
/// which must exist.
pub fn generate(out_dir: &Path) -> Result<(), Error> {
    generate_from(&protos_dir(), out_dir)
}

/// Regenerates `proto/src/generated/` in place: generates into a temporary
/// directory, then replaces every file of the target directory (it holds
/// nothing but generated code) so that files of packages that no longer exist
/// are removed too. Returns the names of the files written.
pub fn regenerate_in_place() -> Result<Vec<String>, Error> {
    let target = generated_dir();
    fs::create_dir_all(&target)?;
    let staging = tempfile::tempdir()?;
    generate(staging.path())?;

    for entry in fs::read_dir(&target)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
        }
    }
    let mut written = Vec::new();
    for entry in fs::read_dir(staging.path())? {
        let entry = entry?;
        fs::copy(entry.path(), target.join(entry.file_name()))?;
        written.push(entry.file_name().to_string_lossy().into_owned());
    }
    written.sort();
    Ok(written)
}
