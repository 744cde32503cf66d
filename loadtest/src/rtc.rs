//! A load-test WebRTC endpoint: one UDP socket, SDP offers and answers as relays expect them, a
//! full ICE agent over the one remote host candidate, DTLS-SRTP as the DTLS client, and stamped
//! media. Senders put the send time (ns since a process-wide epoch) and a per-stream counter in
//! every payload; receivers turn them into latency and loss in the shared [`Shared`] recorder.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc_crypto::{HashAlgorithm, RTCCryptoProvider};
use rtc_dtls::config::{ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_shared::TransportProtocol;
use rtc_srtp::context::Context;
use rtc_srtp::protection_profile::ProtectionProfile;
use rtc_stun::attributes::{
    ATTR_ICE_CONTROLLED, ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USERNAME, ATTR_USE_CANDIDATE,
};
use rtc_stun::fingerprint::FINGERPRINT;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::{
    Message, Setter, TransactionId, BINDING_REQUEST, BINDING_SUCCESS, CLASS_ERROR_RESPONSE,
};
use rtc_stun::textattrs::TextAttribute;
use rtc_stun::xoraddr::XorMappedAddress;

use crate::target::SdpEndpoint;

pub const OPUS_PT: u8 = 111;
pub const VP8_PT: u8 = 96;
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// Extension id our offers use for the mid.
const MID_EXT_ID: u8 = 4;
/// Largest RTP payload a video packet carries.
const MAX_VIDEO_PAYLOAD: usize = 1200;
const AUDIO_PAYLOAD: usize = 100;
/// Bytes of send time and counter in every payload.
const STAMP: usize = 16;
/// Connectivity checks until the first success, then consent freshness.
const CHECK_FAST: Duration = Duration::from_millis(50);
const CHECK_SLOW: Duration = Duration::from_secs(2);
/// How often a client's samples go to the shared recorder (fewer locks).
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The DTLS association is keyed by this placeholder: the socket knows the real peer.
const PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 9));

/// All clients stamp against this instant, so a receiver can subtract another client's stamp.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The wall clock at [`epoch`], to turn the kernel's receive timestamps (CLOCK_REALTIME) into
/// nanoseconds since the epoch.
fn realtime_at_epoch_ns() -> i128 {
    static AT: OnceLock<i128> = OnceLock::new();
    *AT.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        wall - epoch().elapsed().as_nanos() as i128
    })
}

/// Asks the kernel to stamp each datagram's arrival (SO_TIMESTAMPNS), so latency does not
/// include the time the load generator takes to get to a packet.
#[cfg(target_os = "linux")]
fn enable_rx_timestamps(socket: &tokio::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a pointer to a live c_int with its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let _ = realtime_at_epoch_ns();
}

#[cfg(not(target_os = "linux"))]
fn enable_rx_timestamps(_socket: &tokio::net::UdpSocket) {}

/// One datagram with its sender and, where the kernel stamped it, its arrival in ns since
/// [`epoch`].
#[cfg(target_os = "linux")]
fn recv_stamped(
    socket: &tokio::net::UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<u64>)> {
    use std::os::fd::AsRawFd;
    socket.try_io(tokio::io::Interest::READABLE, || {
        // SAFETY: msghdr points at live buffers of the stated sizes for the duration of the call;
        // the control messages are read with the CMSG_* helpers within `control`.
        unsafe {
            let mut name: libc::sockaddr_storage = std::mem::zeroed();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut control = [0u64; 16];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let from = match name.ss_family as libc::c_int {
                libc::AF_INET => {
                    let a = &*(&name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                    SocketAddr::from((
                        u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                        u16::from_be(a.sin_port),
                    ))
                }
                libc::AF_INET6 => {
                    let a = &*(&name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                    SocketAddr::from((a.sin6_addr.s6_addr, u16::from_be(a.sin6_port)))
                }
                _ => return Err(std::io::ErrorKind::InvalidData.into()),
            };
            let mut stamp = None;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                    let wall = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
                    stamp = u64::try_from(wall - realtime_at_epoch_ns()).ok();
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            Ok((n as usize, from, stamp))
        }
    })
}

#[cfg(not(target_os = "linux"))]
fn recv_stamped(
    socket: &tokio::net::UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<u64>)> {
    socket.try_recv_from(buf).map(|(n, from)| (n, from, None))
}

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("SDP: {0}")]
    Sdp(String),
    #[error("DTLS: {0}")]
    Dtls(String),
    #[error("SRTP: {0}")]
    Srtp(String),
}

/// The DTLS certificate all clients share (making one per client only costs start-up time).
#[derive(Clone)]
pub struct Identity {
    certificate: Certificate,
    fingerprint: String,
    provider: Arc<dyn RTCCryptoProvider>,
}

impl Identity {
    pub fn generate() -> Result<Self, RtcError> {
        let provider =
            rtc_crypto::default_provider().map_err(|e| RtcError::Certificate(e.to_string()))?;
        let certificate =
            Certificate::generate_self_signed(vec!["volna-load".to_owned()], provider.crypto())
                .map_err(|e| RtcError::Certificate(e.to_string()))?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| RtcError::Certificate("empty chain".into()))?;
        let fingerprint = sha256_fingerprint(&provider, der.as_ref())
            .ok_or_else(|| RtcError::Certificate("hash failed".into()))?;
        Ok(Self {
            certificate,
            fingerprint,
            provider,
        })
    }
}

fn sha256_fingerprint(provider: &Arc<dyn RTCCryptoProvider>, der: &[u8]) -> Option<String> {
    let digest = provider.crypto().hash(HashAlgorithm::Sha256, der).ok()?;
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audio,
    Video,
}

/// What one client does.
#[derive(Debug, Clone)]
pub struct Role {
    pub send_audio: bool,
    pub send_video: bool,
    pub recv_audio: bool,
    pub recv_video: bool,
    pub video_kbps: u32,
}

