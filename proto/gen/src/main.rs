//! Regenerates `proto/src/generated/` from `proto/protos/`.
//!
//! Usage: `cargo run -p p2p-proto-gen` (from anywhere in the workspace).

use std::process::ExitCode;

fn main() -> ExitCode {
    match p2p_proto_gen::regenerate_in_place() {
        Ok(files) => {
            let dir = p2p_proto_gen::generated_dir();
            for file in files {
                println!("wrote {}", dir.join(file).display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p2p-proto-gen: {e}");
            ExitCode::FAILURE
        }
    }
}
