//! The Prometheus text exposition of a node's figures (/metrics): the counters and gauges of
//! /stats, the distributions the relay measures as histograms (in seconds or as ratios), the
//! transport mix, each worker's busy time, and webhook outcomes. docs/deploy.md (Metrics)
//! lists them; deploy/grafana/volna.json charts them.

use crate::transport::turn::TurnStats;
use std::fmt::Write;

use super::webhook::WebhookCounters;
use crate::core::room::histogram::{self, Histogram};
use crate::session::ShardStats;

/// One histogram in Prometheus' form; `per` stored units make one exported unit (1e6 µs a second).
fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram, bounds: &[u64], per: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, n) in h.cumulative(bounds) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", bound as f64 / per);
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum as f64 / per);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// The cluster's lines: membership, drain, and per relay link its RTT, bytes and datagrams
/// each way, and packets QUIC counted lost.
pub fn render_cluster(out: &mut String, cluster: &crate::cluster::Cluster) {
    let (nodes, store_up, draining, refused, links) = cluster.gauges();
    let gauges = [
        (
            "volna_draining",
            "1 while the node drains (no new sessions).",
            u64::from(draining),
        ),
        (
            "volna_cluster_nodes",
            "Live nodes of the cluster this node sees (0 without a cluster).",
            nodes as u64,
        ),
        (
            "volna_cluster_store_up",
            "1 while the cluster's Redis answers (0 without a cluster).",
            u64::from(store_up && cluster.clustered()),
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let name = "volna_relay_links_refused_total";
    let _ = writeln!(out, "# HELP {name} Relay-link connections refused: no or a wrong cluster secret, no handshake in time.\n# TYPE {name} counter\n{name} {refused}");
    let name = "volna_relay_link_rtt_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Round-trip time of each relay link.\n# TYPE {name} gauge"
    );
    for l in &links {
        let _ = writeln!(
            out,
            "{name}{{peer=\"{}\"}} {}",
            l.peer,
            l.rtt_ms as f64 / 1e3
        );
    }
    let counters = [
        (
            "volna_relay_link_bytes_total",
            "UDP bytes of each relay link, by direction.",
        ),
        (
            "volna_relay_link_datagrams_total",
            "Media datagrams (RTP and RTCP) of each relay link, by direction.",
        ),
    ];
    for (i, (name, help)) in counters.into_iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for l in &links {
            let (tx, rx) = if i == 0 {
                (l.sent_bytes, l.received_bytes)
            } else {
                (l.datagrams_sent, l.datagrams_received)
            };
            let _ = writeln!(out, "{name}{{peer=\"{}\",direction=\"sent\"}} {tx}", l.peer);
            let _ = writeln!(
                out,
                "{name}{{peer=\"{}\",direction=\"received\"}} {rx}",
                l.peer
            );
        }
    }
    let name = "volna_relay_link_lost_packets_total";
    let _ = writeln!(
        out,
        "# HELP {name} QUIC packets each relay link counted lost.\n# TYPE {name} counter"
    );
    for l in &links {
        let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", l.peer, l.lost_packets);
    }
    type Value = fn(&crate::cluster::links::LinkStats) -> u64;
    let per_link: [(&str, &str, Value); 3] = [
        (
            "volna_relay_link_streams",
            "Streams this node sends over each relay link now: audio and video tracks, each simulcast layer counted.",
            |l| l.streams_sent,
        ),
        (
            "volna_relay_link_layers_wanted",
            "Simulcast layers this node asks of each relay link's peer now.",
            |l| l.layers_wanted,
        ),
        (
            "volna_relay_link_budget_bps",
            "What each relay link's congestion controller lets it send, in bits per second.",
            |l| l.budget_bps,
        ),
    ];
    for (name, help, value) in per_link {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for l in &links {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", l.peer, value(l));
        }
    }
}

