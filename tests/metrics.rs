//! /metrics as Prometheus reads it, against an in-process relay: every family has its HELP and
//! TYPE, histograms their cumulative buckets, and every series the Grafana dashboard in
//! deploy/grafana queries is one the relay serves.

use std::collections::BTreeSet;

use volna::config::Config;

mod common;
use common::ws::http;

#[tokio::test]
async fn the_dashboard_reads_only_what_metrics_serves() {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    config.media.workers = 2;
    let addr = volna::server::start(&config).await.unwrap().http_addr;
    let (status, _, raw) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let body = raw.split("\r\n\r\n").nth(1).unwrap();

    // Series names, and the families their TYPE lines declare.
    let mut series = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                body.contains(&format!("# HELP {name} ")),
                "{name} has a HELP line"
            );
            families.insert(name.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            series.insert(name.to_owned());
        }
    }
    for s in &series {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|x| s.strip_suffix(x).filter(|f| families.contains(*f)))
            .unwrap_or(s);
        assert!(families.contains(family), "{s} has a TYPE line");
    }
    // A histogram: cumulative buckets ending in +Inf, with its sum and count; one busy-time
    // series per worker.
    for h in [
        "volna_join_seconds",
        "volna_viewer_rtt_seconds",
        "volna_viewer_jitter_seconds",
        "volna_viewer_loss_ratio",
    ] {
        assert!(body.contains(&format!("# TYPE {h} histogram\n")), "{h}");
        assert!(
            body.contains(&format!("{h}_bucket{{le=\"+Inf\"}} 0\n")),
            "{h}"
        );
        assert!(body.contains(&format!("{h}_count 0\n")), "{h}");
    }
    assert!(
        body.contains("volna_join_seconds_bucket{le=\"0.1\"} 0\n"),
        "{body}"
    );
    for w in 0..2 {
        assert!(
            body.contains(&format!(
                "volna_worker_busy_seconds_total{{worker=\"{w}\"}} "
            )),
            "{body}"
        );
    }
    assert!(body.contains("volna_sessions_by_transport{transport=\"quic\"} 0\n"));
    assert!(body.contains("volna_sessions_by_transport{transport=\"tcp\"} 0\n"));
    // A single node: no cluster, not draining.
    for line in [
        "volna_draining 0\n",
        "volna_cluster_nodes 0\n",
        "volna_cluster_store_up 0\n",
    ] {
        assert!(body.contains(line), "{line}");
    }
    assert!(body.contains("volna_ice_tcp_connections_total{outcome=\"junk\"} 0\n"));

    // Every series the dashboard queries.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/volna.json"
    ))
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queried = BTreeSet::new();
    for panel in json["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("volna_") {
                    queried.insert(word.to_owned());
                }
            }
        }
    }
    assert!(queried.len() >= 20, "{queried:?}");
    let missing: Vec<_> = queried.iter().filter(|q| !series.contains(*q)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries series /metrics lacks: {missing:?}"
    );
}
