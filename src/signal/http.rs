//! WHIP (RFC 9725) and WHEP over HTTP/1.1, plus /health, /stats and /metrics. Every response
//! carries CORS headers so pages from other origins can publish and watch. With auth on, a
//! session's `DELETE` and `PATCH` need a token of the identity that created it (or an admin
//! token), and /stats and /metrics an admin token; 401 replies carry `WWW-Authenticate`.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use tracing::{info, warn};

use super::auth::{bearer, unix_now, Access, AuthError};
use crate::session::sdp::Offer;
use crate::session::sdpfrag;
use axum::response::Html;

/// The demo page: join a room with camera and microphone (docs/protocol.md is its contract).
const DEMO_HTML: &str = include_str!("../../web/index.html");
const DEMO_JS: &str = include_str!("../../web/app.js");
const FAVICON: &str = include_str!("../../web/favicon.svg");
use super::dispatch::Command;
use super::state::{error, error_response, valid_name, AppState};
use crate::session::connection::Role;
use crate::session::SessionError;

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/", get(|| async { Html(DEMO_HTML) }))
        .route(
            "/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    DEMO_JS,
                )
            }),
        )
        .route(
            "/favicon.svg",
            get(|| async { ([(header::CONTENT_TYPE, "image/svg+xml")], FAVICON) }),
        )
        .route(
            "/favicon.ico",
            get(|| async { Redirect::permanent("/favicon.svg") }),
        )
        .route("/rtc", get(super::ws::rtc))
        .nest("/api/v1", super::api::router())
        .merge(super::cluster::router())
        .route("/health", get(|| async { "ok\n" }))
        .route("/quic/cert-hash", get(cert_hash))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/whip/{room}", post(whip).options(endpoint_options))
        .route("/whep/{room}", post(whep_latest).options(endpoint_options))
        .route(
            "/whep/{room}/{publisher}",
            post(whep_chosen).options(chosen_options),
        )
        .route(
            "/whip/{room}/session/{resource}",
            axum::routing::delete(whip_delete)
                .patch(whip_patch)
                .options(preflight),
        )
        .route(
            "/whep/{room}/session/{resource}",
            axum::routing::delete(whep_delete)
                .patch(whep_patch)
                .options(preflight),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

async fn cors(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, PATCH, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization, If-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Location, Link, ETag, Accept-Post, Accept-Patch, X-Volna-Publisher",
        ),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    res
}

async fn preflight() -> Response {
    preflight_response()
}

fn preflight_response() -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert("accept-post", HeaderValue::from_static("application/sdp"));
    h.insert(
        "accept-patch",
        HeaderValue::from_static(sdpfrag::CONTENT_TYPE),
    );
    res
}

/// `OPTIONS` of a WHIP or WHEP endpoint: the preflight, and the ICE servers as `Link` headers
/// for a caller the token admits to the room (anyone in dev mode), so a client can set them
/// before its offer (the 201 carries them too, RFC 9725 §4.6).
async fn endpoint_options(
    State(st): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    ext: axum::http::Extensions,
) -> Response {
    options_with_ice(&st, &room, &headers, &ext)
}

async fn chosen_options(
    State(st): State<AppState>,
    Path((room, _)): Path<(String, String)>,
    headers: HeaderMap,
    ext: axum::http::Extensions,
) -> Response {
    options_with_ice(&st, &room, &headers, &ext)
}

fn options_with_ice(
    st: &AppState,
    room: &str,
    headers: &HeaderMap,
    ext: &axum::http::Extensions,
) -> Response {
    let mut res = preflight_response();
    if let Ok(access) = caller(st, headers, room) {
        append_links(&mut res, &ice_links(st, access.identity.as_deref(), ext));
    }
    res
}

/// Adds each of `links` as a `Link` header of its own.
fn append_links(res: &mut Response, links: &[String]) {
    for l in links {
        if let Ok(v) = HeaderValue::from_str(l) {
            res.headers_mut().append(header::LINK, v);
        }
    }
}

