//! SDP offers from WHIP/WHEP clients (RFC 8829 JSEP, RFC 8866), parsed with `rtc-sdp` into what
//! volna negotiates; what volna writes back is in `write`.

use std::io::Cursor;

use rtc_sdp::description::media::MediaDescription;
use rtc_sdp::SessionDescription;

use crate::core::room::{Feedback, MediaKind};
use crate::core::rtp::{Codec, ExtKind, ExtMap};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP does not parse: {0}")]
    Parse(String),
    #[error("offer has no ice-ufrag/ice-pwd")]
    MissingIceCredentials,
    #[error("offer has no a=fingerprint")]
    MissingFingerprint,
    #[error("offer has no sha-256 fingerprint (only sha-256 is supported)")]
    UnsupportedFingerprint,
    #[error("offer has no audio or video m-line")]
    NoMedia,
    #[error("m-line {0} is not UDP/TLS/RTP/SAVPF")]
    Protocol(String),
    #[error("m-line {0} does not use rtcp-mux, which is required")]
    NoRtcpMux(String),
    #[error("m-line {0} has no a=mid")]
    NoMid(usize),
    #[error("offer has a=setup:{0}; expected actpass, active or passive")]
    Setup(String),
    #[error("{0}")]
    Unacceptable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Actpass,
    Active,
    Passive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedCodec {
    pub payload_type: u8,
    pub codec: Option<Codec>,
    pub name: String,
    pub clock_rate: u32,
    pub channels: String,
    pub fmtp: String,
    pub feedback: Vec<String>,
}

impl OfferedCodec {
    /// The payload type of an offered RTX codec (RFC 4588) that repairs `pt`, if any.
    pub fn rtx_for(codecs: &[OfferedCodec], pt: u8) -> Option<u8> {
        codecs
            .iter()
            .find(|c| {
                c.name.eq_ignore_ascii_case("rtx")
                    && c.fmtp_param("apt").and_then(|a| a.trim().parse().ok()) == Some(pt)
            })
            .map(|c| c.payload_type)
    }

    /// The payload type of an offered RED codec (RFC 2198, `audio/red`) that carries `pt`
    /// blocks only, if any: `a=fmtp:<red> <pt>/<pt>...` (RFC 2198 §5, RFC 8866 §6.15).
    pub fn red_for(codecs: &[OfferedCodec], pt: u8) -> Option<u8> {
        let primary = codecs.iter().find(|c| c.payload_type == pt)?;
        codecs
            .iter()
            .find(|c| {
                c.name.eq_ignore_ascii_case("red")
                    && c.clock_rate == primary.clock_rate
                    && !c.fmtp.trim().is_empty()
                    && c.fmtp
                        .trim()
                        .split('/')
                        .all(|p| p.trim().parse::<u8>().ok() == Some(pt))
            })
            .map(|c| c.payload_type)
    }

