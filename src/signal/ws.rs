//! The room protocol's WebSocket endpoint (`/rtc`): one task per socket, reading client messages,
//! asking the worker, and writing replies and the participant's events. Bad input gets an
//! `error` message; the socket and the rest of the room carry on.

use std::time::Instant;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::auth::{bearer, unix_now};
use super::dispatch::Command;
use super::state::{error_response, valid_name, AppState, ConnSlot};
use crate::cluster::Placement;
use crate::session::connection::ParticipantId;
use crate::session::protocol::{ClientMessage, ServerMessage, VERSION};
use crate::session::sdp::Offer;
use crate::session::JoinRequest;
use crate::session::SessionError;

/// Events waiting for a slow client; past this the client is cut off rather than waited for.
const EVENT_QUEUE: usize = 256;

#[derive(Debug, Deserialize)]
pub struct RtcQuery {
    token: Option<String>,
}

pub async fn rtc(
    ws: WebSocketUpgrade,
    State(st): State<AppState>,
    Query(q): Query<RtcQuery>,
    headers: HeaderMap,
    slot: Option<Extension<ConnSlot>>,
    ext: axum::http::Extensions,
) -> Response {
    // TURN credentials of a participant without a verified identity are its IP's.
    let guest = super::http::turn_identity(None, &ext);
    let token = q.token.or_else(|| bearer(&headers).map(str::to_owned));
    // A token given with the upgrade is checked now (its room at `join`), so a bad one gets 401.
    if let Some(t) = &token {
        if let Err(e) = st.auth.check(Some(t), None, unix_now()) {
            return error_response(e.status(), &e.to_string());
        }
    }
    let limit = st.ws_max_message_bytes;
    // The socket keeps its connection's place among the listener's `max_connections`.
    let permit = slot.and_then(|s| s.take());
    // Frames up to 4x the limit are read so they can be answered with an error; larger ones
    // end the connection.
    ws.max_message_size(limit * 4)
        .max_frame_size(limit * 4)
        .on_upgrade(move |socket| async move {
            run(socket, st, token, guest).await;
            drop(permit);
        })
        .into_response()
}

/// Token bucket for the message rate.
struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A client whose socket takes no data for this long is cut off (it is shown as reconnecting,
/// and may come back with `resume`), rather than have its events pile up.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends one message; false when the socket is gone or the client stopped reading.
async fn send(socket: &mut WebSocket, msg: &ServerMessage) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => matches!(
            tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await,
            Ok(Ok(()))
        ),
        Err(_) => true,
    }
}

/// Names each socket, so a participant's old socket closing late does not touch the new one.
static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

