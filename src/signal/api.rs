//! The server API under `/api/v1` (docs/api.md): HTTP and JSON for the messenger's backend and
//! operators, behind an admin token when auth is on (`volna token --admin`). It lists rooms,
//! shows one, removes a participant, mutes a track, closes a room and sets its metadata; each
//! request goes to the worker that owns the room, so what it answers is the room as it is then.
//! Every refusal is JSON: `{"code", "reason", "message"}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::dispatch::{Command, WorkerHandle};
use super::http::admin_refused;
use super::state::{valid_name, AppState};
use crate::session::admin::{Request, Response as Answer, MAX_METADATA_BYTES};
use crate::session::SessionError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rooms", get(rooms))
        .route("/rooms/{room}", get(room).delete(close))
        .route("/rooms/{room}/metadata", put(metadata))
        .route("/rooms/{room}/participants/{id}", delete(remove))
        .route("/rooms/{room}/tracks/{track}/mute", post(mute))
}

fn json_error(code: u16, reason: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({ "code": code, "reason": reason, "message": message });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn refusal(e: SessionError) -> Response {
    json_error(e.code, e.reason, &e.message)
}

/// The admin check: `None` to go on, or the JSON refusal (401 keeps `WWW-Authenticate`).
fn refused(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    let mut res = admin_refused(st, headers)?;
    let code = res.status().as_u16();
    let reason = if code == 401 {
        "unauthorized"
    } else {
        "forbidden"
    };
    let mut out = json_error(code, reason, "the server API needs an admin token");
    if let Some(v) = res.headers_mut().remove(header::WWW_AUTHENTICATE) {
        out.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Some(out)
}

/// Checks the token and the room name; the worker that owns the room, or the refusal.
fn owner<'a>(
    st: &'a AppState,
    headers: &HeaderMap,
    room: &str,
) -> Result<&'a WorkerHandle, Box<Response>> {
    if let Some(res) = refused(st, headers) {
        return Err(Box::new(res));
    }
    if !valid_name(room) {
        return Err(Box::new(json_error(
            400,
            "bad_room",
            "room names are 1 to 64 letters, digits, '-', '_' or '.'",
        )));
    }
    Ok(st.workers.for_room(room))
}

async fn ask(w: &WorkerHandle, request: Request) -> Result<Answer, Box<Response>> {
    match w.call(|reply| Command::Admin { request, reply }).await {
        Some(Ok(a)) => Ok(a),
        Some(Err(e)) => Err(Box::new(refusal(e))),
        None => Err(Box::new(json_error(
            503,
            "worker_gone",
            "media worker is not running",
        ))),
    }
}

fn ok_json(v: impl serde::Serialize) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&v).unwrap_or_else(|_| "{}".into()),
    )
        .into_response()
}

/// Reads a JSON body of at most `max` bytes.
fn read_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    max: usize,
) -> Result<T, Box<Response>> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Err(Box::new(json_error(
            415,
            "bad_content_type",
            "the body must be application/json",
        )));
    }
    if body.len() > max {
        return Err(Box::new(json_error(
            413,
            "too_large",
            &format!("the body is limited to {max} bytes"),
        )));
    }
    serde_json::from_slice(body).map_err(|e| Box::new(json_error(400, "bad_json", &e.to_string())))
}

async fn rooms(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(res) = refused(&st, &headers) {
        return res;
    }
    let mut all = Vec::new();
    for w in st.workers.all() {
        match ask(w, Request::Rooms).await {
            Ok(Answer::Rooms(r)) => all.extend(r),
            Ok(_) => {}
            Err(res) => return *res,
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    ok_json(json!({ "rooms": all }))
}

async fn room(
    State(st): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let w = match owner(&st, &headers, &room) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    match ask(w, Request::Room { room }).await {
        Ok(Answer::Room(r)) => ok_json(r),
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(res) => *res,
    }
}

/// Runs an act on the room's worker: 204 when done.
async fn act(st: &AppState, headers: &HeaderMap, room: &str, request: Request) -> Response {
    let w = match owner(st, headers, room) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    match ask(w, request).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(res) => *res,
    }
}

async fn close(
    State(st): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&st, &headers, &room, Request::Close { room: room.clone() }).await
}

async fn remove(
    State(st): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    act(
        &st,
        &headers,
        &room,
        Request::Remove {
            room: room.clone(),
            id,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    muted: bool,
}

async fn mute(
    State(st): State<AppState>,
    Path((room, track)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(res) = refused(&st, &headers) {
        return res;
    }
    let b: MuteBody = match read_json(&headers, &body, 256) {
        Ok(b) => b,
        Err(res) => return *res,
    };
    let request = Request::Mute {
        room: room.clone(),
        track,
        muted: b.muted,
    };
    act(&st, &headers, &room, request).await
}

async fn metadata(
    State(st): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(res) = refused(&st, &headers) {
        return res;
    }
    let metadata: Value = match read_json(&headers, &body, MAX_METADATA_BYTES) {
        Ok(v) => v,
        Err(res) => return *res,
    };
    act(
        &st,
        &headers,
        &room,
        Request::Metadata {
            room: room.clone(),
            metadata,
        },
    )
    .await
}