impl Role {
    pub fn publisher(video: bool, video_kbps: u32) -> Self {
        Role {
            send_audio: true,
            send_video: video,
            recv_audio: false,
            recv_video: false,
            video_kbps,
        }
    }
    pub fn subscriber(video: bool) -> Self {
        Role {
            send_audio: false,
            send_video: false,
            recv_audio: true,
            recv_video: video,
            video_kbps: 0,
        }
    }
}

/// Connection progress, readable while the client runs.
pub const STATE_CONNECTING: u8 = 0;
pub const STATE_CONNECTED: u8 = 1;
pub const STATE_FAILED: u8 = 2;

/// The remote side as its SDP describes it.
#[derive(Debug, Clone, Default)]
struct RemoteSdp {
    ufrag: String,
    pwd: String,
    fingerprint: String,
    setup: String,
    candidate: Option<SocketAddr>,
    media: Vec<RemoteMedia>,
}

#[derive(Debug, Clone, Default)]
struct RemoteMedia {
    kind: String,
    port: u16,
    proto: String,
    formats: Vec<String>,
    mid: String,
    /// Payload type → encoding name (lower case).
    rtpmap: Vec<(u8, String)>,
    mid_ext: Option<u8>,
}

/// A line-by-line SDP reader: session attributes are defaults for every m-line.
fn parse_sdp(text: &str, family_v4: bool) -> Result<RemoteSdp, RtcError> {
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
                    if uri.split_whitespace().next() == Some(MID_URI) {
                        m.mid_ext = id.split('/').next().and_then(|i| i.parse().ok());
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

fn random_token(len: usize) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|_| ALPHA[rand::random::<usize>() % ALPHA.len()] as char)
        .collect()
}

/// One stream this client sends.
#[derive(Debug, Clone)]
struct Outgoing {
    kind: Kind,
    mid: String,
    ssrc: u32,
    pt: u8,
}

/// A client between signalling and [`RtcClient::start`].
pub struct RtcClient {
    pub name: String,
    socket: std::net::UdpSocket,
    local: SocketAddr,
    ufrag: String,
    pwd: String,
    identity: Identity,
    role: Role,
    outgoing: Vec<Outgoing>,
    remote: Option<RemoteSdp>,
    controlling: bool,
    mid_ext: Option<u8>,
    video_pts: Vec<u8>,
}

