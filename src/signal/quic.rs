//! RTP over QUIC's signalling: one task per connection runs its control stream (join, publish,
//! subscribe: [`quic_control`](super::quic_control)), checks tokens, asks the room's worker, and
//! hands the connection's datagrams to the sessions it opened. Tasks run on the worker's own
//! runtime, so a connection's media stays on the worker thread.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use super::auth::{unix_now, Auth};
use super::dispatch::{Command, Workers};
use super::quic_control::{
    ControlReply, ControlRequest, MAX_CONTROL_MESSAGE, MAX_CONTROL_PER_SECOND, MAX_FLOWS,
    MAX_FLOW_ID,
};
use crate::core::room::SessionId;
use crate::session::quic::QuicTrack;
use crate::session::Grants;
use crate::session::SessionError;
use crate::transport::quic::endpoint::{read_frame, FrameError};
use crate::transport::quic::roq::{frame, split_datagram};

/// Accepts connections until the endpoint closes.
pub async fn accept_loop(endpoint: quinn::Endpoint, workers: Workers, auth: Auth) {
    while let Some(incoming) = endpoint.accept().await {
        let workers = workers.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    info!(peer = %remote, "QUIC connection");
                    run_connection(conn, workers, auth).await;
                }
                Err(e) => debug!(peer = %remote, error = %e, "QUIC handshake failed"),
            }
        });
    }
}

fn refusal(r: SessionError) -> ControlReply {
    ControlReply::Error {
        code: r.code,
        reason: r.reason,
        message: r.message,
    }
}

async fn call<T>(
    tx: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<Result<T, SessionError>>) -> Command,
) -> Result<T, SessionError> {
    let (reply, wait) = oneshot::channel();
    tx.send(make(reply))
        .await
        .map_err(|_| SessionError::new(503, "unavailable", "worker stopped"))?;
    wait.await
        .map_err(|_| SessionError::new(503, "unavailable", "worker stopped"))?
}

