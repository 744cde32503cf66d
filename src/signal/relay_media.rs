//! Relay links' way to this node's media workers ([`Media`] over the workers' channels): a
//! room's requests go to the worker that owns it, a datagram straight to its session's worker.

use bytes::Bytes;

use super::dispatch::{Command, Workers};
use crate::cluster::media::{BoxFut, Media, Route};
use crate::session::connection::Origin;
use crate::session::link_layers::LinkView;
use crate::session::quic::{QuicTrack, RelaySource};
use crate::session::SessionError;

pub struct WorkerMedia(pub Workers);

fn gone() -> SessionError {
    SessionError::new(503, "unavailable", "media worker is not running")
}

impl WorkerMedia {
    fn index(&self, room: &str) -> usize {
        let w = self.0.for_room(room);
        self.0
            .all()
            .iter()
            .position(|h| h.tx.same_channel(&w.tx))
            .unwrap_or(0)
    }
}

impl Media for WorkerMedia {
    fn sources<'a>(&'a self, room: &'a str) -> BoxFut<'a, Vec<RelaySource>> {
        Box::pin(async move {
            let room = room.to_owned();
            self.0
                .for_room(&room)
                .call(|reply| Command::RelaySources { room, reply })
                .await
                .unwrap_or_default()
        })
    }

    fn subscribe<'a>(
        &'a self,
        room: &'a str,
        publisher: &'a str,
        flow: u64,
        conn: quinn::Connection,
    ) -> BoxFut<'a, Result<(Route, Vec<QuicTrack>), SessionError>> {
        Box::pin(async move {
            let worker = self.index(room);
            let (room, publisher) = (room.to_owned(), Some(publisher.to_owned()));
            let (session, _, tracks) = self.0.all()[worker]
                .call(|reply| Command::QuicSubscribe {
                    room,
                    publisher,
                    flow,
                    conn,
                    relay: true,
                    reply,
                })
                .await
                .ok_or_else(gone)??;
            Ok((Route { worker, session }, tracks))
        })
    }

    fn publish<'a>(
        &'a self,
        room: &'a str,
        tracks: Vec<QuicTrack>,
        flow: u64,
        conn: quinn::Connection,
        origin: Origin,
    ) -> BoxFut<'a, Result<Route, SessionError>> {
        Box::pin(async move {
            let worker = self.index(room);
            let room = room.to_owned();
            let (session, _) = self.0.all()[worker]
                .call(|reply| Command::QuicPublish {
                    room,
                    tracks,
                    flow,
                    conn,
                    origin: Some(origin),
                    reply,
                })
                .await
                .ok_or_else(gone)??;
            Ok(Route { worker, session })
        })
    }

    fn mute<'a>(&'a self, room: &'a str, track: String, muted: bool) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let room = room.to_owned();
            let request = crate::session::admin::Request::Mute {
                room: room.clone(),
                track,
                muted,
            };
            let _ = self
                .0
                .for_room(&room)
                .call(|reply| Command::Admin { request, reply })
                .await;
        })
    }

    fn close(&self, routes: Vec<Route>) {
        if routes.is_empty() {
            return;
        }
        // Awaited, not tried: a worker queue full of datagrams must not lose a close (a QUIC
        // session has no consent timeout to end it otherwise).
        let workers = self.0.clone();
        tokio::spawn(async move {
            for r in routes {
                if let Some(w) = workers.all().get(r.worker) {
                    let _ =
                        w.tx.send(Command::QuicClosed {
                            sessions: vec![r.session],
                        })
                        .await;
                }
            }
        });
    }

    fn poll(
        &self,
        routes: Vec<Route>,
        budgets: Vec<(Route, u64)>,
    ) -> BoxFut<'_, Vec<(Route, LinkView)>> {
        Box::pin(async move {
            let mut live = Vec::with_capacity(routes.len());
            for (worker, w) in self.0.all().iter().enumerate() {
                let sessions: Vec<_> = routes
                    .iter()
                    .filter(|r| r.worker == worker)
                    .map(|r| r.session)
                    .collect();
                if sessions.is_empty() {
                    continue;
                }
                let budgets = budgets
                    .iter()
                    .filter(|(r, _)| r.worker == worker)
                    .map(|(r, bps)| (r.session, *bps))
                    .collect();
                let call = w.call(|reply| Command::RelayPoll {
                    sessions,
                    budgets,
                    reply,
                });
                let Some(Ok(views)) = call.await else {
                    continue;
                };
                live.extend(views.into_iter().map(|v| {
                    let route = Route {
                        worker,
                        session: v.session,
                    };
                    (route, v)
                }));
            }
            live
        })
    }

    fn layers(&self, route: &Route, wanted: Vec<Vec<u8>>) -> BoxFut<'_, ()> {
        let (worker, session) = (route.worker, route.session);
        Box::pin(async move {
            if let Some(w) = self.0.all().get(worker) {
                let _ = w.tx.send(Command::RelayLayers { session, wanted }).await;
            }
        })
    }

    fn datagram(&self, route: &Route, data: Bytes) {
        if let Some(w) = self.0.all().get(route.worker) {
            // A worker that cannot keep up drops it, as a full socket buffer would.
            let _ = w.tx.try_send(Command::QuicDatagram {
                session: route.session,
                data,
            });
        }
    }
}