    fn fmtp_param(&self, key: &str) -> Option<&str> {
        self.fmtp
            .split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// Whether a stream of codec `other` can be sent to a peer that offered `self` unchanged.
    pub fn compatible(&self, other: &OfferedCodec) -> bool {
        if self.codec.is_none() || self.codec != other.codec || self.clock_rate != other.clock_rate
        {
            return false;
        }
        match self.codec {
            Some(Codec::H264) => {
                let mode =
                    |c: &OfferedCodec| c.fmtp_param("packetization-mode").unwrap_or("0").to_owned();
                // profile_idc and profile-iop must match; the level may differ.
                let profile = |c: &OfferedCodec| {
                    c.fmtp_param("profile-level-id")
                        .map(|p| p.get(..4).unwrap_or(p).to_ascii_lowercase())
                };
                mode(self) == mode(other) && profile(self) == profile(other)
            }
            Some(Codec::Vp9) | Some(Codec::Av1) => {
                self.fmtp_param("profile-id")
                    .or(self.fmtp_param("profile"))
                    .unwrap_or("0")
                    == other
                        .fmtp_param("profile-id")
                        .or(other.fmtp_param("profile"))
                        .unwrap_or("0")
            }
            _ => true,
        }
    }

    /// Feedback volna supports on this codec, in the peer's words, and as flags.
    /// The feedback volna keeps from this codec's offer: NACK, PLI, FIR always; REMB when volna
    /// sends it (to publishers); transport-cc when the transport-wide extension was accepted.
    fn supported_feedback(&self, remb: bool, twcc: bool) -> (Vec<&str>, Feedback) {
        let mut fb = Feedback::default();
        let mut lines = Vec::new();
        for f in &self.feedback {
            let keep = match f.as_str() {
                "nack" => {
                    fb.nack = true;
                    true
                }
                "nack pli" => {
                    fb.pli = true;
                    true
                }
                "ccm fir" => {
                    fb.fir = true;
                    true
                }
                "goog-remb" if remb => {
                    fb.remb = true;
                    true
                }
                "transport-cc" => twcc,
                _ => false,
            };
            if keep {
                lines.push(f.as_str());
            }
        }
        (lines, fb)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedMedia {
    pub media: String,
    pub kind: Option<MediaKind>,
    pub port: isize,
    pub protos: Vec<String>,
    pub formats: Vec<String>,
    pub mid: String,
    pub direction: Direction,
    pub codecs: Vec<OfferedCodec>,
    pub extmaps: Vec<(u8, String)>,
    pub ssrc: Option<u32>,
    pub simulcast: bool,
    /// The RIDs the offerer sends as simulcast layers (RFC 8853 `a=simulcast:send`, each with
    /// its `a=rid:... send`), in the offer's order, the first alternative of each, at most
    /// [`MAX_SIMULCAST`]; empty without simulcast. Each with the payload types its `pt=`
    /// restriction allows (RFC 8851 §4; empty: any).
    pub send_rids: Vec<(String, Vec<u8>)>,
    /// RFC 8843 §6: port 0 with `a=bundle-only` is a live m-line inside the BUNDLE group.
    pub bundle_only: bool,
    /// RFC 4796 `a=content:slides`: the video is a presentation (a screen share).
    pub slides: bool,
}

impl OfferedMedia {
    /// Whether the m-line is live (not rejected by the offerer with port 0).
    pub fn active(&self) -> bool {
        self.port != 0 || self.bundle_only
    }

    /// The negotiated extension ids volna understands, as a lookup table.
    pub fn ext_map(&self) -> ExtMap {
        ext_table(&self.extmaps)
    }
}

/// Most simulcast layers volna receives on one m-line.
pub const MAX_SIMULCAST: usize = 4;

/// The send RIDs of an m-line's simulcast attribute (RFC 8853 §5.1): `send` then a `;` list of
/// streams, each a `,` list of alternatives, `~` marking one paused. Each must have its own
/// `a=rid:<id> send` (RFC 8851).
fn send_rids(md: &MediaDescription) -> Vec<(String, Vec<u8>)> {
    let declared: Vec<(&str, Vec<u8>)> = md
        .attributes
        .iter()
        .filter(|a| a.key == "rid")
        .filter_map(|a| {
            let mut it = a.value.as_deref()?.split_whitespace();
            let id = it.next()?;
            if it.next()? != "send" {
                return None;
            }
            let pts = it
                .next()
                .into_iter()
                .flat_map(|r| r.split(';'))
                .filter_map(|r| r.trim().strip_prefix("pt="))
                .flat_map(|list| list.split(','))
                .filter_map(|pt| pt.trim().parse().ok())
                .collect();
            Some((id, pts))
        })
        .collect();
    let Some(sim) = md.attribute("simulcast").flatten() else {
        return Vec::new();
    };
    let mut words = sim.split_whitespace();
    let mut rids = Vec::new();
    while let (Some(dir), Some(list)) = (words.next(), words.next()) {
        if dir != "send" {
            continue;
        }
        for stream in list.split(';') {
            let Some(first) = stream.split(',').next() else {
                continue;
            };
            let id = first.trim_start_matches('~');
            let Some((_, pts)) = declared.iter().find(|(d, _)| *d == id) else {
                continue;
            };
            if !rids.iter().any(|(r, _): &(String, Vec<u8>)| r == id) {
                rids.push((id.to_owned(), pts.clone()));
            }
        }
    }
    rids.truncate(MAX_SIMULCAST);
    rids
}

/// `a=extmap` pairs as a lookup table of the extensions volna understands.
fn ext_table(list: &[(u8, String)]) -> ExtMap {
    let mut m = ExtMap::default();
    for (id, uri) in list {
        if let Some(kind) = ExtKind::from_uri(uri) {
            m.insert(*id, kind);
        }
    }
    m
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    pub fingerprint: String,
    pub setup: Setup,
    pub extmap_allow_mixed: bool,
    pub media: Vec<OfferedMedia>,
}

fn attr<'a>(md: &'a MediaDescription, sd: &'a SessionDescription, key: &str) -> Option<&'a str> {
    md.attribute(key)
        .flatten()
        .or_else(|| sd.attribute(key).map(String::as_str))
}

impl Offer {
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        let sd = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
            .map_err(|e| SdpError::Parse(e.to_string()))?;
        let mut media = Vec::new();
        let (mut ufrag, mut pwd, mut fingerprint, mut setup) = (None, None, None, None);
        for (i, md) in sd.media_descriptions.iter().enumerate() {
            let kind = match md.media_name.media.as_str() {
                "audio" => Some(MediaKind::Audio),
                "video" => Some(MediaKind::Video),
                _ => None,
            };
            let mid = md
                .attribute("mid")
                .flatten()
                .ok_or(SdpError::NoMid(i))?
                .to_owned();
            let bundle_only = md.has_attribute("bundle-only");
            let active = md.media_name.port.value != 0 || bundle_only;
            if kind.is_some() && active {
                if md.media_name.protos.join("/") != "UDP/TLS/RTP/SAVPF" {
                    return Err(SdpError::Protocol(mid));
                }
                if !md.has_attribute("rtcp-mux") {
                    return Err(SdpError::NoRtcpMux(mid));
                }
                ufrag = ufrag.or(attr(md, &sd, "ice-ufrag"));
                pwd = pwd.or(attr(md, &sd, "ice-pwd"));
                fingerprint = fingerprint.or(attr(md, &sd, "fingerprint"));
                setup = setup.or(attr(md, &sd, "setup"));
            }
            let direction = if md.has_attribute("sendonly") {
                Direction::SendOnly
            } else if md.has_attribute("recvonly") {
                Direction::RecvOnly
            } else if md.has_attribute("inactive") {
                Direction::Inactive
            } else {
                Direction::SendRecv
            };
            let table = md.codecs();
            let codecs = md
                .media_name
                .formats
                .iter()
                .filter_map(|f| f.parse::<u8>().ok())
                .filter_map(|pt| table.get(&pt))
                .map(|c| OfferedCodec {
                    payload_type: c.payload_type,
                    codec: Codec::from_name(&c.name),
                    name: c.name.clone(),
                    clock_rate: c.clock_rate,
                    channels: c.encoding_parameters.clone(),
                    fmtp: c.fmtp.clone(),
                    feedback: c.rtcp_feedback.clone(),
                })
                .collect();
            let extmaps = md
                .attributes
                .iter()
                .filter(|a| a.key == "extmap")
                .filter_map(|a| {
                    let v = a.value.as_deref()?;
                    let (id, rest) = v.split_once(' ')?;
                    let id: u8 = id.split('/').next()?.parse().ok()?;
                    let uri = rest.split_whitespace().next()?;
                    Some((id, uri.to_owned()))
                })
                .collect();
            let ssrc = md
                .attributes
                .iter()
                .filter(|a| a.key == "ssrc")
                .find_map(|a| a.value.as_deref()?.split_whitespace().next()?.parse().ok());
            media.push(OfferedMedia {
                media: md.media_name.media.clone(),
                kind,
                port: md.media_name.port.value,
                protos: md.media_name.protos.clone(),
                formats: md.media_name.formats.clone(),
                mid,
                direction,
                codecs,
                extmaps,
                ssrc,
                simulcast: md.has_attribute("simulcast"),
                send_rids: send_rids(md),
                bundle_only,
                slides: md
                    .attribute("content")
                    .flatten()
                    .is_some_and(|v| v.split(',').any(|t| t.trim() == "slides")),
            });
        }
        if !media.iter().any(|m| m.kind.is_some() && m.active()) {
            return Err(SdpError::NoMedia);
        }
        let (Some(ufrag), Some(pwd)) = (ufrag, pwd) else {
            return Err(SdpError::MissingIceCredentials);
        };
        let fingerprint = fingerprint.ok_or(SdpError::MissingFingerprint)?;
        let fingerprint = match fingerprint.split_once(' ') {
            Some((alg, value)) if alg.eq_ignore_ascii_case("sha-256") => {
                value.trim().to_ascii_lowercase()
            }
            _ => return Err(SdpError::UnsupportedFingerprint),
        };
        let setup = match setup.unwrap_or("actpass") {
            "actpass" => Setup::Actpass,
            "active" => Setup::Active,
            "passive" => Setup::Passive,
            other => return Err(SdpError::Setup(other.to_owned())),
        };
        Ok(Self {
            ice_ufrag: ufrag.to_owned(),
            ice_pwd: pwd.to_owned(),
            fingerprint,
            setup,
            extmap_allow_mixed: sd.has_attribute("extmap-allow-mixed"),
            media,
        })
    }
}

mod write;
pub use write::*;

#[cfg(test)]
mod tests;
