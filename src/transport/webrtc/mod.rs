//! WebRTC transport: ICE-lite, DTLS-SRTP and SRTP for each session, and the shard that owns a
//! worker's sessions and its share of the relay core. Sans-IO like the core: datagrams and `now`
//! in, datagrams out; the worker thread does the socket work.

pub mod conference;
pub mod dtls;
pub mod ice;
pub mod negotiation;
pub mod path;
pub mod quic;
pub mod session;
pub mod shard;
pub mod srtp;

pub use conference::Grants;
pub use dtls::DtlsIdentity;
pub use shard::{Created, IceRestart, Limits, Shard, ShardConfig, ShardError, ShardStats};