/// `PATCH` of a WHIP/WHEP session (RFC 9725 §4.3) with an `application/trickle-ice-sdpfrag`
/// body: new ICE credentials restart ICE (200 with volna's new credentials and candidate);
/// the same credentials with candidates are trickle ICE, which an ICE-lite server does not need
/// (204).
async fn patch(
    st: AppState,
    role: Role,
    room: String,
    resource: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match caller(&st, &headers, &room) {
        Ok(a) => a,
        Err(res) => return *res,
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = ct.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case(sdpfrag::CONTENT_TYPE) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Content-Type must be {}, got {ct:?}", sdpfrag::CONTENT_TYPE),
        );
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the fragment is not UTF-8");
    };
    let frag = match sdpfrag::Fragment::parse(text) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad sdpfrag: {e}")),
    };
    let worker = st.workers.for_room(&room);
    let (ufrag, pwd) = (frag.ufrag.clone(), frag.pwd.clone());
    match worker
        .call(|reply| Command::PatchIce {
            role,
            room,
            resource,
            ufrag,
            pwd,
            caller,
            reply,
        })
        .await
    {
        Some(Ok(None)) => StatusCode::NO_CONTENT.into_response(),
        Some(Ok(Some(r))) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, sdpfrag::CONTENT_TYPE),
                (header::ETAG, &format!("\"{}\"", r.ufrag)),
            ],
            sdpfrag::restart_reply(
                &r.ufrag,
                &r.pwd,
                frag.mid.as_deref(),
                &r.candidates,
                r.tcp_port,
            ),
        )
            .into_response(),
        Some(Err(e)) => shard_error(e),
        None => worker_gone(),
    }
}

async fn whip_patch(
    State(st): State<AppState>,
    Path((room, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch(st, Role::Publisher, room, resource, headers, body).await
}

async fn whep_patch(
    State(st): State<AppState>,
    Path((room, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch(st, Role::Viewer, room, resource, headers, body).await
}

/// The reply to a token that does not pass: 401 (with `WWW-Authenticate`, RFC 6750 §3) or 403.
fn auth_refusal(e: &AuthError) -> Response {
    let mut res = error_response(e.status(), &e.to_string());
    if e.status() == 401 {
        let value = if matches!(e, AuthError::Missing) {
            HeaderValue::from_static("Bearer realm=\"volna\"")
        } else {
            HeaderValue::from_static("Bearer realm=\"volna\", error=\"invalid_token\"")
        };
        res.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    res
}

/// The caller of a session's `DELETE` or `PATCH` (any valid token for the room; the worker
/// checks that it is the session's creator or an admin).
fn caller(st: &AppState, headers: &HeaderMap, room: &str) -> Result<Access, Box<Response>> {
    st.auth
        .check(bearer(headers), Some(room), unix_now())
        .map_err(|e| Box::new(auth_refusal(&e)))
}

/// Checks the bearer token of a WHIP (`publish`) or WHEP request for `room`: the caller, or the
/// response to send when it does not pass.
fn admitted(
    st: &AppState,
    headers: &HeaderMap,
    room: &str,
    publish: bool,
) -> Result<Access, Box<Response>> {
    let access = caller(st, headers, room)?;
    let granted = if publish {
        access.grants.publish
    } else {
        access.grants.subscribe
    };
    if granted {
        return Ok(access);
    }
    let what = if publish { "publishing" } else { "subscribing" };
    Err(Box::new(error_response(
        403,
        &format!("token does not allow {what}"),
    )))
}

/// /stats and /metrics: open in dev mode, an admin token otherwise.
pub(super) fn admin_refused(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    st.auth
        .check_admin(bearer(headers), unix_now())
        .err()
        .map(|e| auth_refusal(&e))
}

/// The TURN server's latest figures, when it runs.
fn turn_stats(st: &AppState) -> Option<crate::transport::turn::TurnStats> {
    st.turn_stats
        .as_ref()
        .and_then(|m| m.lock().ok().map(|t| *t))
}

/// A session-layer refusal as an HTTP response: its status, its text.
fn shard_error(e: SessionError) -> Response {
    error_response(e.code, &e.message)
}

/// Checks the media type and decodes the offer; the error is the response to send.
fn read_offer(headers: &HeaderMap, body: &Bytes) -> Result<Offer, Box<Response>> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = ct.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/sdp") {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Content-Type must be application/sdp, got {ct:?}"),
        )));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| Box::new(error(StatusCode::BAD_REQUEST, "SDP is not UTF-8")))?;
    Offer::parse(text)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &format!("bad offer: {e}"))))
}

/// The TURN server's ICE servers as `Link` headers (RFC 9725 §4.6), with credentials for the
/// token's identity (the client's IP without one).
fn ice_links(st: &AppState, identity: Option<&str>, ext: &axum::http::Extensions) -> Vec<String> {
    let Some(ice) = &st.ice_servers else {
        return Vec::new();
    };
    ice.link_headers(&turn_identity(identity, ext), unix_now())
}

