//! Staleness check: the checked-in generated code must match what the
//! generator produces now. CI relies on this test.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use p2p_proto_gen::{REGENERATE_HINT, generate, generated_dir};

fn read_dir_files(dir: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.insert(name, fs::read(entry.path())?);
        }
    }
    Ok(files)
}

#[test]
fn generated_code_is_fresh() {
    let fresh_dir = tempfile::tempdir().unwrap();
    generate(fresh_dir.path()).unwrap();
    let fresh = read_dir_files(fresh_dir.path()).unwrap();
    assert!(!fresh.is_empty(), "the generator produced no files");

    let committed_dir = generated_dir();
    let committed = read_dir_files(&committed_dir).unwrap_or_else(|e| {
        panic!("cannot read {}: {e}\n{REGENERATE_HINT}", committed_dir.display())
    });

    let mut problems = Vec::new();
    for (name, content) in &fresh {
        match committed.get(name) {
            None => problems.push(format!("missing: {name}")),
            Some(old) if old != content => problems.push(format!("differs: {name}")),
            Some(_) => {}
        }
    }
    for name in committed.keys() {
        if !fresh.contains_key(name) {
            problems.push(format!("extra (not generated): {name}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{REGENERATE_HINT}\nin {}:\n  {}",
        committed_dir.display(),
        problems.join("\n  ")
    );
}
