//! SDP offers from WHIP/WHEP clients (RFC 8829 JSEP, RFC 8866) and the answers volna builds.
//! Offers are parsed with `rtc-sdp`; the answer is written here, line by line, so that every
//! attribute volna promises is one it honours.

use std::fmt::Write as _;
use std::io::Cursor;
use std::net::SocketAddr;

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

/// What volna says about itself in every answer.
#[derive(Debug, Clone)]
pub struct Local {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// sha-256 fingerprint of the DTLS certificate, colon-separated upper-case hex.
    pub fingerprint: String,
    pub candidate: SocketAddr,
    pub session_id: u64,
}

/// What volna sends on an accepted m-line of a viewer.
#[derive(Debug, Clone)]
pub struct Source {
    pub ssrc: u32,
    pub cname: String,
    pub stream_id: String,
    pub track_id: String,
    /// The RTX stream (RFC 4588) that repairs this one: payload type and SSRC.
    pub rtx: Option<(u8, u32)>,
    /// The RED payload type (RFC 2198) volna may send this audio in, with the codec's own
    /// frames as the blocks.
    pub red: Option<u8>,
}

/// The answer to one offered m-line.
#[derive(Debug, Clone)]
pub enum AnswerMedia {
    Rejected,
    Accepted {
        codec: Box<OfferedCodec>,
        direction: Direction,
        /// Extensions accepted (subset of the offer's, same ids).
        ext: Vec<(u8, String)>,
        source: Option<Source>,
        /// Whether goog-remb may be kept (volna sends REMB to publishers).
        remb: bool,
        /// Simulcast layers received, by RID (answered `a=rid:... recv` and `a=simulcast:recv`).
        rids: Vec<String>,
    },
}

impl AnswerMedia {
    /// Accepts `codec` on `offered` with the extensions volna handles from `wanted`.
    pub fn accept(
        offered: &OfferedMedia,
        codec: OfferedCodec,
        direction: Direction,
        wanted: &[ExtKind],
        source: Option<Source>,
        remb: bool,
    ) -> Self {
        let ext: Vec<(u8, String)> = offered
            .extmaps
            .iter()
            .filter(|(_, uri)| ExtKind::from_uri(uri).is_some_and(|k| wanted.contains(&k)))
            .cloned()
            .collect();
        // Layers can be told apart only by the RID extension.
        let has_rid = ext.iter().any(|(_, uri)| uri == ExtKind::RtpStreamId.uri());
        // A layer restricted to payload types other than the one chosen is not received.
        let rids = if direction == Direction::RecvOnly && has_rid {
            offered
                .send_rids
                .iter()
                .filter(|(_, pts)| pts.is_empty() || pts.contains(&codec.payload_type))
                .map(|(rid, _)| rid.clone())
                .collect()
        } else {
            Vec::new()
        };
        AnswerMedia::Accepted {
            codec: Box::new(codec),
            direction,
            ext,
            source,
            remb,
            rids,
        }
    }

    /// The simulcast layers accepted, by RID (empty: one stream).
    pub fn rids(&self) -> &[String] {
        match self {
            AnswerMedia::Accepted { rids, .. } => rids,
            AnswerMedia::Rejected => &[],
        }
    }

    /// The accepted extensions as a lookup table (empty when rejected).
    pub fn ext_map(&self) -> ExtMap {
        match self {
            AnswerMedia::Accepted { ext, .. } => ext_table(ext),
            AnswerMedia::Rejected => ExtMap::default(),
        }
    }

    pub fn feedback(&self) -> Feedback {
        match self {
            AnswerMedia::Accepted {
                codec, remb, ext, ..
            } => codec.supported_feedback(*remb, has_twcc(ext)).1,
            AnswerMedia::Rejected => Feedback::default(),
        }
    }
}

fn has_twcc(ext: &[(u8, String)]) -> bool {
    ext.iter()
        .any(|(_, uri)| uri == ExtKind::TransportWideCc.uri())
}

/// Setup attribute of the answer: volna is the DTLS server unless the offerer insists on it.
pub fn answer_setup(offer: Setup) -> &'static str {
    match offer {
        Setup::Passive => "active",
        Setup::Actpass | Setup::Active => "passive",
    }
}

