//! Signalling: WHIP and WHEP over HTTP, the room protocol over WebSocket, and the tokens that
//! admit both; each request goes to the worker that owns its room, and the session layer's
//! errors become HTTP statuses and room-protocol errors here.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod dispatch;
pub mod http;
pub mod metrics;
pub mod quic;
pub mod quic_control;
pub mod relay_media;
pub mod state;
pub mod tls;
pub mod turn;
pub mod webhook;
pub mod ws;
