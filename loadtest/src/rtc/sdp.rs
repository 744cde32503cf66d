//! The relay's SDP as a load-test client reads it: ICE credentials, the DTLS fingerprint and
//! role, the host candidates (UDP, and passive TCP), and per m-line its mid, payload types and
//! the mid and rid extension ids; and which payload type of an m-line the client can use.

use std::net::{IpAddr, SocketAddr};

use super::{Kind, RtcError, MID_URI, RID_URI};

/// The remote side as its SDP describes it.
#[derive(Debug, Clone, Default)]
pub(super) struct RemoteSdp {
    pub(super) ufrag: String,
    pub(super) pwd: String,
    pub(super) fingerprint: String,
    pub(super) setup: String,
    pub(super) candidate: Option<SocketAddr>,
    /// The passive ICE-TCP host candidate (RFC 6544), where the relay offers one.
    pub(super) tcp_candidate: Option<SocketAddr>,
    pub(super) media: Vec<RemoteMedia>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct RemoteMedia {
    pub(super) kind: String,
    pub(super) port: u16,
    pub(super) proto: String,
    pub(super) formats: Vec<String>,
    pub(super) mid: String,
    /// Payload type → encoding name (lower case).
    pub(super) rtpmap: Vec<(u8, String)>,
    pub(super) mid_ext: Option<u8>,
    pub(super) rid_ext: Option<u8>,
}

/// A line-by-line SDP reader: session attributes are defaults for every m-line.
pub(super) fn parse_sdp(text: &str, family_v4: bool) -> Result<RemoteSdp, RtcError> {
    let mut r = RemoteSdp::default();
    let mut cur: Option<RemoteMedia> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            if let Some(done) = cur.take() {
                r.media.push(done);
            }
            let mut f = m.split_whitespace();
            cur = Some(RemoteMedia {
                kind: f.next().unwrap_or("").to_owned(),
                port: f.next().and_then(|p| p.parse().ok()).unwrap_or(0),
                proto: f.next().unwrap_or("").to_owned(),
                formats: f.map(str::to_owned).collect(),
                ..Default::default()
            });
            continue;
        }
        let Some(a) = line.strip_prefix("a=") else {
            continue;
        };
        let (key, value) = a.split_once(':').unwrap_or((a, ""));
        match key {
            "ice-ufrag" if r.ufrag.is_empty() => r.ufrag = value.to_owned(),
            "ice-pwd" if r.pwd.is_empty() => r.pwd = value.to_owned(),
            "fingerprint" if r.fingerprint.is_empty() => {
                if let Some((alg, fp)) = value.split_once(' ') {
                    if alg.eq_ignore_ascii_case("sha-256") {
                        r.fingerprint = fp.trim().to_ascii_lowercase();
                    }
                }
            }
            "setup" if r.setup.is_empty() => r.setup = value.to_owned(),
            "candidate" if r.tcp_candidate.is_none() && value.contains("tcptype passive") => {
                let f: Vec<&str> = value.split_whitespace().collect();
                if f.len() >= 8 && f[1] == "1" && f[2].eq_ignore_ascii_case("tcp") {
                    if let (Ok(ip), Ok(port)) = (f[4].parse::<IpAddr>(), f[5].parse::<u16>()) {
                        if ip.is_ipv4() == family_v4 {
                            r.tcp_candidate = Some(SocketAddr::new(ip, port));
                        }
                    }
                }
            }
            "candidate" if r.candidate.is_none() => {
                // foundation component transport priority ip port "typ" type ...
                let f: Vec<&str> = value.split_whitespace().collect();
                if f.len() >= 8
                    && f[1] == "1"
                    && f[2].eq_ignore_ascii_case("udp")
                    && f[6] == "typ"
                    && f[7] == "host"
                {
                    if let (Ok(ip), Ok(port)) = (f[4].parse::<IpAddr>(), f[5].parse::<u16>()) {
                        if ip.is_ipv4() == family_v4 {
                            r.candidate = Some(SocketAddr::new(ip, port));
                        }
                    }
                }
            }
            "mid" => {
                if let Some(m) = cur.as_mut() {
                    m.mid = value.to_owned();
                }
            }
            "rtpmap" => {
                if let (Some(m), Some((pt, enc))) = (cur.as_mut(), value.split_once(' ')) {
                    if let Ok(pt) = pt.parse() {
                        let name = enc.split('/').next().unwrap_or("").to_ascii_lowercase();
                        m.rtpmap.push((pt, name));
                    }
                }
            }
            "extmap" => {
                if let (Some(m), Some((id, uri))) = (cur.as_mut(), value.split_once(' ')) {
                    let id = id.split('/').next().and_then(|i| i.parse().ok());
                    match uri.split_whitespace().next() {
                        Some(MID_URI) => m.mid_ext = id,
                        Some(RID_URI) => m.rid_ext = id,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(done) = cur.take() {
        r.media.push(done);
    }
    if r.ufrag.is_empty() || r.pwd.is_empty() {
        return Err(RtcError::Sdp("no ICE credentials".into()));
    }
    if r.fingerprint.is_empty() {
        return Err(RtcError::Sdp("no sha-256 fingerprint".into()));
    }
    Ok(r)
}

/// The opus or VP8 payload type of a relay's m-line.
pub(super) fn usable_pt(m: &RemoteMedia) -> Option<(Kind, u8)> {
    let want = match m.kind.as_str() {
        "audio" => (Kind::Audio, "opus"),
        "video" => (Kind::Video, "vp8"),
        _ => return None,
    };
    m.formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok())
        .find(|pt| m.rtpmap.iter().any(|(p, n)| p == pt && n == want.1))
        .map(|pt| (want.0, pt))
}