/// One live m-line to write, in an offer or an answer.
struct MediaLine<'a> {
    media: &'a str,
    mid: &'a str,
    kind: Option<MediaKind>,
    codec: &'a OfferedCodec,
    feedback: Vec<&'a str>,
    ext: &'a [(u8, String)],
    direction: Direction,
    source: Option<&'a Source>,
    rids: &'a [String],
}

/// The session part: origin, BUNDLE group, ICE-lite.
fn write_session(s: &mut String, local: &Local, version: u64, bundle: &[&str], allow_mixed: bool) {
    let ip = local.candidate.ip();
    let ipv = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let _ = write!(
        s,
        "v=0\r\no=volna {} {version} IN {ipv} {ip}\r\ns=-\r\nt=0 0\r\n",
        local.session_id
    );
    if !bundle.is_empty() {
        let _ = write!(s, "a=group:BUNDLE {}\r\n", bundle.join(" "));
    }
    s.push_str("a=ice-lite\r\n");
    if allow_mixed {
        s.push_str("a=extmap-allow-mixed\r\n");
    }
    s.push_str("a=msid-semantic: WMS *\r\n");
}

/// A rejected (port 0) m-line. Fingerprint and setup are repeated because some stacks
/// (GStreamer webrtcbin) look for them on every m-line.
fn write_rejected(
    s: &mut String,
    local: &Local,
    setup: &str,
    media: &str,
    proto: &str,
    fmt: &str,
    mid: &str,
) {
    let ip = local.candidate.ip();
    let ipv = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let _ = write!(
        s,
        "m={media} 0 {proto} {fmt}\r\nc=IN {ipv} {ip}\r\na=mid:{mid}\r\na=inactive\r\n"
    );
    let _ = write!(
        s,
        "a=fingerprint:sha-256 {}\r\na=setup:{setup}\r\n",
        local.fingerprint
    );
}

fn write_media(s: &mut String, local: &Local, setup: &str, m: &MediaLine<'_>, candidate: bool) {
    let ip = local.candidate.ip();
    let ipv = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let codec = m.codec;
    let pt = codec.payload_type;
    let rtx = m.source.and_then(|src| src.rtx);
    let red = m.source.and_then(|src| src.red);
    let mut formats = pt.to_string();
    for extra in [red, rtx.map(|(p, _)| p)].into_iter().flatten() {
        let _ = write!(formats, " {extra}");
    }
    let _ = write!(
        s,
        "m={} 9 UDP/TLS/RTP/SAVPF {formats}\r\nc=IN {ipv} {ip}\r\n",
        m.media
    );
    let _ = write!(s, "a=mid:{}\r\n", m.mid);
    let _ = write!(
        s,
        "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
        local.ice_ufrag, local.ice_pwd
    );
    let _ = write!(
        s,
        "a=fingerprint:sha-256 {}\r\na=setup:{setup}\r\n",
        local.fingerprint
    );
    for (id, uri) in m.ext {
        let _ = write!(s, "a=extmap:{id} {uri}\r\n");
    }
    let _ = write!(s, "a={}\r\na=rtcp-mux\r\n", m.direction.as_str());
    if m.kind == Some(MediaKind::Video) {
        s.push_str("a=rtcp-rsize\r\n");
    }
    if codec.channels.is_empty() {
        let _ = write!(s, "a=rtpmap:{pt} {}/{}\r\n", codec.name, codec.clock_rate);
    } else {
        let _ = write!(
            s,
            "a=rtpmap:{pt} {}/{}/{}\r\n",
            codec.name, codec.clock_rate, codec.channels
        );
    }
    for fb in &m.feedback {
        let _ = write!(s, "a=rtcp-fb:{pt} {fb}\r\n");
    }
    if !codec.fmtp.is_empty() {
        let _ = write!(s, "a=fmtp:{pt} {}\r\n", codec.fmtp);
    }
    if let Some((rtx_pt, _)) = rtx {
        let _ = write!(
            s,
            "a=rtpmap:{rtx_pt} rtx/{}\r\na=fmtp:{rtx_pt} apt={pt}\r\n",
            codec.clock_rate
        );
    }
    if let Some(red_pt) = red {
        if codec.channels.is_empty() {
            let _ = write!(s, "a=rtpmap:{red_pt} red/{}\r\n", codec.clock_rate);
        } else {
            let _ = write!(
                s,
                "a=rtpmap:{red_pt} red/{}/{}\r\n",
                codec.clock_rate, codec.channels
            );
        }
        let _ = write!(s, "a=fmtp:{red_pt} {pt}/{pt}\r\n");
    }
    if !m.rids.is_empty() {
        for rid in m.rids {
            let _ = write!(s, "a=rid:{rid} recv\r\n");
        }
        let _ = write!(s, "a=simulcast:recv {}\r\n", m.rids.join(";"));
    }
    if let Some(src) = m.source {
        let _ = write!(s, "a=msid:{} {}\r\n", src.stream_id, src.track_id);
        // The media SSRC first: receivers take the first one listed as the stream's own.
        for ssrc in std::iter::once(src.ssrc).chain(src.rtx.map(|(_, r)| r)) {
            let _ = write!(s, "a=ssrc:{ssrc} cname:{}\r\n", src.cname);
            let _ = write!(
                s,
                "a=ssrc:{ssrc} msid:{} {}\r\n",
                src.stream_id, src.track_id
            );
        }
        if let Some((_, rtx_ssrc)) = src.rtx {
            let _ = write!(s, "a=ssrc-group:FID {} {rtx_ssrc}\r\n", src.ssrc);
        }
    }
    if candidate {
        let _ = write!(
            s,
            "a=candidate:1 1 udp 2130706431 {ip} {} typ host\r\n",
            local.candidate.port()
        );
        s.push_str("a=end-of-candidates\r\n");
    }
}

