//! Webhooks against a real local HTTP receiver: an in-process relay with room participants over
//! WebSocket and a WHIP publisher; the receiver checks every signature (HMAC-SHA256 computed
//! here, with ring), answers its first POSTs with 500 and drops repeats by id. Then a receiver
//! that is down: the bounded queue drops and counts, and calls go on.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use volna::config::Config;

mod common;
use common::ws::*;

const SECRET: &str = "webhook-test-secret-0123456789";

#[derive(Default)]
struct Received {
    /// Requests so far, and how many of the first get a 500.
    requests: usize,
    fail_first: usize,
    /// Events by first arrival, and the ids seen.
    events: Vec<Value>,
    ids: HashSet<String>,
    repeats: usize,
    /// Ids of the POSTs answered with 500.
    refused: Vec<String>,
    bad_signatures: usize,
}

type Shared = Arc<Mutex<Received>>;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

async fn receive(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut r = r.lock().unwrap();
    r.requests += 1;
    let sig = headers
        .get("x-volna-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .map(hex)
        .unwrap_or_default();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    if ring::hmac::verify(&key, &body, &sig).is_err() {
        r.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(
        headers
            .get("x-volna-delivery")
            .and_then(|h| h.to_str().ok()),
        Some(id.as_str())
    );
    if r.requests <= r.fail_first {
        r.refused.push(id);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if r.ids.insert(id) {
        r.events.push(v);
    } else {
        r.repeats += 1;
    }
    StatusCode::NO_CONTENT
}

async fn receiver(fail_first: usize) -> (SocketAddr, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Received {
        fail_first,
        ..Received::default()
    }));
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, shared)
}

async fn start(url: String, tweak: impl FnOnce(&mut Config)) -> SocketAddr {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    config.webhooks.urls = vec![url];
    config.webhooks.secret = SECRET.into();
    config.webhooks.timeout_ms = 2000;
    tweak(&mut config);
    volna::server::start(&config).await.unwrap().http_addr
}

/// Waits up to 10 s for `n` distinct events.
async fn events(r: &Shared, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        if r.lock().unwrap().events.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.lock().unwrap().events.clone()
}