impl RtcClient {
    pub fn new(name: String, ip: IpAddr, identity: Identity, role: Role) -> Result<Self, RtcError> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let local = socket.local_addr()?;
        let mut outgoing = Vec::new();
        if role.send_audio {
            outgoing.push(Outgoing {
                kind: Kind::Audio,
                mid: "0".into(),
                ssrc: rand::random(),
                pt: OPUS_PT,
            });
        }
        if role.send_video {
            outgoing.push(Outgoing {
                kind: Kind::Video,
                mid: "1".into(),
                ssrc: rand::random(),
                pt: VP8_PT,
            });
        }
        Ok(Self {
            name,
            socket,
            local,
            ufrag: random_token(8),
            pwd: random_token(24),
            identity,
            role,
            outgoing,
            remote: None,
            controlling: true,
            mid_ext: None,
            video_pts: vec![VP8_PT],
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn write_session(&self, s: &mut String, mids: &[String]) {
        let ip = self.local.ip();
        let v = if ip.is_ipv4() { "IP4" } else { "IP6" };
        let _ = write!(
            s,
            "v=0\r\no=- {} 2 IN {v} {ip}\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\na=msid-semantic: WMS *\r\n",
            rand::random::<u32>(),
            mids.join(" ")
        );
    }

    /// One m-line; `send` is the stream this line sends, if any.
    /// Always `a=setup:active`: the client is the DTLS client whichever side offered.
    fn write_media(
        &self,
        s: &mut String,
        (kind, mid, pt): (Kind, &str, u8),
        direction: &str,
        mid_ext: Option<u8>,
        send: Option<&Outgoing>,
    ) {
        let ip = self.local.ip();
        let v = if ip.is_ipv4() { "IP4" } else { "IP6" };
        let media = match kind {
            Kind::Audio => "audio",
            Kind::Video => "video",
        };
        let _ = write!(
            s,
            "m={media} {} UDP/TLS/RTP/SAVPF {pt}\r\nc=IN {v} {ip}\r\na=mid:{mid}\r\n\
             a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:sha-256 {}\r\na=setup:active\r\n",
            self.local.port(),
            self.ufrag,
            self.pwd,
            self.identity.fingerprint
        );
        if let Some(id) = mid_ext {
            let _ = write!(s, "a=extmap:{id} {MID_URI}\r\n");
        }
        let _ = write!(s, "a={direction}\r\na=rtcp-mux\r\n");
        match kind {
            Kind::Audio => {
                let _ = write!(
                    s,
                    "a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} minptime=10;useinbandfec=1\r\n"
                );
            }
            Kind::Video => {
                let _ = write!(
                    s,
                    "a=rtpmap:{pt} VP8/90000\r\na=rtcp-fb:{pt} nack\r\na=rtcp-fb:{pt} nack pli\r\na=rtcp-fb:{pt} ccm fir\r\n"
                );
            }
        }
        if let Some(o) = send {
            let _ = write!(
                s,
                "a=msid:{0} {0}-{mid}\r\na=ssrc:{1} cname:{0}\r\na=ssrc:{1} msid:{0} {0}-{mid}\r\n",
                self.name, o.ssrc
            );
        }
        let _ = write!(
            s,
            "a=candidate:1 1 udp 2130706431 {ip} {} typ host\r\na=end-of-candidates\r\n",
            self.local.port()
        );
    }

    /// Starts the client's task on the current tokio runtime.
    pub fn start(self, shared: Arc<Shared>) -> Result<RunningClient, RtcError> {
        let remote = self
            .remote
            .clone()
            .ok_or_else(|| RtcError::Sdp("no remote description applied".into()))?;
        let addr = remote
            .candidate
            .ok_or_else(|| RtcError::Sdp("remote SDP has no usable UDP host candidate".into()))?;
        self.socket.set_nonblocking(true)?;
        let socket = tokio::net::UdpSocket::from_std(self.socket.try_clone()?)?;
        let state = Arc::new(AtomicU8::new(STATE_CONNECTING));
        let error = Arc::new(Mutex::new(String::new()));
        let sent_in_window = Arc::new(AtomicU64::new(0));
        let mut session = Session {
            name: self.name.clone(),
            remote: addr,
            ice: Ice {
                local_ufrag: self.ufrag.clone(),
                local_pwd: self.pwd.clone(),
                remote_ufrag: remote.ufrag.clone(),
                remote_pwd: remote.pwd.clone(),
                controlling: self.controlling,
                tiebreaker: rand::random(),
                next_check: Instant::now(),
                succeeded: false,
            },
            dtls: None,
            identity: self.identity.clone(),
            remote_fingerprint: remote.fingerprint.clone(),
            srtp: None,
            senders: self
                .outgoing
                .iter()
                .map(|o| Sender::new(o.clone(), self.role.video_kbps))
                .collect(),
            mid_ext: self.mid_ext,
            video_pts: self.video_pts.clone(),
            state: state.clone(),
            error: error.clone(),
            stats: LocalStats::default(),
            sent_in_window: sent_in_window.clone(),
            shared: shared.clone(),
            out: Vec::new(),
            rx_ns: None,
        };
        let handle = tokio::spawn(async move {
            session.run(socket).await;
        });
        Ok(RunningClient {
            sent_in_window,
            name: self.name,
            state,
            error,
            handle,
        })
    }
}

impl SdpEndpoint for RtcClient {
    fn offer(&mut self) -> String {
        self.controlling = true;
        self.mid_ext = Some(MID_EXT_ID);
        let mut lines: Vec<(Kind, String, u8, &str)> = Vec::new();
        if self.role.send_audio {
            lines.push((Kind::Audio, "0".into(), OPUS_PT, "sendonly"));
        } else if self.role.recv_audio {
            lines.push((Kind::Audio, "0".into(), OPUS_PT, "recvonly"));
        }
        if self.role.send_video {
            lines.push((Kind::Video, "1".into(), VP8_PT, "sendonly"));
        } else if self.role.recv_video {
            lines.push((Kind::Video, "1".into(), VP8_PT, "recvonly"));
        }
        let mids: Vec<String> = lines.iter().map(|l| l.1.clone()).collect();
        let mut s = String::new();
        self.write_session(&mut s, &mids);
        for (kind, mid, pt, dir) in &lines {
            let send = self.outgoing.iter().find(|o| o.kind == *kind);
            self.write_media(&mut s, (*kind, mid, *pt), dir, self.mid_ext, send);
        }
        s
    }

    fn accept_answer(&mut self, sdp: &str) -> Result<(), String> {
        let remote = parse_sdp(sdp, self.local.is_ipv4()).map_err(|e| e.to_string())?;
        if remote.setup == "active" {
            return Err("the relay answered a=setup:active to our active offer".into());
        }
        // The answer says whether the mid extension was accepted, and under which id.
        self.mid_ext = remote.media.iter().find_map(|m| m.mid_ext);
        if remote.candidate.is_none() {
            return Err("answer has no UDP host candidate".into());
        }
        self.remote = Some(remote);
        Ok(())
    }

    fn answer_offer(&mut self, sdp: &str) -> Result<String, String> {
        let remote = parse_sdp(sdp, self.local.is_ipv4()).map_err(|e| e.to_string())?;
        self.controlling = false;
        self.mid_ext = remote.media.iter().find_map(|m| m.mid_ext);
        let mut s = String::new();
        let live: Vec<String> = remote
            .media
            .iter()
            .filter(|m| m.port != 0 && usable_pt(m).is_some())
            .map(|m| m.mid.clone())
            .collect();
        self.write_session(&mut s, &live);
        self.video_pts.clear();
        for m in &remote.media {
            match usable_pt(m).filter(|_| m.port != 0) {
                Some((kind, pt)) => {
                    if kind == Kind::Video {
                        self.video_pts.push(pt);
                    }
                    self.write_media(&mut s, (kind, &m.mid, pt), "recvonly", m.mid_ext, None);
                }
                None => {
                    let fmt = m.formats.first().map_or("0", String::as_str);
                    let _ = write!(
                        s,
                        "m={} 0 {} {fmt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{}\r\na=inactive\r\n",
                        m.kind, m.proto, m.mid
                    );
                }
            }
        }
        if remote.candidate.is_none() {
            return Err("offer has no UDP host candidate".into());
        }
        self.remote = Some(remote);
        Ok(s)
    }
}

/// The opus or VP8 payload type of a relay's m-line.
fn usable_pt(m: &RemoteMedia) -> Option<(Kind, u8)> {
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

/// A started client: its progress and its task.
pub struct RunningClient {
    pub name: String,
    pub state: Arc<AtomicU8>,
    pub error: Arc<Mutex<String>>,
    pub handle: tokio::task::JoinHandle<()>,
    /// Packets this client sent inside the measured window (all its streams).
    pub sent_in_window: Arc<AtomicU64>,
}

impl RunningClient {
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }
    pub fn error(&self) -> String {
        self.error.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// Log-linear latency histogram in ns: 64 steps per power of two (about 1.6% resolution).
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const HIST_BUCKETS: usize = 64 + 58 * 64;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; HIST_BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    fn bucket(v: u64) -> usize {
        if v < 64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize;
        let sub = ((v >> (e - 6)) - 64) as usize;
        64 + (e - 6) * 64 + sub
    }

    /// Middle of a bucket's range.
    fn value(i: usize) -> f64 {
        if i < 64 {
            return i as f64;
        }
        let e = (i - 64) / 64 + 6;
        let sub = ((i - 64) % 64) as u64;
        let lo = (64 + sub) << (e - 6);
        lo as f64 + ((1u64 << (e - 6)) as f64) / 2.0
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v).min(HIST_BUCKETS - 1)] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The q-quantile (0..1) in ns, or NaN when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        f64::NAN
    }
}

/// One second of the measured window.
#[derive(Clone, Default)]
pub struct SecondSample {
    pub packets: u64,
    pub latency: Histogram,
}

/// Loss of the received streams, from the embedded counters.
#[derive(Clone, Copy, Default, Debug)]
pub struct LossTotals {
    pub expected: u64,
    pub received: u64,
    pub streams: u64,
    pub duplicates: u64,
}

#[derive(Default)]
pub struct RecorderInner {
    pub seconds: Vec<SecondSample>,
    pub total: Histogram,
    pub loss: LossTotals,
}

/// What every client shares: the measured window (by send time) and what was received in it.
pub struct Shared {
    window_start: AtomicU64,
    window_end: AtomicU64,
    stop: AtomicBool,
    pub inner: Mutex<RecorderInner>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
            inner: Mutex::new(RecorderInner::default()),
        }
    }
}

