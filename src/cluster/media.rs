//! What relay links need from this node's media workers, as a trait the signalling layer
//! implements over the workers' channels: the rooms served here, a room's own publishers, a
//! subscription for another node, a relayed publisher from another node, polling and closing
//! sessions, the layers another node wants, and
//! handing a datagram to the session it belongs to (without waiting: a full worker drops it).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::core::room::SessionId;
use crate::session::connection::Origin;
use crate::session::link_layers::LinkView;
use crate::session::quic::{QuicTrack, RelaySource};
use crate::session::SessionError;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A session on one of the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub worker: usize,
    pub session: SessionId,
}

pub trait Media: Send + Sync + 'static {
    /// The room's publishers that publish to this node.
    fn sources<'a>(&'a self, room: &'a str) -> BoxFut<'a, Vec<RelaySource>>;
    /// Another node subscribes to `publisher` of `room` on `flow` of `conn`.
    fn subscribe<'a>(
        &'a self,
        room: &'a str,
        publisher: &'a str,
        flow: u64,
        conn: quinn::Connection,
    ) -> BoxFut<'a, Result<(Route, Vec<QuicTrack>), SessionError>>;
    /// Another node's publisher, relayed into `room` here on `flow` of `conn`.
    fn publish<'a>(
        &'a self,
        room: &'a str,
        tracks: Vec<QuicTrack>,
        flow: u64,
        conn: quinn::Connection,
        origin: Origin,
    ) -> BoxFut<'a, Result<Route, SessionError>>;
    /// Mutes or unmutes a relayed track of `room` (as its origin shows it) for everyone here.
    fn mute<'a>(&'a self, room: &'a str, track: String, muted: bool) -> BoxFut<'a, ()>;
    /// Ends these sessions (delivered even while the workers are busy).
    fn close(&self, routes: Vec<Route>);
    /// Which of these sessions still run, with what each tells its link; the subscriber
    /// sessions in `budgets` may each send that many bps first.
    fn poll(
        &self,
        routes: Vec<Route>,
        budgets: Vec<(Route, u64)>,
    ) -> BoxFut<'_, Vec<(Route, LinkView)>>;
    /// The layers another node wants of the publisher a subscriber session serves it.
    fn layers(&self, route: &Route, wanted: Vec<Vec<u8>>) -> BoxFut<'_, ()>;
    fn datagram(&self, route: &Route, data: Bytes);
}
