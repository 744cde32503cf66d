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
        .args(["--seconds", "3", "--rounds", "1", "--quiet"])
        // A second of warm-up unless the caller says otherwise.
        .args(if extra.contains(&"--warmup") {
            &[][..]
        } else {
            &["--warmup", "1"][..]
        })
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

/// The meeting over UDP and again with every client over ICE-TCP (RFC 6544: the relay's
/// passive candidate, RFC 4571 framing), side by side: both deliver.
#[test]
fn a_meeting_over_ice_tcp_next_to_udp() {
    let Some(relay) = relay_bin() else {
        eprintln!("SKIPPED: no volna binary; run `cargo build --bins` first");
        return;
    };
    let report = run_with("meeting", "3", &relay, &["--compare", "volna-tcp"]);
    check_target("meeting", &report, "volna");
    check_target("meeting", &report, "volna-tcp");
}

/// A simulcast meeting on one node and on two (Redis and two volna processes, participants
/// split between them): both deliver every stream; the cluster's report has its relay links'
/// bytes, and the bytes of layers held back because no subscriber behind a link wanted them
/// (the odd-numbered participants, all on node 2, take the low layer: the full layers of node
/// 1's publishers do not cross).
#[test]
fn a_simulcast_meeting_across_two_nodes_next_to_one() {
    let Some(relay) = relay_bin() else {
        eprintln!("SKIPPED: no volna binary; run `cargo build --bins` first");
        return;
    };
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: Debian's redis-server is not installed (scripts/test.sh installs it)");
        return;
    }
    let report = run_with(
        "meeting",
        "4",
        &relay,
        // Subscribers settle on their layers (a switch mid-window reads as loss) in the warm-up.
        &[
            "--compare",
            "volna-cluster",
            "--simulcast",
            "--video-kbps",
            "400",
            "--warmup",
            "3",
        ],
    );
    check_target("meeting", &report, "volna");
    check_target("meeting", &report, "volna-cluster");
    let c = &report["targets"]["volna-cluster"];
    let (sent, held) = (
        c["link_sent_bytes"].as_f64().unwrap_or(0.0),
        c["link_held_bytes"].as_f64().unwrap_or(0.0),
    );
    assert!(sent > 0.0, "media crossed the links: {c}");
    // Two publishers on node 1, their full layer (400 kbps) held back for 3 s: about 300 kB.
    assert!(held > 100_000.0, "full layers held back: {held} bytes: {c}");
    assert!(
        report["targets"]["volna"]["link_sent_bytes"].is_null(),
        "one node has no links"
    );
}