/// An event as `name room who`, for comparing sequences.
fn line(e: &Value) -> String {
    let who = e["participant"]["identity"].as_str().unwrap_or("");
    let track = e["track"]["kind"].as_str().unwrap_or("");
    let parts = [
        e["event"].as_str().unwrap(),
        e["room"].as_str().unwrap(),
        who,
        track,
    ];
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn events_arrive_signed_in_order_once_each_after_a_receiver_error() {
    let (raddr, r) = receiver(2).await;
    let addr = start(format!("http://{raddr}/hooks"), |_| {}).await;

    let mut ann = connect(addr, "").await;
    let joined = join(&mut ann, "hooks", "ann", None).await;
    let ann_id = joined["participant"]["id"].as_str().unwrap().to_owned();
    send(&mut ann, json!({"type": "publish", "id": 2, "sdp": OFFER})).await;
    expect_type(&mut ann, "publish_answer").await;
    let (status, location, raw) = http(addr, "POST", "/whip/hooks", OFFER).await;
    assert_eq!(status, 201, "{raw}");
    let whip = expect_type(&mut ann, "participant_joined").await["participant"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, _) = http(addr, "DELETE", &location, "").await;
    assert_eq!(status, 200);
    expect_type(&mut ann, "participant_left").await;
    send(&mut ann, json!({"type": "leave", "id": 3})).await;

    let want = [
        "room_started hooks",
        "participant_joined hooks ann",
        "track_published hooks audio",
        "track_published hooks video",
        "participant_joined hooks whip",
        "track_published hooks audio",
        "track_published hooks video",
        "track_unpublished hooks",
        "track_unpublished hooks",
        "participant_left hooks whip",
        "track_unpublished hooks",
        "track_unpublished hooks",
        "participant_left hooks ann",
        "room_finished hooks",
    ];
    let got_all = events(&r, want.len()).await;
    let lines_all: Vec<String> = got_all.iter().map(line).collect();
    assert_eq!(lines_all, want);
    // Tracks name their owner; each event has an id and a time.
    let owners: Vec<&str> = got_all
        .iter()
        .filter(|e| e["event"].as_str().unwrap().starts_with("track_"))
        .map(|e| e["participant"].as_str().unwrap())
        .collect();
    assert_eq!(
        owners,
        [&ann_id, &ann_id, &whip, &whip, &whip, &whip, &ann_id, &ann_id]
    );
    assert!(got_all[2]["track"]["id"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{ann_id}-")));
    assert_eq!(got_all[2]["track"]["codec"], "opus");
    for e in &got_all {
        assert_eq!(e["id"].as_str().map(str::len), Some(32), "{e}");
        assert!(e["created_at"].as_u64().unwrap() > 1_700_000_000_000, "{e}");
    }
    // The two refused POSTs were of the first event, tried again with the same id; nothing
    // came twice after a 2xx.
    {
        let rec = r.lock().unwrap();
        assert_eq!(rec.bad_signatures, 0);
        assert_eq!(rec.refused.len(), 2);
        assert!(
            rec.refused.iter().all(|id| *id == got_all[0]["id"]),
            "{:?}",
            rec.refused
        );
        assert_eq!(rec.repeats, 0);
    }
    let (_, _, stats) = http(addr, "GET", "/stats", "").await;
    let body: Value = serde_json::from_str(stats.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body["webhooks"],
        json!({"queued": 14, "delivered": 14, "retries": 2, "dropped": 0, "failed": 0})
    );
    let (_, _, metrics) = http(addr, "GET", "/metrics", "").await;
    assert!(
        metrics.contains("volna_webhook_events_total{outcome=\"retries\"} 2"),
        "{metrics}"
    );
}

/// A receiver that is down: each event is tried `max_attempts` times and given up; what the
/// bounded queue cannot hold is dropped and counted; participants notice nothing.
#[tokio::test]
async fn a_receiver_that_is_down_costs_bounded_memory_and_no_calls() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", closed.local_addr().unwrap());
    drop(closed);
    let addr = start(url, |c| {
        c.webhooks.queue = 2;
        c.webhooks.max_attempts = 2;
    })
    .await;
    for i in 0..6 {
        let mut ws = connect(addr, "").await;
        let j = join(&mut ws, "down", &format!("p{i}"), None).await;
        assert_eq!(j["type"], "joined", "{j}");
        send(&mut ws, json!({"type": "leave", "id": 2})).await;
        assert_eq!(recv(&mut ws).await["type"], "ok");
    }
    let mut figures = json!(null);
    for _ in 0..50 {
        let (_, _, stats) = http(addr, "GET", "/stats", "").await;
        let body: Value = serde_json::from_str(stats.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        figures = body["webhooks"].clone();
        let n = |k: &str| figures[k].as_u64().unwrap();
        // 24 events (each participant starts and finishes the room): each dropped, or queued
        // and given up after its two tries.
        if n("dropped") + n("failed") == 24 {
            assert!(n("dropped") > 0 && n("failed") > 0, "{figures}");
            assert_eq!(n("queued"), n("failed"), "{figures}");
            assert_eq!(
                n("retries"),
                n("failed"),
                "one retry per event given up: {figures}"
            );
            assert_eq!(n("delivered"), 0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("webhook figures never added up: {figures}");
}

/// Churn: a participant whose socket drops and who comes back (`resume`) is not reported as
/// leaving; one who does not come back leaves when its grace ends; the room finishes after both.
#[tokio::test]
async fn a_resumed_participant_stays_and_a_lost_one_leaves_after_its_grace() {
    let (raddr, r) = receiver(0).await;
    let addr = start(format!("http://{raddr}/hooks"), |c| {
        c.media.reconnect_secs = 1
    })
    .await;
    let mut ann = connect(addr, "").await;
    join(&mut ann, "churn", "ann", None).await;
    let mut ben = connect(addr, "").await;
    let joined = join(&mut ben, "churn", "ben", None).await;
    let resume = joined["resume"].as_str().unwrap().to_owned();
    drop(ben);
    expect_type(&mut ann, "participant_reconnecting").await;
    let mut ben = connect(addr, "").await;
    send(
        &mut ben,
        json!({"type": "join", "v": 1, "room": "churn", "name": "ben", "id": 1, "resume": resume}),
    )
    .await;
    assert_eq!(recv(&mut ben).await["resumed"], true);
    drop(ann);
    expect_type(&mut ben, "participant_left").await;
    send(&mut ben, json!({"type": "leave", "id": 2})).await;
    let want = [
        "room_started churn",
        "participant_joined churn ann",
        "participant_joined churn ben",
        "participant_left churn ann",
        "participant_left churn ben",
        "room_finished churn",
    ];
    let got: Vec<String> = events(&r, want.len()).await.iter().map(line).collect();
    assert_eq!(got, want);
}
