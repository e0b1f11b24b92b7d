//! `p2pd`: the node binary. `p2pd init`, then `p2pd start`; `p2pd --help` lists the commands.
//!
//! Exit codes: 0 on success, 2 for a bad configuration, key file, command line, or a listen
//! address that cannot be bound (one line on stderr, nothing written), 1 for other failures.
//! Logs go to stdout, errors to stderr.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
