//! What every signalling endpoint shares: the state handlers get (the workers, the token
//! checker, limits), a connection's place among the listener's connections, plain-text error
//! responses, and which room names are valid.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::Auth;
use super::dispatch::Workers;

#[derive(Clone)]
pub struct AppState {
    pub workers: Workers,
    /// Where new sessions go (here, another node, or refused), and the drain state.
    pub cluster: crate::cluster::Cluster,
    pub auth: Auth,
    pub ws_max_message_bytes: usize,
    pub ws_messages_per_second: u32,
    /// A WebSocket that has not joined within this is closed.
    pub ws_join_timeout: std::time::Duration,
    /// Hex SHA-256 of the QUIC certificate, for clients to pin; `None` without QUIC.
    pub quic_cert_sha256: Option<String>,
    /// Webhook delivery figures (zero without webhooks).
    pub webhooks: std::sync::Arc<super::webhook::WebhookCounters>,
    /// The TURN server's URLs and credentials for clients, and its figures; `None` without it.
    pub ice_servers: Option<super::turn::IceServers>,
    pub turn_stats: Option<std::sync::Arc<std::sync::Mutex<crate::transport::turn::TurnStats>>>,
}

/// A connection's place among the `max_connections`, in each of its requests' extensions. A
/// request that upgrades takes it ([`ConnSlot::take`]) and keeps it while the upgraded connection
/// lives; otherwise it is given back when the HTTP connection closes.
#[derive(Clone)]
pub struct ConnSlot(std::sync::Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl ConnSlot {
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        ConnSlot(std::sync::Arc::new(std::sync::Mutex::new(Some(permit))))
    }

    pub fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.lock().ok()?.take()
    }
}

/// A plain-text error response with a numeric status.
pub fn error_response(status: u16, reason: &str) -> Response {
    error(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        reason,
    )
}

pub fn error(status: StatusCode, reason: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response()
}

pub use crate::session::valid_name;
