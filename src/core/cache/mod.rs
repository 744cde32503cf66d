//! Caches the relay keeps per publisher track: recent packets for answering NACKs.

pub mod retransmit;

pub use retransmit::RetransmitCache;