impl Shared {
    /// Packets sent from `start_ns` until `end_ns` (since [`epoch`]) are measured.
    pub fn set_window(&self, start_ns: u64, end_ns: u64) {
        self.window_end.store(end_ns, Ordering::Relaxed);
        self.window_start.store(start_ns, Ordering::Relaxed);
    }
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
    fn window(&self) -> (u64, u64) {
        (
            self.window_start.load(Ordering::Relaxed),
            self.window_end.load(Ordering::Relaxed),
        )
    }
}

#[derive(Clone, Copy)]
struct StreamLoss {
    min: u64,
    max: u64,
    received: u64,
    /// Bit i: counter `max - i` was received (duplicates are not delivered packets).
    seen: u128,
    duplicates: u64,
}

impl StreamLoss {
    /// Whether `counter` is new (it may be older than the window, which is taken as new).
    fn note(&mut self, counter: u64) -> bool {
        if counter > self.max {
            let shift = counter - self.max;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.max = counter;
        } else {
            let d = self.max - counter;
            if d < 128 {
                if self.seen & (1 << d) != 0 {
                    self.duplicates += 1;
                    return false;
                }
                self.seen |= 1 << d;
            }
            self.min = self.min.min(counter);
        }
        self.received += 1;
        true
    }
}

#[derive(Default)]
struct LocalStats {
    /// (send ns, latency ns) of packets sent inside the window, not yet flushed.
    pending: Vec<(u64, u64)>,
    streams: HashMap<u32, StreamLoss>,
    last_flush: Option<Instant>,
}

impl LocalStats {
    fn flush(&mut self, shared: &Shared, last: bool) {
        let Ok(mut inner) = shared.inner.lock() else {
            return;
        };
        let (start, _) = shared.window();
        for &(sent, lat) in &self.pending {
            let sec = ((sent.saturating_sub(start)) / 1_000_000_000) as usize;
            if inner.seconds.len() <= sec {
                inner.seconds.resize_with(sec + 1, SecondSample::default);
            }
            inner.seconds[sec].packets += 1;
            inner.seconds[sec].latency.record(lat);
            inner.total.record(lat);
        }
        self.pending.clear();
        if last {
            for s in self.streams.values() {
                inner.loss.expected += s.max - s.min + 1;
                inner.loss.received += s.received;
                inner.loss.streams += 1;
                inner.loss.duplicates += s.duplicates;
            }
            self.streams.clear();
        }
    }
}

struct Ice {
    local_ufrag: String,
    local_pwd: String,
    remote_ufrag: String,
    remote_pwd: String,
    controlling: bool,
    tiebreaker: u64,
    next_check: Instant,
    succeeded: bool,
}

impl Ice {
    fn request(&self, crypto: &dyn rtc_crypto::RTCCrypto) -> Option<Vec<u8>> {
        let mut m = Message::new();
        m.write_header();
        let tid = TransactionId::new();
        let user = TextAttribute::new(
            ATTR_USERNAME,
            format!("{}:{}", self.remote_ufrag, self.local_ufrag),
        );
        let head: [&dyn Setter; 3] = [&BINDING_REQUEST, &tid, &user];
        for s in head {
            s.add_to(&mut m).ok()?;
        }
        // Peer-reflexive priority of a host candidate (type preference 110), RFC 8445 §5.1.2.
        m.add(
            ATTR_PRIORITY,
            &((110u32 << 24) | (65535 << 8) | 255).to_be_bytes(),
        );
        if self.controlling {
            m.add(ATTR_ICE_CONTROLLING, &self.tiebreaker.to_be_bytes());
            m.add(ATTR_USE_CANDIDATE, &[]);
        } else {
            m.add(ATTR_ICE_CONTROLLED, &self.tiebreaker.to_be_bytes());
        }
        let integrity = MessageIntegrity::new_short_term_integrity_with_provider(
            self.remote_pwd.clone(),
            crypto,
        );
        integrity.add_to(&mut m).ok()?;
        FINGERPRINT.add_to(&mut m).ok()?;
        Some(m.raw)
    }

    /// A success response to a peer's check, or `None` for anything else.
    fn respond(
        &self,
        data: &[u8],
        from: SocketAddr,
        crypto: &dyn rtc_crypto::RTCCrypto,
    ) -> Option<Vec<u8>> {
        let mut msg = Message::new();
        msg.unmarshal_binary(data).ok()?;
        if msg.typ != BINDING_REQUEST {
            return None;
        }
        MessageIntegrity::check(&mut msg, self.local_pwd.as_bytes(), crypto).ok()?;
        let mut out = Message::new();
        out.write_header();
        let integrity = MessageIntegrity::new_short_term_integrity_with_provider(
            self.local_pwd.clone(),
            crypto,
        );
        let mapped = XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        };
        let setters: [&dyn Setter; 5] = [
            &BINDING_SUCCESS,
            &msg.transaction_id,
            &mapped,
            &integrity,
            &FINGERPRINT,
        ];
        for s in setters {
            s.add_to(&mut out).ok()?;
        }
        Some(out.raw)
    }
}