async fn run(mut socket: WebSocket, st: AppState, upgrade_token: Option<String>, guest: String) {
    let conn = NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut joined: Option<(ParticipantId, mpsc::Receiver<ServerMessage>)> = None;
    let rate = f64::from(st.ws_messages_per_second.max(1));
    let mut bucket = Bucket {
        tokens: rate,
        rate,
        last: Instant::now(),
    };
    // A socket that has not joined by then is closed.
    let join_deadline = tokio::time::Instant::now() + st.ws_join_timeout;
    loop {
        let unjoined = joined.is_none();
        let event = async {
            match joined.as_mut() {
                Some((_, rx)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(join_deadline), if unjoined => {
                let r = SessionError::new(408, "join_timeout", format!("no room joined within {} s", st.ws_join_timeout.as_secs()));
                let _ = send(&mut socket, &refusal(&r, None)).await;
                break;
            }
            incoming = socket.recv() => {
                let text = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        let r = SessionError::new(400, "bad_message", "binary frames are not part of the protocol; send JSON text");
                        if !send(&mut socket, &refusal(&r, None)).await { break; }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                if !bucket.take(Instant::now()) {
                    let r = SessionError::new(429, "rate_limited", format!("more than {} messages per second", st.ws_messages_per_second));
                    if !send(&mut socket, &refusal(&r, None)).await { break; }
                    continue;
                }
                if text.len() > st.ws_max_message_bytes {
                    let r = SessionError::new(413, "message_too_large", format!("messages are limited to {} bytes", st.ws_max_message_bytes));
                    if !send(&mut socket, &refusal(&r, None)).await { break; }
                    continue;
                }
                let msg = match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(m) => m,
                    Err(e) => {
                        debug!(error = %e, "bad room-protocol message");
                        let r = SessionError::new(400, "bad_message", e.to_string());
                        if !send(&mut socket, &refusal(&r, None)).await { break; }
                        continue;
                    }
                };
                let leaving = matches!(msg, ClientMessage::Leave { .. });
                let id = msg.request_id();
                let reply = match handle(&st, msg, &mut joined, upgrade_token.as_deref(), conn, &guest).await {
                    Ok(reply) => reply,
                    Err(r) => refusal(&r, id),
                };
                if !send(&mut socket, &reply).await { break; }
                if matches!(reply, ServerMessage::Redirect { .. }) {
                    break;
                }
                if let (ServerMessage::Joined { .. }, Some((pid, _))) = (&reply, &joined) {
                    let pid = *pid;
                    let _ = st.workers.for_id(pid).tx.send(Command::JoinedDelivered { pid }).await;
                }
                if leaving {
                    break;
                }
            }
            ev = event => match ev {
                Some(m) => {
                    let lost = matches!(m, ServerMessage::Error { .. });
                    if !send(&mut socket, &m).await || lost { break; }
                }
                // The worker dropped this participant (media lost).
                None => break,
            },
        }
    }
    // Without `leave` the participant may come back (`join` with `resume`).
    if let Some((pid, _)) = joined {
        let _ = st
            .workers
            .for_id(pid)
            .tx
            .send(Command::Disconnected { pid, conn })
            .await;
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// The answer to a new `join` this node does not take: a `redirect`, or the refusal.
fn elsewhere(
    placement: Placement,
    id: Option<serde_json::Value>,
    room: &str,
) -> Result<ServerMessage, SessionError> {
    match placement {
        Placement::Elsewhere(node) => {
            info!(room, to = %node.id, "room protocol join redirected");
            Ok(ServerMessage::Redirect {
                id,
                url: node.rtc_url(),
                node: node.id,
            })
        }
        Placement::Refused(code, reason, message) => Err(SessionError::new(code, reason, message)),
        // Not reached: a join placed here is not sent elsewhere.
        Placement::Here => Err(SessionError::new(503, "unavailable", "try again")),
    }
}

fn not_joined() -> SessionError {
    SessionError::new(409, "not_joined", "join a room first")
}

async fn handle(
    st: &AppState,
    msg: ClientMessage,
    joined: &mut Option<(ParticipantId, mpsc::Receiver<ServerMessage>)>,
    upgrade_token: Option<&str>,
    conn: u64,
    guest: &str,
) -> Result<ServerMessage, SessionError> {
    let gone = || SessionError::new(503, "unavailable", "media worker is not running");
    let pid = joined.as_ref().map(|(p, _)| *p);
    match msg {
        ClientMessage::Join {
            id,
            v,
            room,
            name,
            token,
            auto_subscribe,
            resume,
        } => {
            if pid.is_some() {
                return Err(SessionError::new(
                    409,
                    "already_joined",
                    "this socket has joined a room already",
                ));
            }
            if v != VERSION {
                return Err(SessionError::new(
                    400,
                    "unsupported_version",
                    format!("protocol version {v} is not supported; use {VERSION}"),
                ));
            }
            if !valid_name(&room) {
                return Err(SessionError::new(
                    400,
                    "bad_room",
                    "room names are 1-64 characters of A-Z a-z 0-9 - _ .",
                ));
            }
            let name = name.unwrap_or_default();
            if name.chars().count() > 64 {
                return Err(SessionError::new(
                    400,
                    "bad_name",
                    "names are at most 64 characters",
                ));
            }
            let token = token.as_deref().or(upgrade_token);
            let access = st
                .auth
                .check(token, Some(&room), unix_now())
                .map_err(|e| SessionError::new(e.status(), e.reason(), e.to_string()))?;
            // A participant coming back keeps its call here; a new one may be sent elsewhere.
            let placement = st.cluster.place();
            let only_resume = !matches!(placement, Placement::Here);
            if resume.is_none() && only_resume {
                return elsewhere(placement, id, &room);
            }
            let verified = access.identity.is_some();
            let turn_who = access
                .identity
                .as_deref()
                .map_or_else(|| guest.to_owned(), |i| format!("id:{i}"));
            let identity = access.identity.unwrap_or_else(|| {
                if name.is_empty() {
                    "guest".into()
                } else {
                    name.clone()
                }
            });
            let display = if name.is_empty() {
                identity.clone()
            } else {
                name
            };
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            let (reply, wait) = tokio::sync::oneshot::channel();
            st.workers
                .for_room(&room)
                .tx
                .send(Command::Join {
                    req: JoinRequest {
                        room: room.clone(),
                        identity: identity.clone(),
                        verified,
                        name: display,
                        grants: access.grants,
                        auto_subscribe,
                        conn,
                        resume,
                        only_resume,
                    },
                    tx,
                    reply,
                })
                .await
                .map_err(|_| gone())?;
            let (pid, mut joined_msg) = match wait.await.map_err(|_| gone())? {
                Err(e) if e.reason == "not_resumable" => return elsewhere(placement, id, &room),
                r => r?,
            };
            if let ServerMessage::Joined {
                id: slot,
                fallbacks,
                ice_servers,
                ..
            } = &mut joined_msg
            {
                *slot = id;
                *fallbacks = st.cluster.fallbacks();
                if let Some(ice) = &st.ice_servers {
                    *ice_servers = ice.for_identity(&turn_who, unix_now());
                }
            }
            info!(room, identity, "room protocol join");
            *joined = Some((pid, rx));
            Ok(joined_msg)
        }
        ClientMessage::Publish { id, sdp } => {
            let pid = pid.ok_or_else(not_joined)?;
            let offer =
                Offer::parse(&sdp).map_err(|e| SessionError::new(400, "bad_sdp", e.to_string()))?;
            let sdp = call(st, pid, |reply| Command::RoomPublish {
                pid,
                offer: Box::new(offer),
                reply,
            })
            .await??;
            Ok(ServerMessage::PublishAnswer { id, sdp })
        }
        ClientMessage::Answer { id, sdp } => {
            let pid = pid.ok_or_else(not_joined)?;
            call(st, pid, |reply| Command::Answer { pid, sdp, reply }).await??;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::RestartIce { id, sdp } => {
            let pid = pid.ok_or_else(not_joined)?;
            let offer = sdp
                .map(|s| {
                    Offer::parse(&s).map_err(|e| SessionError::new(400, "bad_sdp", e.to_string()))
                })
                .transpose()?
                .map(Box::new);
            let answer = call(st, pid, |reply| Command::RestartIce { pid, offer, reply }).await??;
            Ok(match answer {
                Some(sdp) => ServerMessage::PublishAnswer { id, sdp },
                None => ServerMessage::Ok { id },
            })
        }
        ClientMessage::OfferFailed { id, reason } => {
            let pid = pid.ok_or_else(not_joined)?;
            let reason = reason.unwrap_or_default();
            let reason: String = reason.chars().take(200).collect();
            call(st, pid, |reply| Command::OfferFailed { pid, reason, reply }).await??;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::Subscribe { tracks, .. }
        | ClientMessage::Unsubscribe { tracks, .. }
        | ClientMessage::Pin { tracks, .. }
            if tracks.len() > 256 =>
        {
            Err(SessionError::new(
                400,
                "bad_message",
                "at most 256 tracks per request",
            ))
        }
        ClientMessage::Subscribe { id, tracks } => {
            let pid = pid.ok_or_else(not_joined)?;
            call(st, pid, |reply| Command::Subscribe {
                pid,
                tracks,
                on: true,
                reply,
            })
            .await??;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::Unsubscribe { id, tracks } => {
            let pid = pid.ok_or_else(not_joined)?;
            call(st, pid, |reply| Command::Subscribe {
                pid,
                tracks,
                on: false,
                reply,
            })
            .await??;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::Mute { id, track, muted } => {
            let pid = pid.ok_or_else(not_joined)?;
            call(st, pid, |reply| Command::Mute {
                pid,
                track,
                muted,
                reply,
            })
            .await??;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::Pin { id, tracks } => {
            let pid = pid.ok_or_else(not_joined)?;
            call(st, pid, |reply| Command::Pin { pid, tracks, reply }).await??;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::Leave { id } => {
            let pid = pid.ok_or_else(not_joined)?;
            *joined = None;
            // `ok` only once the room knows: a client closes its connections right after, and
            // their closing must not read as a lost connection (`participant_reconnecting`).
            call(st, pid, |reply| Command::Leave { pid, reply }).await??;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::Ping { id } => Ok(ServerMessage::Pong { id }),
    }
}

/// Asks the worker that holds participant `pid`.
async fn call<T>(
    st: &AppState,
    pid: ParticipantId,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Command,
) -> Result<T, SessionError> {
    st.workers
        .for_id(pid)
        .call(make)
        .await
        .ok_or_else(|| SessionError::new(503, "unavailable", "media worker is not running"))
}

/// A refusal as the room protocol's `error` message (in reply to request `id`, if it had one).
fn refusal(e: &SessionError, id: Option<serde_json::Value>) -> ServerMessage {
    ServerMessage::Error {
        id,
        code: e.code,
        reason: e.reason,
        message: e.message.clone(),
    }
}
