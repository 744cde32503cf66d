//! What the load-test scenario tests share.

use std::path::PathBuf;

/// The volna binary: next to volna-load, else in target/{release,debug}.
pub fn relay_bin() -> Option<PathBuf> {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_volna-load"));
    let mut candidates = vec![load.with_file_name("volna")];
    if let Some(target) = load.parent().and_then(|d| d.parent()) {
        candidates.push(target.join("release").join("volna"));
        candidates.push(target.join("debug").join("volna"));
    }
    candidates.into_iter().find(|p| p.is_file())
}