/// Paces one outgoing stream.
struct Sender {
    out: Outgoing,
    seq: u16,
    ts: u32,
    counter: u64,
    next_due: Option<Instant>,
    interval: Duration,
    /// Video: payload bytes per frame.
    frame_bytes: usize,
}

impl Sender {
    fn new(out: Outgoing, video_kbps: u32) -> Self {
        let (interval, frame_bytes) = match out.kind {
            Kind::Audio => (Duration::from_millis(20), AUDIO_PAYLOAD),
            Kind::Video => (
                Duration::from_secs(1) / 30,
                ((video_kbps as usize * 1000 / 8) / 30).max(2 + STAMP),
            ),
        };
        Self {
            out,
            seq: rand::random(),
            ts: rand::random(),
            counter: 0,
            next_due: None,
            interval,
            frame_bytes,
        }
    }
}

struct Session {
    name: String,
    remote: SocketAddr,
    ice: Ice,
    dtls: Option<Endpoint>,
    identity: Identity,
    remote_fingerprint: String,
    srtp: Option<(Context, Context)>,
    senders: Vec<Sender>,
    mid_ext: Option<u8>,
    video_pts: Vec<u8>,
    state: Arc<AtomicU8>,
    error: Arc<Mutex<String>>,
    stats: LocalStats,
    sent_in_window: Arc<AtomicU64>,
    shared: Arc<Shared>,
    /// Datagrams to send after the current step.
    out: Vec<bytes::Bytes>,
    /// Kernel arrival stamp of the datagram being handled (ns since [`epoch`]).
    rx_ns: Option<u64>,
}

