//! Short networked load runs against a real volna process: broadcast 1×3 and meeting 3×3 must
//! deliver media with little loss and write a complete report.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

mod common;
use common::relay_bin;

fn run(scenario: &str, clients: &str, relay: &PathBuf) -> Value {
    run_with(scenario, clients, relay, &[])
}

fn run_with(scenario: &str, clients: &str, relay: &PathBuf, extra: &[&str]) -> Value {
    let out =
        std::env::temp_dir().join(format!("volna-load-test-{scenario}-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_volna-load"))
        .args(["--scenario", scenario, "--clients", clients])
        .args([
            "--seconds",
            "3",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--quiet",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--relay-bin")
        .arg(relay)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("volna-load runs");
    assert!(status.success(), "{scenario}: volna-load failed");
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json written");
    for f in ["report.md", "throughput.svg", "latency.svg"] {
        assert!(out.join(f).is_file(), "{scenario}: {f} missing");
    }
    let _ = std::fs::remove_dir_all(&out);
    serde_json::from_str(&text).expect("report.json is JSON")
}

fn check(scenario: &str, report: &Value) {
    check_target(scenario, report, "volna");
}

fn check_target(scenario: &str, report: &Value, target: &str) {
    let v = &report["targets"][target];
    for key in [
        "pkts_per_cpu_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_p999_ms",
        "loss_pct",
        "peak_rss_mb",
        "delivered_packets",
        "relay_cpu_s",
        "seconds",
        "clients",
        "baseline_p50_ms",
        "baseline_p99_ms",
        "baseline_p999_ms",
    ] {
        let x = v[key].as_f64();
        assert!(
            x.is_some_and(f64::is_finite),
            "{scenario}: {key} = {:?}",
            v[key]
        );
    }
    assert!(v["delivered_packets"].as_f64().unwrap() > 0.0, "{scenario}");
    assert!(v["loss_pct"].as_f64().unwrap() < 5.0, "{scenario}: {v}");
    assert_eq!(
        v["streams_received"], v["streams_expected"],
        "{scenario}: every subscribed stream delivers"
    );
}

#[test]
fn broadcast_and_meeting_deliver() {
    let Some(relay) = relay_bin() else {
        eprintln!(
            "SKIPPED: no volna binary in target/{{debug,release}}; run `cargo build --bins` first"
        );
        return;
    };
    // One after the other: both pin the relay and the load generator to the same cores.
    check("broadcast", &run("broadcast", "3", &relay));
    check("meeting", &run("meeting", "3", &relay));
}

/// The same short meeting side by side with Janus (Debian's package, in a namespace the load
/// generator makes): both deliver, and the report has both targets and their ratio.
#[test]
fn meeting_side_by_side_with_janus() {
    let Some(relay) = relay_bin() else {
        eprintln!("SKIPPED: no volna binary; run `cargo build --bins` first");
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the Janus side needs root (network namespace, veth)");
        return;
    }
    if !std::path::Path::new("/usr/bin/janus").exists() {
        eprintln!("SKIPPED: Debian's janus is not installed");
        return;
    }
    let report = run_with("meeting", "3", &relay, &["--compare", "janus"]);
    check_target("meeting", &report, "volna");
    check_target("meeting", &report, "janus");
    let ratio = report["ratio_pkts_per_cpu_s"].as_f64();
    assert!(ratio.is_some_and(|r| r.is_finite() && r > 0.0), "{report}");
}
