//! Audio work the relay does itself, for viewers that need it: re-encoding Opus at a low bitrate.

pub mod transcode;

pub use transcode::{OpusTranscoder, TranscodeError};
