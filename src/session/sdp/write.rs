//! The SDP volna writes: answers to WHIP/WHEP and publishing offers, and the offers of a room
//! subscriber's connection, line by line, so that every attribute volna promises is one it
//! honours.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::*;
use crate::core::room::{Feedback, MediaKind};
use crate::core::rtp::{ExtKind, ExtMap};

/// What volna says about itself in every answer.
#[derive(Debug, Clone)]
pub struct Local {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// sha-256 fingerprint of the DTLS certificate, colon-separated upper-case hex.
    pub fingerprint: String,
    /// Where peers reach volna: its ICE host candidates, most preferred first (at least one).
    pub candidates: Vec<SocketAddr>,
    /// The port of passive ICE-TCP candidates (RFC 6544) at the same addresses, if on.
    pub tcp_port: Option<u16>,
    pub session_id: u64,
}

impl Local {
    /// The address for the `o=` and `c=` lines: the first candidate's.
    fn ip(&self) -> std::net::IpAddr {
        self.candidates
            .first()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.ip())
    }
}

/// The `a=candidate` lines for `candidates`, most preferred first, then the same addresses as
/// passive TCP candidates (RFC 6544) on `tcp_port` at a lower priority, and
/// `a=end-of-candidates`.
pub fn write_candidates(s: &mut String, candidates: &[SocketAddr], tcp_port: Option<u16>) {
    for (i, c) in candidates.iter().enumerate() {
        // RFC 8445 §5.1.2.1 host priority, one step lower for each later address.
        let priority = 2_130_706_431u32.saturating_sub(i as u32);
        let _ = write!(
            s,
            "a=candidate:{} 1 udp {priority} {} {} typ host\r\n",
            i + 1,
            c.ip(),
            c.port()
        );
    }
    if let Some(port) = tcp_port {
        for (i, c) in candidates.iter().enumerate() {
            // Type preference 90 (below UDP's 126); local preference from RFC 6544 §4.2
            // (passive direction 4 in the top bits).
            let priority = (90u32 << 24) + ((4u32 << 13) + 8191 - i as u32) * 256 + 255;
            let _ = write!(
                s,
                "a=candidate:{} 1 tcp {priority} {} {port} typ host tcptype passive\r\n",
                candidates.len() + i + 1,
                c.ip(),
            );
        }
    }
    s.push_str("a=end-of-candidates\r\n");
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
    let ip = local.ip();
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
    let ip = local.ip();
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
    let ip = local.ip();
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
        write_candidates(s, &local.candidates, local.tcp_port);
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
