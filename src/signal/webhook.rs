//! Webhooks: room events (`session::events`) POSTed as JSON to every configured URL, each with
//! an `id` and a `created_at` time and signed with HMAC-SHA256 of the body
//! (`X-Volna-Signature: sha256=<hex>`). Workers hand events over without waiting
//! ([`Hooks::offer`]); each URL has its own bounded queue and one delivery at a time, so its
//! receiver gets events in order. A POST that gets no 2xx within the timeout is tried again after
//! 0.5 s, 1 s, 2 s… (at most 30 s apart), `max_attempts` tries in all: delivery is at least once,
//! and receivers drop repeats by `id`. Events a full queue cannot take, and events given up, are
//! counted (/stats, /metrics) and logged at 1, 2, 4, 8… of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::RngCore;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::warn;

use crate::config::WebhooksConfig;
use crate::session::events::RoomEvent;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Figures of every URL together, since the start.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Events taken into a URL's queue.
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    /// POSTs that failed and were tried again.
    pub retries: AtomicU64,
    /// Events a full queue could not take.
    pub dropped: AtomicU64,
    /// Events given up after `max_attempts` tries.
    pub failed: AtomicU64,
}

impl WebhookCounters {
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("queued", get(&self.queued)),
            ("delivered", get(&self.delivered)),
            ("retries", get(&self.retries)),
            ("dropped", get(&self.dropped)),
            ("failed", get(&self.failed)),
        ]
    }
}

/// One event as sent: the body and its signature, the same to every URL.
struct Delivery {
    id: String,
    event: &'static str,
    body: Bytes,
    signature: String,
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    /// Milliseconds since the Unix epoch.
    created_at: u64,
    #[serde(flatten)]
    event: &'a RoomEvent,
}

/// The handle workers offer events to.
#[derive(Clone)]
pub struct Hooks {
    queues: Arc<[mpsc::Sender<Arc<Delivery>>]>,
    key: Arc<ring::hmac::Key>,
    counters: Arc<WebhookCounters>,
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`: what `X-Volna-Signature` carries.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), body)
}

fn sign(key: &ring::hmac::Key, body: &[u8]) -> String {
    format!("sha256={}", hex(ring::hmac::sign(key, body).as_ref()))
}

/// Lower-case hex of `bytes`: signatures and event ids.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn event_name(e: &RoomEvent) -> &'static str {
    match e {
        RoomEvent::RoomStarted { .. } => "room_started",
        RoomEvent::RoomFinished { .. } => "room_finished",
        RoomEvent::ParticipantJoined { .. } => "participant_joined",
        RoomEvent::ParticipantLeft { .. } => "participant_left",
        RoomEvent::TrackPublished { .. } => "track_published",
        RoomEvent::TrackUnpublished { .. } => "track_unpublished",
    }
}

impl Hooks {
    /// Starts one delivery task per URL on the current runtime; `None` without URLs.
    pub fn start(config: &WebhooksConfig, counters: Arc<WebhookCounters>) -> Option<Hooks> {
        if config.urls.is_empty() {
            return None;
        }
        let mut queues = Vec::new();
        for url in &config.urls {
            let Ok(uri) = url.parse::<Uri>() else {
                continue;
            };
            let (tx, rx) = mpsc::channel(config.queue);
            queues.push(tx);
            tokio::spawn(deliver(uri, rx, config.clone(), counters.clone()));
        }
        Some(Hooks {
            queues: queues.into(),
            key: Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                config.secret.as_bytes(),
            )),
            counters,
        })
    }

    /// Queues an event for every URL; never waits.
    pub fn offer(&self, event: &RoomEvent) {
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        let id = hex(&id);
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let body = match serde_json::to_vec(&Envelope {
            id: &id,
            created_at,
            event,
        }) {
            Ok(b) => Bytes::from(b),
            Err(_) => return,
        };
        let d = Arc::new(Delivery {
            signature: sign(&self.key, &body),
            id,
            event: event_name(event),
            body,
        });
        for q in self.queues.iter() {
            match q.try_send(d.clone()) {
                Ok(()) => {
                    self.counters.queued.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        warn!(
                            dropped = n,
                            event = d.event,
                            "webhook queue full: event dropped"
                        );
                    }
                }
            }
        }
    }
}

/// Delivers one URL's events in order, each until a 2xx or `max_attempts` tries.
async fn deliver(
    url: Uri,
    mut rx: mpsc::Receiver<Arc<Delivery>>,
    config: WebhooksConfig,
    counters: Arc<WebhookCounters>,
) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let timeout = Duration::from_millis(config.timeout_ms);
    while let Some(d) = rx.recv().await {
        let mut wait = FIRST_RETRY;
        for attempt in 1..=config.max_attempts {
            let req = Request::post(url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header("x-volna-signature", d.signature.as_str())
                .header("x-volna-event", d.event)
                .header("x-volna-delivery", d.id.as_str())
                .header("x-volna-attempt", attempt)
                .body(Full::new(d.body.clone()));
            let Ok(req) = req else {
                break;
            };
            let outcome = match tokio::time::timeout(timeout, client.request(req)).await {
                Ok(Ok(res)) if res.status().is_success() => Ok(()),
                Ok(Ok(res)) => Err(format!("status {}", res.status().as_u16())),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", config.timeout_ms)),
            };
            let Err(why) = outcome else {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                break;
            };
            if attempt == config.max_attempts {
                let n = counters.failed.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(%url, event = d.event, id = %d.id, error = %why, failed = n, "webhook given up");
                }
                break;
            }
            let n = counters.retries.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(%url, event = d.event, error = %why, retries = n, "webhook failed, trying again");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RETRY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2: HMAC-SHA256 with key "Jefe".
    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn every_event_has_its_name_in_the_body() {
        let e = RoomEvent::RoomStarted { room: "r".into() };
        let body = serde_json::to_value(Envelope {
            id: "ab",
            created_at: 5,
            event: &e,
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"id": "ab", "created_at": 5, "event": "room_started", "room": "r"})
        );
        assert_eq!(event_name(&e), body["event"]);
    }
}