/// Reads one varint-framed control message; `Ok(None)` at the end of the stream.
async fn read_message(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, SessionError> {
    read_frame(recv, MAX_CONTROL_MESSAGE)
        .await
        .map_err(|e| match e {
            FrameError::TooLarge(_) => SessionError::new(413, "message_too_large", e.to_string()),
            FrameError::Stream(_) => SessionError::new(400, "bad_frame", e.to_string()),
        })
}

struct Joined {
    room: String,
    identity: String,
    grants: Grants,
}

async fn run_connection(conn: quinn::Connection, workers: Workers, auth: Auth) {
    let peer = conn.remote_address();
    let (mut send, mut recv) =
        match tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await {
            Ok(Ok(s)) => s,
            _ => {
                conn.close(1u32.into(), b"no control stream");
                return;
            }
        };
    let mut joined: Option<Joined> = None;
    // Until the connection joins a room, its junk is counted by the first worker; after, every
    // command goes to the worker of its room.
    let mut tx = workers.all()[0].tx.clone();
    // Datagram flow id -> session it belongs to.
    let mut flows: Vec<(u64, SessionId)> = Vec::new();
    // Control messages in the current second.
    let mut window = (tokio::time::Instant::now(), 0u32);
    // Control messages are read in a task of their own: a read that the select! below dropped
    // half-way (a datagram came first) would lose the bytes it had taken from the stream. The
    // queue is short, so a client sending faster than it is answered waits.
    let (read_tx, mut reads) = mpsc::channel(4);
    let reader = tokio::spawn(async move {
        loop {
            let r = read_message(&mut recv).await;
            let last = !matches!(r, Ok(Some(_)));
            if read_tx.send(r).await.is_err() || last {
                return;
            }
        }
    });
    loop {
        tokio::select! {
            msg = reads.recv() => {
                let body = match msg {
                    Some(Ok(Some(b))) => b,
                    Some(Ok(None)) | None => break,
                    Some(Err(r)) => {
                        // Say why, give the reply a moment to arrive, then end the connection.
                        let _ = send.write_all(&frame(&serde_json::to_vec(&refusal(r)).unwrap_or_default())).await;
                        let _ = send.finish();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        conn.close(2u32.into(), b"bad control stream");
                        break;
                    }
                };
                let now = tokio::time::Instant::now();
                if now.duration_since(window.0) >= Duration::from_secs(1) {
                    window = (now, 0);
                }
                window.1 += 1;
                let reply = if window.1 > MAX_CONTROL_PER_SECOND {
                    refusal(SessionError::new(429, "rate_limited", format!("at most {MAX_CONTROL_PER_SECOND} control messages a second")))
                } else {
                    match serde_json::from_slice::<ControlRequest>(&body) {
                        Err(e) => refusal(SessionError::new(400, "bad_message", e.to_string())),
                        Ok(req) => handle(req, &conn, &workers, &auth, &mut joined, &mut flows).await.unwrap_or_else(refusal),
                    }
                };
                if let Some(j) = &joined {
                    tx = workers.for_room(&j.room).tx.clone();
                }
                if send.write_all(&frame(&serde_json::to_vec(&reply).unwrap_or_default())).await.is_err() {
                    break;
                }
            }
            d = conn.read_datagram() => {
                let Ok(d) = d else { break };
                match split_datagram(&d).ok().and_then(|(flow, _)| flows.iter().find(|(f, _)| *f == flow)) {
                    Some(&(_, session)) => {
                        if tx.send(Command::QuicDatagram { session, data: d }).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        debug!(peer = %peer, "datagram for an unknown flow dropped");
                        let _ = tx.send(Command::QuicJunk).await;
                    }
                }
            }
        }
    }
    reader.abort();
    if !flows.is_empty() {
        let _ = tx
            .send(Command::QuicClosed {
                sessions: flows.iter().map(|(_, s)| *s).collect(),
            })
            .await;
    }
    info!(peer = %peer, "QUIC connection ended");
}

async fn handle(
    req: ControlRequest,
    conn: &quinn::Connection,
    workers: &Workers,
    auth: &Auth,
    joined: &mut Option<Joined>,
    flows: &mut Vec<(u64, SessionId)>,
) -> Result<ControlReply, SessionError> {
    match req {
        ControlRequest::Join {
            v,
            room,
            token,
            name,
        } => {
            if joined.is_some() {
                return Err(SessionError::new(
                    409,
                    "already_joined",
                    "this connection has joined a room already",
                ));
            }
            if v != 1 {
                return Err(SessionError::new(400, "unsupported_version", "use v 1"));
            }
            if !super::state::valid_name(&room) {
                return Err(SessionError::new(
                    400,
                    "bad_room",
                    "room names are 1-64 characters of A-Z a-z 0-9 - _ .",
                ));
            }
            if name.as_ref().is_some_and(|n| n.chars().count() > 64) {
                return Err(SessionError::new(
                    400,
                    "bad_name",
                    "names are at most 64 characters",
                ));
            }
            let access = auth
                .check(token.as_deref(), Some(&room), unix_now())
                .map_err(|e| SessionError::new(e.status(), e.reason(), e.to_string()))?;
            let identity = access.identity.or(name).unwrap_or_else(|| "quic".into());
            *joined = Some(Joined {
                room: room.clone(),
                identity: identity.clone(),
                grants: access.grants,
            });
            Ok(ControlReply::Joined {
                v: 1,
                room,
                identity,
            })
        }
        ControlRequest::Publish { flow, tracks } => {
            forget_ended(workers, joined, flows).await?;
            let j = may_open(joined, flows, flow, true)?;
            info!(identity = %j.identity, room = %j.room, flow, "QUIC publish");
            let (room, conn) = (j.room.clone(), conn.clone());
            let tx = &workers.for_room(&room).tx;
            let (session, publisher) = call(tx, |reply| Command::QuicPublish {
                room,
                tracks,
                flow,
                conn,
                origin: None,
                reply,
            })
            .await?;
            flows.push((flow, session));
            Ok(ControlReply::Published { publisher })
        }
        ControlRequest::Subscribe { flow, publisher } => {
            forget_ended(workers, joined, flows).await?;
            let j = may_open(joined, flows, flow, false)?;
            info!(identity = %j.identity, room = %j.room, flow, "QUIC subscribe");
            let (room, conn) = (j.room.clone(), conn.clone());
            let tx = &workers.for_room(&room).tx;
            let (session, publisher, tracks): (SessionId, String, Vec<QuicTrack>) =
                call(tx, |reply| Command::QuicSubscribe {
                    room,
                    publisher,
                    flow,
                    conn,
                    relay: false,
                    reply,
                })
                .await?;
            flows.push((flow, session));
            Ok(ControlReply::Subscribed {
                publisher,
                flow,
                tracks,
            })
        }
    }
}

/// Forgets the flows whose sessions have ended on their own (a subscription whose publisher left
/// or republished): their numbers may be taken again, and they count no more towards
/// [`MAX_FLOWS`].
async fn forget_ended(
    workers: &Workers,
    joined: &Option<Joined>,
    flows: &mut Vec<(u64, SessionId)>,
) -> Result<(), SessionError> {
    let Some(j) = joined.as_ref().filter(|_| !flows.is_empty()) else {
        return Ok(());
    };
    let sessions: Vec<SessionId> = flows.iter().map(|(_, s)| *s).collect();
    let tx = &workers.for_room(&j.room).tx;
    let live = call(tx, |reply| Command::QuicLive { sessions, reply }).await?;
    flows.retain(|(_, s)| live.contains(s));
    Ok(())
}

/// Whether this connection may open flow `flow` to publish (or subscribe): it has joined, its
/// token grants it, and the flow is free (and one a datagram can carry).
fn may_open<'a>(
    joined: &'a Option<Joined>,
    flows: &[(u64, SessionId)],
    flow: u64,
    publish: bool,
) -> Result<&'a Joined, SessionError> {
    let j = joined
        .as_ref()
        .ok_or_else(|| SessionError::new(409, "not_joined", "send join first"))?;
    if !(if publish {
        j.grants.publish
    } else {
        j.grants.subscribe
    }) {
        let what = if publish { "publishing" } else { "subscribing" };
        return Err(SessionError::new(
            403,
            "forbidden",
            format!("this token does not allow {what}"),
        ));
    }
    if flow > MAX_FLOW_ID {
        return Err(SessionError::new(
            400,
            "bad_message",
            format!("flow ids are 0 to {MAX_FLOW_ID} (a QUIC variable-length integer)"),
        ));
    }
    if flows.iter().any(|(f, _)| *f == flow) {
        return Err(SessionError::new(
            409,
            "flow_in_use",
            format!("flow {flow} is in use"),
        ));
    }
    if flows.len() >= MAX_FLOWS {
        return Err(SessionError::new(
            429,
            "too_many_flows",
            format!("at most {MAX_FLOWS} flows per connection"),
        ));
    }
    Ok(j)
}
