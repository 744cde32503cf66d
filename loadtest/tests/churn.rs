//! The soak: `volna-load --scenario churn` against a real volna process for
//! `VOLNA_SOAK_SECONDS` (default 600: ten minutes) with 12 clients at a time joining, publishing,
//! watching, leaving, republishing and vanishing. It passes only when, once everyone has gone,
//! `/stats` is back to 0 sessions and participants, open descriptors and tasks are back to their
//! start, and resident memory is within 10 % of what it was after the first minute.
//! `scripts/test.sh` runs it on its own, after the rest of the suite.

use std::process::Command;

use serde_json::Value;

mod common;
use common::relay_bin;

#[test]
fn ten_minutes_of_churn_leave_nothing_behind() {
    let Some(relay) = relay_bin() else {
        panic!("no volna binary: cargo build --bin volna");
    };
    let seconds = std::env::var("VOLNA_SOAK_SECONDS").unwrap_or_else(|_| "600".into());
    let out = std::env::temp_dir().join(format!("volna-soak-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_volna-load"))
        .args([
            "--scenario",
            "churn",
            "--clients",
            "12",
            "--seconds",
            &seconds,
            "--quiet",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--relay-bin")
        .arg(&relay)
        .status()
        .expect("volna-load runs");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json written"),
    )
    .expect("report.json is JSON");
    let _ = std::fs::remove_dir_all(&out);
    let checks = report["checks"].as_array().expect("checks");
    assert!(checks.len() >= 6, "{report}");
    for c in checks {
        assert_eq!(c[1], true, "{}", c[0]);
    }
    let end = &report["end"];
    assert_eq!(
        (end["sessions"].as_u64(), end["participants"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(status.success(), "volna-load reported a failed check");
}