/// Who TURN credentials are for: a token's identity, else the client's IP (each counts
/// against `turn.max_allocations_per_identity`).
pub(super) fn turn_identity(identity: Option<&str>, ext: &axum::http::Extensions) -> String {
    match identity {
        Some(i) => format!("id:{i}"),
        None => ext
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or_else(|| "anonymous".to_owned(), |c| format!("ip:{}", c.0.ip())),
    }
}

fn created(location: String, answer: String, publisher: &str, links: &[String]) -> Response {
    let mut res = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/sdp")],
        answer,
    )
        .into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(publisher) {
        h.insert("x-volna-publisher", v);
    }
    append_links(&mut res, links);
    res
}

fn worker_gone() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "media worker is not running",
    )
}

async fn whip(
    State(st): State<AppState>,
    Path(room): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    body: Bytes,
) -> Response {
    if !valid_name(&room) {
        return error(
            StatusCode::BAD_REQUEST,
            "room names are 1-64 characters of A-Z a-z 0-9 - _ .",
        );
    }
    let access = match admitted(&st, &headers, &room, true) {
        Ok(a) => a,
        Err(res) => return *res,
    };
    if let Some(res) = super::cluster::elsewhere(&st, &uri) {
        return res;
    }
    let offer = match read_offer(&headers, &body) {
        Ok(o) => o,
        Err(res) => {
            warn!(room, "WHIP offer refused");
            return *res;
        }
    };
    match st
        .workers
        .for_room(&room)
        .call(|reply| Command::Publish {
            room: room.clone(),
            offer: Box::new(offer),
            owner: access.identity.clone(),
            reply,
        })
        .await
    {
        Some(Ok(c)) => {
            info!(room, publisher = %c.public_id, "WHIP session created");
            created(
                format!("/whip/{room}/session/{}", c.resource),
                c.answer,
                &c.public_id,
                &ice_links(&st, access.identity.as_deref(), &ext),
            )
        }
        Some(Err(e)) => shard_error(e),
        None => worker_gone(),
    }
}

