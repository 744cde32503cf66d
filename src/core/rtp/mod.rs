//! RTP as the forward path sees it: views into received buffers, header extensions, the per-viewer
//! rewrite, and just enough of each codec's payload to find keyframes.

pub mod codec;
pub mod ext;
pub mod rewrite;
pub mod view;

pub use codec::Codec;
pub use ext::{ExtKind, ExtMap};
pub use rewrite::{write_header, write_header_marked, ExtTranslation, Rewrite, Written};
pub use view::{header_len, is_rtcp, RtpView};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("unsupported RTP version {0}")]
    Version(u8),
    #[error("header extension runs past the packet")]
    ExtensionOverrun,
    #[error("invalid padding")]
    Padding,
    #[error("output buffer too small")]
    BufferTooSmall,
}
