//! Codec payload descriptors, read only as far as forwarding needs: does this packet start a keyframe?

pub mod av1;
pub mod av1_dd;
pub mod h264;
pub mod vp8;
pub mod vp9;

/// Codecs volna negotiates. `Other` keeps unknown formats out of keyframe logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
    Av1,
}

impl Codec {
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "opus" => Some(Codec::Opus),
            "vp8" => Some(Codec::Vp8),
            "vp9" => Some(Codec::Vp9),
            "h264" => Some(Codec::H264),
            "av1" | "av1x" => Some(Codec::Av1),
            _ => None,
        }
    }

    pub fn is_video(self) -> bool {
        !matches!(self, Codec::Opus)
    }

    /// Whether this RTP payload is the first packet of a keyframe (a decoder can start here).
    pub fn starts_keyframe(self, payload: &[u8]) -> bool {
        match self {
            Codec::Opus => true,
            Codec::Vp8 => vp8::starts_keyframe(payload),
            Codec::Vp9 => vp9::starts_keyframe(payload),
            Codec::H264 => h264::starts_keyframe(payload),
            Codec::Av1 => av1::starts_keyframe(payload),
        }
    }
}