impl Session {
    async fn run(&mut self, socket: tokio::net::UdpSocket) {
        let mut buf = vec![0u8; 2048];
        enable_rx_timestamps(&socket);
        // Senders pace media on a 5 ms tick; receive-only clients need the tick only for ICE,
        // DTLS retransmission and flushing samples, and most clients are receivers.
        let period = if self.senders.is_empty() { 50 } else { 5 };
        let mut tick = tokio::time::interval(Duration::from_millis(period));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                r = socket.readable() => {
                    if r.is_ok() {
                        // Drain what is queued: one wake-up for a burst (a video frame).
                        for _ in 0..64 {
                            match recv_stamped(&socket, &mut buf) {
                                Ok((n, from, stamp)) => {
                                    self.rx_ns = stamp;
                                    self.handle_datagram(Instant::now(), from, &buf[..n]);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    if self.shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    self.handle_tick(Instant::now());
                }
            }
            for d in self.out.drain(..) {
                let _ = socket.send_to(&d, self.remote).await;
            }
        }
        self.stats.flush(&self.shared, true);
    }

    fn fail(&self, why: String) {
        fail(&self.name, &self.error, &self.state, why);
    }

    fn handle_tick(&mut self, now: Instant) {
        if now >= self.ice.next_check {
            if let Some(req) = self.ice.request(self.identity.provider.crypto()) {
                self.out.push(req.into());
            }
            self.ice.next_check = now
                + if self.ice.succeeded {
                    CHECK_SLOW
                } else {
                    CHECK_FAST
                };
        }
        if let Some(dtls) = self.dtls.as_mut() {
            if self.srtp.is_none() {
                if dtls.poll_timeout(&PEER).is_some_and(|t| t <= now) {
                    if let Err(e) = dtls.handle_timeout(PEER, now) {
                        fail(
                            &self.name,
                            &self.error,
                            &self.state,
                            format!("DTLS timeout: {e}"),
                        );
                    }
                }
                while let Some(t) = dtls.poll_transmit() {
                    self.out.push(t.message.freeze());
                }
            }
        }
        if self.srtp.is_some() {
            self.send_media(now);
        }
        if self
            .stats
            .last_flush
            .is_none_or(|t| now.duration_since(t) >= FLUSH_EVERY)
        {
            self.stats.last_flush = Some(now);
            self.stats.flush(&self.shared, false);
        }
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, d: &[u8]) {
        let Some(&first) = d.first() else { return };
        match first {
            0..=3 => self.handle_stun(now, from, d),
            20..=63 => self.handle_dtls(now, d),
            128..=191 => self.handle_srtp(d),
            _ => {}
        }
    }

    fn handle_stun(&mut self, now: Instant, from: SocketAddr, d: &[u8]) {
        let crypto = self.identity.provider.crypto();
        if let Some(resp) = self.ice.respond(d, from, crypto) {
            self.out.push(resp.into());
            return;
        }
        let mut msg = Message::new();
        if msg.unmarshal_binary(d).is_err() {
            return;
        }
        if msg.typ == BINDING_SUCCESS && !self.ice.succeeded {
            self.ice.succeeded = true;
            self.ice.next_check = now + CHECK_SLOW;
            self.start_dtls(now);
        } else if msg.typ.class == CLASS_ERROR_RESPONSE && !self.ice.succeeded {
            self.fail("ICE check answered with an error".into());
        }
    }

    fn start_dtls(&mut self, now: Instant) {
        let expected = self.remote_fingerprint.clone();
        let provider = self.identity.provider.clone();
        let verify = Arc::new(
            move |certs: &[Vec<u8>],
                  _: &[rustls::pki_types::CertificateDer<'static>]|
                  -> rtc_shared::error::Result<()> {
                match certs.first().and_then(|c| sha256_fingerprint(&provider, c)) {
                    Some(fp) if fp.to_ascii_lowercase() == expected => Ok(()),
                    _ => Err(rtc_shared::error::Error::ErrNoMatchingCertificateFingerprint),
                }
            },
        );
        let verify: rtc_dtls::config::VerifyPeerCertificateFn = verify;
        let config: Result<HandshakeConfig, _> = ConfigBuilder::default()
            .with_crypto_provider(self.identity.provider.clone())
            .with_certificates(vec![self.identity.certificate.clone()])
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_extended_master_secret(ExtendedMasterSecretType::Request)
            .build(true, None);
        let config = match config {
            Ok(c) => Arc::new(c),
            Err(e) => return self.fail(format!("DTLS config: {e}")),
        };
        let local: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let mut ep = Endpoint::new(local, TransportProtocol::UDP, None);
        if let Err(e) = ep.connect(now, PEER, config, None) {
            return self.fail(format!("DTLS connect: {e}"));
        }
        while let Some(t) = ep.poll_transmit() {
            self.out.push(t.message.freeze());
        }
        self.dtls = Some(ep);
    }

    fn handle_dtls(&mut self, now: Instant, d: &[u8]) {
        let Some(ep) = self.dtls.as_mut() else { return };
        let events = match ep.read(now, PEER, None, BytesMut::from(d)) {
            Ok(ev) => ev,
            Err(e) => {
                if self.srtp.is_none() {
                    self.fail(format!("DTLS: {e}"));
                }
                return;
            }
        };
        while let Some(t) = ep.poll_transmit() {
            self.out.push(t.message.freeze());
        }
        for ev in events {
            if let EndpointEvent::HandshakeComplete = ev {
                match keys(ep, &self.identity) {
                    Ok(k) => {
                        self.srtp = Some(k);
                        self.state.store(STATE_CONNECTED, Ordering::Relaxed);
                    }
                    Err(e) => fail(&self.name, &self.error, &self.state, e.to_string()),
                }
            }
        }
    }

    fn handle_srtp(&mut self, d: &[u8]) {
        // RTCP (payload type 200..=206 with the marker bit folded in) is not measured.
        if d.len() < 12 || (192..=223).contains(&d[1]) {
            return;
        }
        let Some((_, remote)) = self.srtp.as_mut() else {
            return;
        };
        let Ok(plain) = remote.decrypt_rtp(d) else {
            return;
        };
        // The kernel's arrival stamp when there is one: the load generator's own delay is not
        // the relay's.
        let now = self.rx_ns.take().unwrap_or_else(now_ns);
        receive_rtp(&plain, &self.video_pts, now, &self.shared, &mut self.stats);
    }

    fn send_media(&mut self, now: Instant) {
        let window = self.shared.window();
        let Some((local, _)) = self.srtp.as_mut() else {
            return;
        };
        let mut buf = Vec::with_capacity(1400);
        for s in &mut self.senders {
            let due = s.next_due.get_or_insert(now);
            // After a stall, start again rather than send a burst.
            if now.duration_since(*due) > Duration::from_secs(1) {
                *due = now;
            }
            while *due <= now {
                *due += s.interval;
                let (sizes, kind) = match s.out.kind {
                    Kind::Audio => (vec![AUDIO_PAYLOAD], Kind::Audio),
                    Kind::Video => {
                        let n = s.frame_bytes.div_ceil(MAX_VIDEO_PAYLOAD);
                        let each = (s.frame_bytes / n).max(2 + STAMP);
                        (vec![each; n], Kind::Video)
                    }
                };
                let last = sizes.len() - 1;
                for (i, size) in sizes.into_iter().enumerate() {
                    buf.clear();
                    let marker = kind == Kind::Video && i == last;
                    write_rtp_header(&mut buf, &s.out, marker, s.seq, s.ts, self.mid_ext);
                    if kind == Kind::Video {
                        // VP8 descriptor with S set on the first packet, then a key-frame header
                        // byte: every frame can start a viewer.
                        buf.extend_from_slice(if i == 0 { &[0x10, 0x00] } else { &[0x00, 0x00] });
                    }
                    let stamp = now_ns();
                    buf.extend_from_slice(&stamp.to_be_bytes());
                    buf.extend_from_slice(&s.counter.to_be_bytes());
                    let counted = stamp >= window.0 && stamp < window.1;
                    let header_len = if kind == Kind::Video {
                        2 + STAMP
                    } else {
                        STAMP
                    };
                    buf.resize(buf.len() + size.saturating_sub(header_len), 0xa5);
                    s.seq = s.seq.wrapping_add(1);
                    s.counter += 1;
                    match local.encrypt_rtp(&buf) {
                        Ok(p) => {
                            self.out.push(p.freeze());
                            if counted {
                                self.sent_in_window.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut err) = self.error.lock() {
                                *err = format!("{}: SRTP protect: {e}", self.name);
                            }
                        }
                    }
                }
                s.ts = s.ts.wrapping_add(match kind {
                    Kind::Audio => 960,
                    Kind::Video => 3000,
                });
            }
        }
    }
}

/// Marks a client failed with the first reason given.
fn fail(name: &str, error: &Mutex<String>, state: &AtomicU8, why: String) {
    if let Ok(mut e) = error.lock() {
        if e.is_empty() {
            *e = format!("{name}: {why}");
        }
    }
    state.store(STATE_FAILED, Ordering::Relaxed);
}

fn write_rtp_header(
    buf: &mut Vec<u8>,
    o: &Outgoing,
    marker: bool,
    seq: u16,
    ts: u32,
    mid_ext: Option<u8>,
) {
    buf.push(if mid_ext.is_some() { 0x90 } else { 0x80 });
    buf.push(o.pt | if marker { 0x80 } else { 0 });
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&ts.to_be_bytes());
    buf.extend_from_slice(&o.ssrc.to_be_bytes());
    if let Some(id) = mid_ext {
        // One-byte header extension (RFC 8285), padded to whole words.
        let mid = o.mid.as_bytes();
        let body = 1 + mid.len();
        let words = body.div_ceil(4);
        buf.extend_from_slice(&[0xbe, 0xde]);
        buf.extend_from_slice(&(words as u16).to_be_bytes());
        buf.push((id << 4) | (mid.len() as u8 - 1));
        buf.extend_from_slice(mid);
        buf.resize(buf.len() + words * 4 - body, 0);
    }
}

/// Reads the stamp of one plain RTP packet into the client's stats.
fn receive_rtp(p: &[u8], video_pts: &[u8], now: u64, shared: &Shared, stats: &mut LocalStats) {
    let Some(payload) = rtp_payload(p) else {
        return;
    };
    let pt = p[1] & 0x7f;
    let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    let at = if video_pts.contains(&pt) { 2 } else { 0 };
    let Some(stamp) = payload.get(at..at + STAMP) else {
        return;
    };
    let mut w = [0u8; 8];
    w.copy_from_slice(&stamp[..8]);
    let sent = u64::from_be_bytes(w);
    w.copy_from_slice(&stamp[8..]);
    let counter = u64::from_be_bytes(w);
    let (start, end) = shared.window();
    if sent < start || sent >= end {
        return;
    }
    let e = stats.streams.entry(ssrc).or_insert(StreamLoss {
        min: counter,
        max: counter,
        received: 0,
        seen: 0,
        duplicates: 0,
    });
    if e.note(counter) {
        stats.pending.push((sent, now.saturating_sub(sent)));
    }
}

/// The payload of a plain RTP packet (after CSRCs and extensions, before padding).
fn rtp_payload(p: &[u8]) -> Option<&[u8]> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return None;
    }
    let cc = (p[0] & 0x0f) as usize;
    let mut at = 12 + 4 * cc;
    if p[0] & 0x10 != 0 {
        let h = p.get(at..at + 4)?;
        at += 4 + 4 * u16::from_be_bytes([h[2], h[3]]) as usize;
    }
    let mut end = p.len();
    if p[0] & 0x20 != 0 {
        end = end.checked_sub(*p.last()? as usize)?;
    }
    p.get(at..end)
}