/// Writes the answer. `media` has one entry per offered m-line, in order.
pub fn build_answer(offer: &Offer, local: &Local, media: &[AnswerMedia]) -> String {
    let mut s = String::with_capacity(2048);
    let accepted: Vec<&str> = offer
        .media
        .iter()
        .zip(media)
        .filter(|(_, a)| matches!(a, AnswerMedia::Accepted { .. }))
        .map(|(m, _)| m.mid.as_str())
        .collect();
    write_session(&mut s, local, 2, &accepted, offer.extmap_allow_mixed);
    let setup = answer_setup(offer.setup);
    let mut first = true;
    for (m, a) in offer.media.iter().zip(media) {
        match a {
            AnswerMedia::Rejected => {
                let fmt = m.formats.first().map_or("0", String::as_str);
                write_rejected(
                    &mut s,
                    local,
                    setup,
                    &m.media,
                    &m.protos.join("/"),
                    fmt,
                    &m.mid,
                );
            }
            AnswerMedia::Accepted {
                codec,
                direction,
                ext,
                source,
                remb,
                rids,
            } => {
                let line = MediaLine {
                    media: &m.media,
                    mid: &m.mid,
                    kind: m.kind,
                    codec,
                    feedback: codec.supported_feedback(*remb, has_twcc(ext)).0,
                    ext,
                    direction: *direction,
                    source: source.as_ref(),
                    rids,
                };
                write_media(&mut s, local, setup, &line, first);
                first = false;
            }
        }
    }
    s
}

