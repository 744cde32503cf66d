//! The cluster at the HTTP edge: `GET /health/ready` (503 while draining, for load balancers;
//! `/health` stays the liveness check), `GET /cluster` (this node, the live nodes and their
//! load, where this node's rooms live), `POST /admin/drain`, and what a new WHIP or WHEP
//! session gets when this node does not take it: `307` to another node (RFC 9725 §4.5 lets
//! clients follow redirects) or `503` with a reason and `Retry-After`.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tracing::info;

use super::http::admin_refused;
use super::state::{error, AppState};
use crate::cluster::Placement;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health/ready", get(ready))
        .route("/cluster", get(cluster))
        .route("/admin/drain", post(drain))
}

async fn ready(State(st): State<AppState>) -> Response {
    if st.cluster.draining() {
        error(StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        "ready\n".into_response()
    }
}

async fn cluster(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(res) = admin_refused(&st, &headers) {
        return res;
    }
    let v = st.cluster.snapshot(std::time::Instant::now());
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into()),
    )
        .into_response()
}

async fn drain(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(res) = admin_refused(&st, &headers) {
        return res;
    }
    if st.cluster.drain() {
        info!("drain requested over HTTP: no new sessions; exiting when calls end");
    }
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "draining\n",
    )
        .into_response()
}

/// `None` when this node takes a new session for `uri`; otherwise the response that sends
/// the client elsewhere or refuses it.
pub fn elsewhere(st: &AppState, uri: &Uri) -> Option<Response> {
    match st.cluster.place() {
        Placement::Here => None,
        Placement::Elsewhere(node) => {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let location = format!("{}{path}", node.http_url());
            info!(to = %node.id, %location, "new session redirected");
            Some(
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [
                        (header::LOCATION, location),
                        (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                    ],
                    format!(
                        "this node does not take new sessions now; use node {}\n",
                        node.id
                    ),
                )
                    .into_response(),
            )
        }
        Placement::Refused(status, reason, message) => {
            let mut res = error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                &format!("{reason}: {message}"),
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
            Some(res)
        }
    }
}