fn keys(ep: &Endpoint, identity: &Identity) -> Result<(Context, Context), RtcError> {
    let state = ep
        .get_connection_state(PEER)
        .ok_or_else(|| RtcError::Dtls("no association".into()))?;
    // The same export as the relay's own DTLS side.
    let (profile, k) = volna::transport::webrtc::dtls::export_srtp_keys(state)
        .map_err(|e| RtcError::Srtp(e.to_string()))?;
    let k = &k;
    contexts(
        profile,
        (&k.local_master_key, &k.local_master_salt),
        (&k.remote_master_key, &k.remote_master_salt),
        identity,
    )
}

fn contexts(
    profile: ProtectionProfile,
    local: (&[u8], &[u8]),
    remote: (&[u8], &[u8]),
    identity: &Identity,
) -> Result<(Context, Context), RtcError> {
    let crypto = identity.provider.crypto();
    let l = Context::new(local.0, local.1, profile, None, None, crypto)
        .map_err(|e| RtcError::Srtp(e.to_string()))?;
    let r = Context::new(
        remote.0,
        remote.1,
        profile,
        Some(rtc_srtp::option::srtp_replay_protection(256)),
        Some(rtc_srtp::option::srtcp_replay_protection(128)),
        crypto,
    )
    .map_err(|e| RtcError::Srtp(e.to_string()))?;
    Ok((l, r))
}