async fn whep(
    st: AppState,
    room: String,
    publisher: Option<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    body: Bytes,
) -> Response {
    if !valid_name(&room) || publisher.as_deref().is_some_and(|p| !valid_name(p)) {
        return error(
            StatusCode::BAD_REQUEST,
            "room and publisher names are 1-64 characters of A-Z a-z 0-9 - _ .",
        );
    }
    let access = match admitted(&st, &headers, &room, false) {
        Ok(a) => a,
        Err(res) => return *res,
    };
    if let Some(res) = super::cluster::elsewhere(&st, &uri) {
        return res;
    }
    let offer = match read_offer(&headers, &body) {
        Ok(o) => o,
        Err(res) => return *res,
    };
    // On a cluster node, a publisher on another node is relayed here once asked for: wait a
    // few seconds for it (docs/cluster.md).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut wanted = false;
    let viewed = loop {
        let r = st
            .workers
            .for_room(&room)
            .call(|reply| Command::View {
                room: room.clone(),
                publisher: publisher.clone(),
                offer: Box::new(offer.clone()),
                owner: access.identity.clone(),
                reply,
            })
            .await;
        match r {
            Some(Err(e))
                if e.code == 404
                    && st.cluster.clustered()
                    && tokio::time::Instant::now() < deadline =>
            {
                if !wanted {
                    st.cluster.want(&room, std::time::Duration::from_secs(15));
                    wanted = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            r => break r,
        }
    };
    match viewed {
        Some(Ok(c)) => created(
            format!("/whep/{room}/session/{}", c.resource),
            c.answer,
            &c.public_id,
            &ice_links(&st, access.identity.as_deref(), &ext),
        ),
        Some(Err(e)) => shard_error(e),
        None => worker_gone(),
    }
}

async fn whep_latest(
    State(st): State<AppState>,
    Path(room): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    body: Bytes,
) -> Response {
    whep(st, room, None, uri, headers, ext, body).await
}

async fn whep_chosen(
    State(st): State<AppState>,
    Path((room, publisher)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    body: Bytes,
) -> Response {
    whep(st, room, Some(publisher), uri, headers, ext, body).await
}

async fn delete(
    st: AppState,
    role: Role,
    room: String,
    resource: String,
    headers: HeaderMap,
) -> Response {
    let caller = match caller(&st, &headers, &room) {
        Ok(a) => a,
        Err(res) => return *res,
    };
    match st
        .workers
        .for_room(&room)
        .call(|reply| Command::Delete {
            role,
            room,
            resource,
            caller,
            reply,
        })
        .await
    {
        Some(Ok(())) => StatusCode::OK.into_response(),
        Some(Err(e)) => shard_error(e),
        None => worker_gone(),
    }
}

async fn whip_delete(
    State(st): State<AppState>,
    Path((room, resource)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(st, Role::Publisher, room, resource, headers).await
}

async fn whep_delete(
    State(st): State<AppState>,
    Path((room, resource)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(st, Role::Viewer, room, resource, headers).await
}

async fn cert_hash(State(st): State<AppState>) -> Response {
    match st.quic_cert_sha256 {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain")], format!("{h}\n")).into_response(),
        None => error(StatusCode::NOT_FOUND, "QUIC is not enabled on this node"),
    }
}

async fn stats(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(res) = admin_refused(&st, &headers) {
        return res;
    }
    let Some(s) = st.workers.stats().await else {
        return worker_gone();
    };
    let mut v = serde_json::to_value(&s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        // Tasks alive on the signalling runtime (sockets, connections, sessions' timers): a
        // count that grows under churn is a leak.
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        o.insert("tasks".into(), tasks.into());
        let hooks: serde_json::Map<String, serde_json::Value> = st
            .webhooks
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        o.insert("webhooks".into(), hooks.into());
        let mix: serde_json::Map<String, serde_json::Value> = super::metrics::transport_mix(&s)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        o.insert("transports".into(), mix.into());
        let connected: serde_json::Map<String, serde_json::Value> =
            super::metrics::transport_mix(&s)
                .iter()
                .zip(s.sessions_connected)
                .map(|((k, _), v)| ((*k).to_owned(), v.into()))
                .collect();
        o.insert("transports_connected".into(), connected.into());
        if let Some(t) = turn_stats(&st) {
            o.insert("turn".into(), serde_json::to_value(t).unwrap_or_default());
        }
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into()),
    )
        .into_response()
}

/// The same figures as /stats in the Prometheus text exposition format.
async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(res) = admin_refused(&st, &headers) {
        return res;
    }
    let Some(s) = st.workers.stats().await else {
        return worker_gone();
    };
    let mut out = super::metrics::render(&s, &st.webhooks);
    if let Some(t) = turn_stats(&st) {
        super::metrics::render_turn(&mut out, &t);
    }
    super::metrics::render_cluster(&mut out, &st.cluster);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// How the listener treats connections before and around requests.
#[derive(Clone)]
pub struct ServeLimits {
    /// A connection whose request headers take longer is closed (slow-header attacks); the
    /// TLS handshake, with TLS on, has as long.
    pub header_timeout: std::time::Duration,
    /// Connections open at once; one more is closed when it arrives.
    pub max_connections: usize,
    /// HTTPS and WSS instead of HTTP (`[http] tls_cert`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves the router on a bound listener until the process ends: HTTP/1.1 with upgrades (the
/// room protocol's WebSocket), each connection with a header-read deadline, at most
/// `max_connections` at once (an upgraded one counting for as long as it is open).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut refused = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors and the like: wait a little rather than spin.
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refused += 1;
            // Logged at 1, 2, 4, 8… refusals.
            if refused.is_power_of_two() {
                warn!(peer = %peer, refused, limit = limits.max_connections, "HTTP connection refused: too many open");
            }
            drop(stream);
            continue;
        };
        let app = app.clone();
        let slot = super::state::ConnSlot::new(permit);
        let (tls, header_timeout) = (limits.tls.clone(), limits.header_timeout);
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(stream, peer, app, slot, header_timeout).await;
            };
            match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, peer, app, slot, header_timeout).await,
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        });
    }
}

/// HTTP/1.1 on one accepted connection (plain or TLS), with upgrades, until it ends.
async fn serve_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    app: Router,
    slot: super::state::ConnSlot,
    header_timeout: std::time::Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower_service::Service;
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            req.extensions_mut().insert(slot.clone());
            let mut app = app.clone();
            async move { app.call(req.map(axum::body::Body::new)).await }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(peer = %peer, error = %e, "HTTP connection ended");
    }
}
