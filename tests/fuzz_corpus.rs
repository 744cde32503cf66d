//! Every saved fuzz input (the seeds in `fuzz/corpus/<target>/` and the inputs that once crashed a
//! target) replayed through its entry point in `volna::fuzz`, on stable: a crash found once stays a
//! test. Also checks that each target has its seeds.

use std::path::PathBuf;

#[test]
fn every_saved_input_passes_its_target() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in volna::fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name} has seeds");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{name}: {} fails", input.display());
        }
    }
}