/// Latency of the same SRTP protect → UDP → unprotect path with no relay: two sockets on
/// loopback, one sending stamped audio and video at the role's rates for `duration`.
pub async fn baseline(
    ip: IpAddr,
    identity: &Identity,
    video_kbps: u32,
    duration: Duration,
) -> Result<Histogram, RtcError> {
    let a = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    let b = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    let (a_addr, b_addr) = (a.local_addr()?, b.local_addr()?);
    let key = [7u8; 16];
    let salt = [9u8; 12];
    let profile = ProtectionProfile::AeadAes128Gcm;
    let (send_ctx, _) = contexts(profile, (&key, &salt), (&key, &salt), identity)?;
    let (_, recv_ctx) = contexts(profile, (&key, &salt), (&key, &salt), identity)?;
    let shared = Arc::new(Shared::default());
    let start = now_ns();
    shared.set_window(start, start + duration.as_nanos() as u64);
    let make = |sock: std::net::UdpSocket,
                remote: SocketAddr,
                srtp: (Context, Context),
                senders: Vec<Sender>|
     -> Result<(Session, tokio::net::UdpSocket), RtcError> {
        sock.set_nonblocking(true)?;
        let sock = tokio::net::UdpSocket::from_std(sock)?;
        let session = Session {
            name: "baseline".into(),
            remote,
            ice: Ice {
                local_ufrag: String::new(),
                local_pwd: String::new(),
                remote_ufrag: String::new(),
                remote_pwd: String::new(),
                controlling: true,
                tiebreaker: 0,
                // No checks: the path is direct.
                next_check: Instant::now() + Duration::from_secs(3600),
                succeeded: true,
            },
            dtls: None,
            identity: identity.clone(),
            remote_fingerprint: String::new(),
            srtp: Some(srtp),
            senders,
            mid_ext: Some(MID_EXT_ID),
            video_pts: vec![VP8_PT],
            state: Arc::new(AtomicU8::new(STATE_CONNECTED)),
            error: Arc::new(Mutex::new(String::new())),
            stats: LocalStats::default(),
            sent_in_window: Arc::new(AtomicU64::new(0)),
            shared: shared.clone(),
            out: Vec::new(),
            rx_ns: None,
        };
        Ok((session, sock))
    };
    let (dummy_a, _) = contexts(profile, (&key, &salt), (&key, &salt), identity)?;
    let (_, dummy_b) = contexts(profile, (&key, &salt), (&key, &salt), identity)?;
    // Five publishers' worth of streams, so that p99.9 rests on a few thousand samples.
    let senders = (0..5u32)
        .flat_map(|i| {
            [
                Sender::new(
                    Outgoing {
                        kind: Kind::Audio,
                        mid: "0".into(),
                        ssrc: 2 * i + 1,
                        pt: OPUS_PT,
                    },
                    video_kbps,
                ),
                Sender::new(
                    Outgoing {
                        kind: Kind::Video,
                        mid: "1".into(),
                        ssrc: 2 * i + 2,
                        pt: VP8_PT,
                    },
                    video_kbps,
                ),
            ]
        })
        .collect();
    let (mut tx, sa) = make(a, b_addr, (send_ctx, dummy_b), senders)?;
    let (mut rx, sb) = make(b, a_addr, (dummy_a, recv_ctx), Vec::new())?;
    let t1 = tokio::spawn(async move { tx.run(sa).await });
    let t2 = tokio::spawn(async move { rx.run(sb).await });
    tokio::time::sleep(duration + Duration::from_millis(200)).await;
    shared.stop();
    let _ = t1.await;
    let _ = t2.await;
    let inner = shared
        .inner
        .lock()
        .map_err(|_| RtcError::Srtp("recorder poisoned".into()))?;
    Ok(inner.total.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_accepts_our_check() {
        let provider = rtc_crypto::default_provider().unwrap();
        let ice = Ice {
            local_ufrag: "mine".into(),
            local_pwd: "mypassword1234567890123".into(),
            remote_ufrag: "relay".into(),
            remote_pwd: "relaypassword12345678901".into(),
            controlling: true,
            tiebreaker: 5,
            next_check: Instant::now(),
            succeeded: false,
        };
        let req = ice.request(provider.crypto()).unwrap();
        let parsed = volna::transport::webrtc::ice::BindingRequest::parse(&req).unwrap();
        assert_eq!(parsed.local_ufrag, "relay");
        assert!(parsed.use_candidate);
        parsed
            .respond(
                "relaypassword12345678901",
                "127.0.0.1:1".parse().unwrap(),
                provider.crypto(),
            )
            .unwrap();
    }

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [
            (0.5, 50_000_000.0),
            (0.99, 99_000_000.0),
            (0.999, 99_900_000.0),
        ] {
            let got = h.quantile(q);
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert!(Histogram::default().quantile(0.5).is_nan());
        h.record(u64::MAX);
    }

    const RELAY_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE a v d\r\na=ice-ufrag:RU\r\na=ice-pwd:RPWD\r\n\
a=fingerprint:sha-256 AB:CD\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 109 0\r\nc=IN IP4 10.0.0.1\r\na=mid:a\r\na=sendonly\r\na=setup:actpass\r\n\
a=rtpmap:109 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=extmap:7 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=candidate:1 1 udp 2013266431 fe80::1 4000 typ host\r\n\
a=candidate:2 1 tcp 1019216383 10.0.0.1 9 typ host tcptype active\r\n\
a=candidate:3 1 udp 2013266431 10.0.0.1 4001 typ host\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 100\r\nc=IN IP4 10.0.0.1\r\na=mid:v\r\na=sendonly\r\na=rtpmap:100 VP8/90000\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:d\r\n";

    #[test]
    fn answers_a_relay_offer() {
        let id = Identity::generate().unwrap();
        let mut c = RtcClient::new(
            "t".into(),
            "127.0.0.1".parse().unwrap(),
            id,
            Role::subscriber(true),
        )
        .unwrap();
        let answer = c.answer_offer(RELAY_OFFER).unwrap();
        let r = c.remote.as_ref().unwrap();
        assert_eq!(r.candidate, Some("10.0.0.1:4001".parse().unwrap()));
        assert_eq!((r.ufrag.as_str(), r.pwd.as_str()), ("RU", "RPWD"));
        assert_eq!(r.fingerprint, "ab:cd");
        assert!(!c.controlling);
        assert_eq!(c.mid_ext, Some(7));
        assert_eq!(c.video_pts, vec![100]);
        for want in [
            "a=group:BUNDLE a v\r\n",
            "m=audio",
            "a=rtpmap:109 opus/48000/2",
            "a=rtpmap:100 VP8/90000",
            "a=setup:active",
            "a=recvonly",
            "m=application 0 UDP/DTLS/SCTP webrtc-datachannel",
        ] {
            assert!(answer.contains(want), "{want} missing from\n{answer}");
        }
    }

    #[test]
    fn publisher_offer_is_bundled_and_active() {
        let id = Identity::generate().unwrap();
        let mut c = RtcClient::new(
            "p".into(),
            "127.0.0.1".parse().unwrap(),
            id,
            Role::publisher(true, 500),
        )
        .unwrap();
        let offer = c.offer();
        for want in [
            "a=group:BUNDLE 0 1",
            "a=setup:active",
            "a=sendonly",
            "a=rtcp-mux",
            "a=rtpmap:111 opus/48000/2",
            "a=rtpmap:96 VP8/90000",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=fingerprint:sha-256 ",
            "typ host",
        ] {
            assert!(offer.contains(want), "{want} missing from\n{offer}");
        }
        assert_eq!(offer.matches("a=ssrc:").count(), 4);
    }

    #[test]
    fn payload_skips_extensions_and_padding() {
        let o = Outgoing {
            kind: Kind::Audio,
            mid: "0".into(),
            ssrc: 9,
            pt: OPUS_PT,
        };
        let mut p = Vec::new();
        write_rtp_header(&mut p, &o, false, 1, 2, Some(4));
        p.extend_from_slice(&[1, 2, 3]);
        assert_eq!(rtp_payload(&p), Some(&[1u8, 2, 3][..]));
        p[0] |= 0x20;
        p.extend_from_slice(&[0, 2]);
        assert_eq!(rtp_payload(&p), Some(&[1u8, 2, 3][..]));
        assert_eq!(rtp_payload(&p[..5]), None);
    }

    #[test]
    fn duplicates_and_reordering() {
        let mut s = StreamLoss {
            min: 10,
            max: 10,
            received: 0,
            seen: 0,
            duplicates: 0,
        };
        let fresh: Vec<bool> = [10, 12, 11, 12, 10, 300, 13]
            .iter()
            .map(|&c| s.note(c))
            .collect();
        assert_eq!(fresh, [true, true, true, false, false, true, true]);
        assert_eq!((s.min, s.max, s.received, s.duplicates), (10, 300, 5, 2));
    }
}