/// The same description with new ICE credentials (an ICE restart) and the next `o=` version.
pub fn with_ice_credentials(sdp: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 16);
    for line in sdp.split_terminator("\r\n") {
        if line.starts_with("a=ice-ufrag:") {
            let _ = write!(out, "a=ice-ufrag:{ufrag}");
        } else if line.starts_with("a=ice-pwd:") {
            let _ = write!(out, "a=ice-pwd:{pwd}");
        } else if let Some(o) = line.strip_prefix("o=") {
            let mut f: Vec<String> = o.split(' ').map(str::to_owned).collect();
            if let Some(v) = f.get_mut(2).and_then(|v| Some((v.parse::<u64>().ok()?, v))) {
                *v.1 = (v.0 + 1).to_string();
            }
            let _ = write!(out, "o={}", f.join(" "));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

/// One m-line of an offer volna makes to a room subscriber.
#[derive(Debug, Clone)]
pub struct OfferLine {
    pub mid: String,
    pub kind: MediaKind,
    pub codec: OfferedCodec,
    pub ext: Vec<(u8, String)>,
    /// `None` for an m-line whose track has ended: it is offered with port 0 (stopped), or
    /// `a=inactive` when it stays in the BUNDLE group (`bundled`).
    pub source: Option<Source>,
    /// In the BUNDLE group: every line with a track, and the tag line (first) even without one,
    /// so that the group's tag stays a live line (RFC 8843 §7).
    pub bundled: bool,
}

/// Writes an offer (volna sends, the peer receives). `version` must grow with each offer.
pub fn build_offer(local: &Local, version: u64, lines: &[OfferLine]) -> String {
    let mut s = String::with_capacity(1024 + 512 * lines.len());
    let bundle: Vec<&str> = lines
        .iter()
        .filter(|l| l.bundled)
        .map(|l| l.mid.as_str())
        .collect();
    write_session(&mut s, local, version, &bundle, false);
    let mut first = true;
    for l in lines {
        let media = match l.kind {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        };
        if !l.bundled {
            let fmt = l.codec.payload_type.to_string();
            write_rejected(
                &mut s,
                local,
                "actpass",
                media,
                "UDP/TLS/RTP/SAVPF",
                &fmt,
                &l.mid,
            );
            continue;
        }
        let line = MediaLine {
            media,
            mid: &l.mid,
            kind: Some(l.kind),
            codec: &l.codec,
            feedback: l.codec.feedback.iter().map(String::as_str).collect(),
            ext: &l.ext,
            direction: if l.source.is_some() {
                Direction::SendOnly
            } else {
                Direction::Inactive
            },
            source: l.source.as_ref(),
            rids: &[],
        };
        write_media(&mut s, local, "actpass", &line, first);
        first = false;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const CHROME_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS s\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\na=sendonly\r\na=msid:s a\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\na=ssrc:1111 cname:x\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:1\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:13 urn:3gpp:video-orientation\r\na=sendonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\na=rtcp-fb:96 ccm fir\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\na=ssrc-group:FID 2222 3333\r\na=ssrc:2222 cname:x\r\na=ssrc:3333 cname:x\r\n";

    fn test_local() -> Local {
        Local {
            ice_ufrag: "uf".into(),
            ice_pwd: "pw".into(),
            fingerprint: "01:02".into(),
            candidate: "127.0.0.1:5000".parse().unwrap(),
            session_id: 7,
        }
    }

    #[test]
    fn parses_a_browser_offer() {
        let o = Offer::parse(CHROME_OFFER).unwrap();
        assert_eq!(
            (o.ice_ufrag.as_str(), o.fingerprint.as_str(), o.setup),
            ("abcd", "aa:bb:cc", Setup::Actpass)
        );
        assert_eq!(o.media.len(), 2);
        let a = &o.media[0];
        assert_eq!(
            (a.kind, a.mid.as_str(), a.direction, a.ssrc),
            (Some(MediaKind::Audio), "0", Direction::SendOnly, Some(1111))
        );
        assert_eq!(a.codecs[0].codec, Some(Codec::Opus));
        assert_eq!(a.codecs[1].name, "PCMU");
        assert_eq!(a.ext_map().id(ExtKind::Mid), Some(4));
        let v = &o.media[1];
        assert_eq!(
            v.codecs.iter().map(|c| c.payload_type).collect::<Vec<_>>(),
            vec![96, 97, 102]
        );
        assert_eq!(v.ssrc, Some(2222));
        assert!(v.codecs[0].feedback.contains(&"nack pli".to_owned()));
    }

    /// RFC 8853 simulcast: the send RIDs in the simulcast attribute's order, first alternatives,
    /// `~` (paused) stripped, each needing its `a=rid:... send`; the answer receives them.
    /// RFC 4796: `a=content:slides` (alone or in a list) marks a presentation.
    #[test]
    fn content_slides_marks_a_presentation() {
        for (line, slides) in [
            ("", false),
            ("a=content:slides\r\n", true),
            ("a=content:main,slides\r\n", true),
            ("a=content:main\r\n", false),
        ] {
            let sdp = CHROME_OFFER.replace("a=mid:1\r\n", &format!("a=mid:1\r\n{line}"));
            let o = Offer::parse(&sdp).unwrap();
            assert_eq!(o.media[1].slides, slides, "{line:?}");
            assert!(!o.media[0].slides);
        }
    }

    #[test]
    fn simulcast_rids_are_read_and_answered() {
        let table: &[(&str, &[&str])] = &[
            (
                "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n",
                &["q", "h", "f"],
            ),
            (
                "a=rid:1 send\r\na=rid:2 send\r\na=simulcast:send ~2;1\r\n",
                &["2", "1"],
            ),
            (
                "a=rid:a send\r\na=rid:b send\r\na=simulcast:send a,b\r\n",
                &["a"],
            ),
            ("a=rid:a send\r\na=simulcast:send a;zz\r\n", &["a"]),
            ("a=rid:a recv\r\na=simulcast:recv a\r\n", &[]),
            ("a=rid:a send\r\n", &[]),
            // RFC 8851 restrictions: a layer only for payload type 97 is not received as VP8 (96).
            (
                "a=rid:q send pt=96;max-width=320\r\na=rid:x send pt=97\r\na=simulcast:send q;x\r\n",
                &["q"],
            ),
        ];
        let rid_ext = "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n";
        for (lines, want) in table {
            let sdp = format!("{CHROME_OFFER}{rid_ext}{lines}");
            let o = Offer::parse(&sdp).unwrap();
            let codec = o.media[1].codecs[0].clone();
            let wanted = [ExtKind::Mid, ExtKind::RtpStreamId];
            let a =
                AnswerMedia::accept(&o.media[1], codec, Direction::RecvOnly, &wanted, None, true);
            assert_eq!(a.rids(), *want);
            let answer = build_answer(&o, &test_local(), &[AnswerMedia::Rejected, a]);
            if want.is_empty() {
                assert!(!answer.contains("a=simulcast"), "{answer}");
            } else {
                assert!(answer.contains(&format!("a=simulcast:recv {}\r\n", want.join(";"))));
                for r in *want {
                    assert!(answer.contains(&format!("a=rid:{r} recv\r\n")), "{answer}");
                }
                assert!(answer.contains(rid_ext), "the RID extension is accepted");
            }
        }
        // Without the RID extension the layers cannot be told apart: no simulcast.
        let sdp = format!("{CHROME_OFFER}{}", table[0].0);
        let o = Offer::parse(&sdp).unwrap();
        let codec = o.media[1].codecs[0].clone();
        let a = AnswerMedia::accept(
            &o.media[1],
            codec,
            Direction::RecvOnly,
            &[ExtKind::Mid],
            None,
            true,
        );
        assert!(a.rids().is_empty());
    }

    #[test]
    fn rejects_bad_offers() {
        let cases: Vec<(&str, String, &str)> = vec![
            ("garbage", "hello".into(), "does not parse"),
            (
                "no ice",
                CHROME_OFFER.replace("a=ice-ufrag:abcd\r\n", ""),
                "ice-ufrag",
            ),
            (
                "no fingerprint",
                CHROME_OFFER.replace("a=fingerprint:sha-256 AA:BB:CC\r\n", ""),
                "fingerprint",
            ),
            (
                "sha-1 only",
                CHROME_OFFER.replace("sha-256 AA", "sha-1 AA"),
                "sha-256",
            ),
            (
                "no rtcp-mux",
                CHROME_OFFER.replace("a=rtcp-mux\r\n", ""),
                "rtcp-mux",
            ),
            (
                "plain RTP",
                CHROME_OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"),
                "UDP/TLS/RTP/SAVPF",
            ),
            ("no mid", CHROME_OFFER.replace("a=mid:0\r\n", ""), "a=mid"),
            (
                "bad setup",
                CHROME_OFFER.replace("setup:actpass", "setup:holdconn"),
                "setup",
            ),
        ];
        for (name, sdp, want) in cases {
            let err = Offer::parse(&sdp).expect_err(name).to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn answer_mirrors_offer() {
        let o = Offer::parse(CHROME_OFFER).unwrap();
        let local = test_local();
        let audio = AnswerMedia::accept(
            &o.media[0],
            o.media[0].codecs[0].clone(),
            Direction::RecvOnly,
            &[ExtKind::Mid, ExtKind::AudioLevel],
            None,
            true,
        );
        let video = AnswerMedia::accept(
            &o.media[1],
            o.media[1].codecs[0].clone(),
            Direction::RecvOnly,
            &[ExtKind::Mid],
            None,
            true,
        );
        assert_eq!(
            video.feedback(),
            Feedback {
                nack: true,
                pli: true,
                fir: true,
                remb: true
            }
        );
        let text = build_answer(&o, &local, &[audio, video]);
        for line in [
            "a=group:BUNDLE 0 1",
            "a=ice-lite",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=setup:passive",
            "a=recvonly",
            "a=rtcp-fb:96 nack pli",
            "a=rtcp-fb:96 goog-remb",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
        ] {
            assert!(
                text.contains(&format!("{line}\r\n")),
                "missing {line}\n{text}"
            );
        }
        assert!(
            !text.contains("transport-cc"),
            "unsupported feedback must not be echoed"
        );
        assert!(
            !text.contains("a=extmap:13"),
            "unrequested extension must not be echoed"
        );
        // The answer is valid SDP to our own parser too (as a round trip check of syntax).
        SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes())).unwrap();
    }

    #[test]
    fn bundle_only_m_line_is_live() {
        let sdp = CHROME_OFFER
            .replace("m=video 9 UDP", "m=video 0 UDP")
            .replace("a=mid:1\r\n", "a=mid:1\r\na=bundle-only\r\n");
        let o = Offer::parse(&sdp).unwrap();
        assert!(o.media[1].active());
        let rejected = CHROME_OFFER.replace("m=video 9 UDP", "m=video 0 UDP");
        assert!(!Offer::parse(&rejected).unwrap().media[1].active());
    }

    #[test]
    fn new_ice_credentials_keep_the_rest() {
        let before = "v=0\r\no=volna 7 2 IN IP4 127.0.0.1\r\ns=-\r\nm=audio 9 X 0\r\na=ice-ufrag:old1\r\na=ice-pwd:oldpwd\r\na=mid:0\r\nm=video 9 X 1\r\na=ice-ufrag:old1\r\na=ice-pwd:oldpwd\r\n";
        let after = with_ice_credentials(before, "new2", "newpwd");
        assert_eq!(
            after,
            before
                .replace("old1", "new2")
                .replace("oldpwd", "newpwd")
                .replace("7 2 IN", "7 3 IN")
        );
    }

    #[test]
    fn offer_with_parked_and_stopped_lines() {
        let local = test_local();
        let codec = Offer::parse(CHROME_OFFER).unwrap().media[1].codecs[0].clone();
        let src = Source {
            ssrc: 42,
            cname: "c".into(),
            stream_id: "s".into(),
            track_id: "t".into(),
            rtx: None,
            red: None,
        };
        let line = |mid: &str, source: Option<Source>, bundled| OfferLine {
            mid: mid.into(),
            kind: MediaKind::Video,
            codec: codec.clone(),
            ext: vec![(1, ExtKind::Mid.uri().into())],
            source,
            bundled,
        };
        // The tag line without a track (parked), a stopped line, a live one.
        let lines = [
            line("0", None, true),
            line("4", None, false),
            line("5", Some(src), true),
        ];
        let text = build_offer(&local, 3, &lines);
        for want in [
            "o=volna 7 3 IN IP4",
            "a=group:BUNDLE 0 5\r\n",
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n",
            "m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\na=mid:4\r\n",
            "a=inactive\r\na=rtcp-mux",
            "a=setup:actpass",
            "a=sendonly",
            "a=ssrc:42 msid:s t",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
        // The candidate goes on the tag line, which is live even without a track.
        let tag = &text[text.find("a=mid:0").unwrap()..text.find("a=mid:4").unwrap()];
        assert!(
            tag.contains("a=candidate:") && !tag.contains("a=msid"),
            "{tag}"
        );
        assert_eq!(text.matches("a=candidate:").count(), 1);
        // A browser would parse it: so does our parser, with all m-lines.
        let parsed = Offer::parse(&text).unwrap();
        let live: Vec<bool> = parsed.media.iter().map(OfferedMedia::active).collect();
        assert_eq!(live, [true, false, true]);
    }

    #[test]
    fn h264_compatibility() {
        let c = |fmtp: &str| OfferedCodec {
            payload_type: 102,
            codec: Some(Codec::H264),
            name: "H264".into(),
            clock_rate: 90000,
            channels: String::new(),
            fmtp: fmtp.into(),
            feedback: vec![],
        };
        let base = c("packetization-mode=1;profile-level-id=42e01f");
        assert!(base.compatible(&c("profile-level-id=42e034;packetization-mode=1")));
        assert!(!base.compatible(&c("packetization-mode=0;profile-level-id=42e01f")));
        assert!(!base.compatible(&c("packetization-mode=1;profile-level-id=640c1f")));
    }
}