/// Sessions by transport: UDP, ICE-TCP, TURN (by the client's transport to it), QUIC.
pub fn transport_mix(s: &ShardStats) -> [(&'static str, usize); 6] {
    let [tu, tt, ts] = s.turn_sessions;
    let (quic, tcp) = (s.quic_sessions, s.tcp.in_use);
    [
        ("udp", s.sessions.saturating_sub(quic + tcp + tu + tt + ts)),
        ("tcp", tcp),
        ("turn_udp", tu),
        ("turn_tcp", tt),
        ("turn_tls", ts),
        ("quic", quic),
    ]
}

/// One metric family with one label: its HELP and TYPE lines, then a line per labelled value.
fn family(out: &mut String, name: &str, kind: &str, help: &str, label: &str, rows: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (l, v) in rows {
        let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
    }
}

/// The TURN server's counters (docs/deploy.md, Metrics).
pub fn render_turn(out: &mut String, t: &TurnStats) {
    let now = [t.allocations_udp, t.allocations_tcp, t.allocations_tls];
    let made = [t.allocated_udp, t.allocated_tcp, t.allocated_tls];
    let by_transport = |v: [u64; 3]| [("udp", v[0]), ("tcp", v[1]), ("tls", v[2])];
    family(
        out,
        "volna_turn_allocations",
        "gauge",
        "TURN allocations now, by the client's transport.",
        "transport",
        &by_transport(now.map(|n| n as u64)),
    );
    family(
        out,
        "volna_turn_allocations_total",
        "counter",
        "TURN allocations made, by the client's transport.",
        "transport",
        &by_transport(made),
    );
    family(
        out,
        "volna_turn_refused_total",
        "counter",
        "TURN requests refused and messages dropped, by reason.",
        "reason",
        &[
            ("bad_credentials", t.bad_credentials),
            ("expired_credentials", t.expired_credentials),
            ("stale_nonce", t.stale_nonces),
            ("forbidden_peer", t.forbidden_peers),
            ("over_quota", t.over_quota),
            ("at_capacity", t.at_capacity),
            ("bad_request", t.bad_requests),
            ("junk", t.junk),
            ("unanswered", t.unanswered),
        ],
    );
    family(
        out,
        "volna_turn_packets_total",
        "counter",
        "Packets through TURN allocations: to this node's media ports, to clients, dropped (no permission or channel).",
        "direction",
        &[
            ("to_peer", t.to_peers),
            ("to_client", t.to_clients),
            ("dropped", t.dropped),
        ],
    );
}

pub fn render(s: &ShardStats, webhooks: &WebhookCounters) -> String {
    let rows: [(&str, &str, &str, u64); 22] = [
        (
            "volna_rooms",
            "gauge",
            "Rooms with sessions or participants.",
            s.rooms as u64,
        ),
        (
            "volna_sessions",
            "gauge",
            "Media sessions (WebRTC and QUIC).",
            s.sessions as u64,
        ),
        (
            "volna_publishers",
            "gauge",
            "Publishing sessions.",
            s.publishers as u64,
        ),
        (
            "volna_tracks",
            "gauge",
            "Tracks of every publisher.",
            s.tracks as u64,
        ),
        (
            "volna_viewers",
            "gauge",
            "Receiving sessions.",
            s.viewers as u64,
        ),
        (
            "volna_participants",
            "gauge",
            "Room-protocol participants.",
            s.participants as u64,
        ),
        (
            "volna_datagrams_received_total",
            "counter",
            "UDP datagrams received on the media port.",
            s.datagrams_in,
        ),
        (
            "volna_junk_datagrams_total",
            "counter",
            "Datagrams dropped as malformed or unknown.",
            s.junk_datagrams,
        ),
        (
            "volna_forwarded_packets_total",
            "counter",
            "RTP packets forwarded to viewers.",
            s.forwarded_packets,
        ),
        (
            "volna_forwarded_bytes_total",
            "counter",
            "Bytes of RTP forwarded to viewers (before SRTP).",
            s.forwarded_bytes,
        ),
        (
            "volna_retransmitted_packets_total",
            "counter",
            "Packets resent to viewers from the retransmit cache.",
            s.retransmitted_packets,
        ),
        (
            "volna_relay_link_bytes_held_total",
            "counter",
            "Bytes of simulcast layers relay links did not carry because no viewer behind them wanted the layer (or the link had no room): what sending every layer would have added.",
            s.link_bytes_held,
        ),
        (
            "volna_dropped_packets_total",
            "counter",
            "RTP packets not forwarded (waiting for a keyframe, unknown stream).",
            s.dropped_packets,
        ),
        (
            "volna_keyframe_requests_total",
            "counter",
            "Keyframe requests sent to publishers.",
            s.keyframe_requests,
        ),
        (
            "volna_ice_restarts_total",
            "counter",
            "ICE restarts (WHIP/WHEP PATCH, restart_ice).",
            s.ice_restarts,
        ),
        (
            "volna_path_switches_total",
            "counter",
            "Sessions moved to a new address after an authenticated ICE check.",
            s.path_switches,
        ),
        (
            "volna_path_switches_refused_total",
            "counter",
            "Path moves refused because the session moved too often.",
            s.path_switches_refused,
        ),
        (
            "volna_consent_checks_total",
            "counter",
            "Consent checks sent to a session's new address after a NAT rebinding.",
            s.consent_checks,
        ),
        (
            "volna_sessions_closed_total",
            "counter",
            "Sessions ended.",
            s.sessions_closed,
        ),
        (
            "volna_viewer_nacks_total",
            "counter",
            "NACK messages from viewers (each asks for lost packets).",
            s.nacks_received,
        ),
        (
            "volna_viewer_plis_total",
            "counter",
            "Picture loss indications from viewers.",
            s.plis_received,
        ),
        (
            "volna_viewer_firs_total",
            "counter",
            "Full intra requests from viewers.",
            s.firs_received,
        ),
    ];
    let mut out = String::with_capacity(2048);
    for (name, kind, help, value) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    // Webhook deliveries (docs/api.md, Webhooks): one counter with the outcome as a label.
    family(
        &mut out,
        "volna_webhook_events_total",
        "counter",
        "Webhook events by outcome: queued (per URL), delivered, retries (failed tries), dropped (queue full), failed (given up).",
        "outcome",
        &webhooks.snapshot(),
    );
    // The transport mix: sessions by how their media travels, now and since start.
    let mix = transport_mix(s);
    let now: Vec<(&str, u64)> = mix.iter().map(|(t, n)| (*t, *n as u64)).collect();
    family(
        &mut out,
        "volna_sessions_by_transport",
        "gauge",
        "Media sessions by transport (turn_*: through this node's TURN server, by the client's way to it).",
        "transport",
        &now,
    );
    let connected: Vec<(&str, u64)> = mix
        .iter()
        .zip(s.sessions_connected)
        .map(|((t, _), n)| (*t, n))
        .collect();
    family(
        &mut out,
        "volna_sessions_connected_total",
        "counter",
        "Media sessions connected since start, by transport.",
        "transport",
        &connected,
    );
    let t = &s.tcp;
    family(
        &mut out,
        "volna_ice_tcp_connections_total",
        "counter",
        "ICE-TCP connections: accepted, and closed for a reason (refused at the limit, junk, no ICE in time).",
        "outcome",
        &[
            ("accepted", t.accepted),
            ("refused", t.refused),
            ("junk", t.junk),
            ("ice_timeout", t.ice_timeouts),
        ],
    );
    let name = "volna_ice_tcp_dropped_packets_total";
    let _ = writeln!(
        out,
        "# HELP {name} Packets for ICE-TCP clients dropped because they did not read them in time.\n# TYPE {name} counter\n{name} {}",
        t.dropped
    );
    // Each worker's load: rate() of this is the share of one core it keeps busy.
    let name = "volna_worker_busy_seconds_total";
    let _ = writeln!(
        out,
        "# HELP {name} Time each media worker spent working rather than waiting.\n# TYPE {name} counter"
    );
    let mut workers = s.workers.clone();
    workers.sort_by_key(|w| w.worker);
    for w in workers {
        let _ = writeln!(
            out,
            "{name}{{worker=\"{}\"}} {}",
            w.worker,
            w.busy_us as f64 / 1e6
        );
    }
    let us = 1e6;
    histogram(
        &mut out,
        "volna_join_seconds",
        "Time from a viewer session's signalling request to the first media packet sent to it.",
        &s.join_us,
        histogram::JOIN_US,
        us,
    );
    histogram(
        &mut out,
        "volna_viewer_rtt_seconds",
        "Round-trip time to viewers, from their receiver reports.",
        &s.rtt_us,
        histogram::RTT_US,
        us,
    );
    histogram(
        &mut out,
        "volna_viewer_jitter_seconds",
        "Interarrival jitter viewers report, per stream and report.",
        &s.jitter_us,
        histogram::JITTER_US,
        us,
    );
    histogram(
        &mut out,
        "volna_viewer_loss_ratio",
        "Loss viewers report since their previous report, per stream and report.",
        &s.loss_per_mille,
        histogram::LOSS_PER_MILLE,
        1e3,
    );
    out
}
