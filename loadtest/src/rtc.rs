//! A load-test WebRTC endpoint: one UDP socket, SDP offers and answers as relays expect them, a
//! full ICE agent over the one remote host candidate, DTLS-SRTP as the DTLS client, and stamped
//! media. Senders put the send time (ns since a process-wide epoch) and a per-stream counter in
//! every payload; receivers turn them into latency and loss in the shared [`Shared`] recorder.
//! Here: the client between signalling and start (its role, offers and answers); in `session`
//! the running client, `ice` its checks, `sdp` the relay's SDP as read, `stats` what is
//! measured, `tcp` the same over ICE-TCP, `baseline` the path with no relay.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
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

mod baseline;
mod ice;
mod sdp;
mod session;
mod stats;
mod tcp;

pub use baseline::baseline;
use ice::Ice;
use sdp::{parse_sdp, usable_pt, RemoteSdp};
use session::{contexts, Sender, Session};
#[cfg(test)]
use session::{rtp_payload, write_rtp_header};
pub use stats::{Histogram, LossTotals, RecorderInner, SecondSample, Shared};
use stats::{LocalStats, StreamLoss};

pub const OPUS_PT: u8 = 111;
pub const VP8_PT: u8 = 96;
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// The RID extension (RFC 8852) a simulcast publisher marks each layer's packets with.
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const RID_EXT_ID: u8 = 10;
/// A simulcast publisher's layers: the low one at a quarter of the video rate, and the full one.
const LAYERS: [&str; 2] = ["q", "f"];
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
    /// Video as two simulcast layers ("q" at a quarter of `video_kbps`, "f" at all of it).
    pub simulcast: bool,
    /// A receiver that tells the relay (REMB, four times a second) its link carries this much.
    pub remb_bps: Option<u64>,
    /// ICE over TCP (RFC 6544: an active candidate to the relay's passive one, RFC 4571
    /// framing) instead of UDP.
    pub tcp: bool,
}

impl Role {
    pub fn publisher(video: bool, video_kbps: u32) -> Self {
        Role {
            send_audio: true,
            send_video: video,
            recv_audio: false,
            recv_video: false,
            video_kbps,
            simulcast: false,
            remb_bps: None,
            tcp: false,
        }
    }
    pub fn subscriber(video: bool) -> Self {
        Role {
            send_audio: false,
            send_video: false,
            recv_audio: true,
            recv_video: video,
            video_kbps: 0,
            simulcast: false,
            remb_bps: None,
            tcp: false,
        }
    }

    /// The same sending its video as simulcast.
    pub fn with_simulcast(mut self, on: bool) -> Self {
        self.simulcast = on && self.send_video;
        self
    }

    /// The same over ICE-TCP.
    pub fn with_tcp(mut self, on: bool) -> Self {
        self.tcp = on;
        self
    }

    /// The same telling the relay its link carries `bps`.
    pub fn with_remb(mut self, bps: Option<u64>) -> Self {
        self.remb_bps = bps;
        self
    }
}

/// Connection progress, readable while the client runs.
pub const STATE_CONNECTING: u8 = 0;
pub const STATE_CONNECTED: u8 = 1;
pub const STATE_FAILED: u8 = 2;

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
    /// A simulcast layer's RID.
    rid: Option<&'static str>,
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
    rid_ext: Option<u8>,
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
                rid: None,
            });
        }
        if role.send_video {
            let rids: &[&'static str] = if role.simulcast { &LAYERS } else { &[""] };
            for rid in rids {
                outgoing.push(Outgoing {
                    kind: Kind::Video,
                    mid: "1".into(),
                    ssrc: rand::random(),
                    pt: VP8_PT,
                    rid: (!rid.is_empty()).then_some(*rid),
                });
            }
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
            rid_ext: None,
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
        send: &[&Outgoing],
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
        let rids: Vec<&str> = send.iter().filter_map(|o| o.rid).collect();
        if !rids.is_empty() {
            let _ = write!(s, "a=extmap:{RID_EXT_ID} {RID_URI}\r\n");
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
        if !rids.is_empty() {
            // RFC 8853: the layers are told apart by the RID in their packets, not by SSRC.
            let _ = write!(s, "a=msid:{0} {0}-{mid}\r\n", self.name);
            for rid in &rids {
                let _ = write!(s, "a=rid:{rid} send\r\n");
            }
            let _ = write!(s, "a=simulcast:send {}\r\n", rids.join(";"));
        } else if let Some(o) = send.first() {
            let _ = write!(
                s,
                "a=msid:{0} {0}-{mid}\r\na=ssrc:{1} cname:{0}\r\na=ssrc:{1} msid:{0} {0}-{mid}\r\n",
                self.name, o.ssrc
            );
        }
        if self.role.tcp {
            // An active TCP candidate has the discard port (RFC 6544 §4.5).
            let _ = write!(
                s,
                "a=candidate:1 1 tcp 1518280447 {ip} 9 typ host tcptype active\r\na=end-of-candidates\r\n"
            );
        } else {
            let _ = write!(
                s,
                "a=candidate:1 1 udp 2130706431 {ip} {} typ host\r\na=end-of-candidates\r\n",
                self.local.port()
            );
        }
    }

    /// Starts the client's task on the current tokio runtime.
    pub fn start(self, shared: Arc<Shared>) -> Result<RunningClient, RtcError> {
        let remote = self
            .remote
            .clone()
            .ok_or_else(|| RtcError::Sdp("no remote description applied".into()))?;
        let addr = if self.role.tcp {
            remote.tcp_candidate.ok_or_else(|| {
                RtcError::Sdp("remote SDP has no passive TCP host candidate".into())
            })?
        } else {
            remote.candidate.ok_or_else(|| {
                RtcError::Sdp("remote SDP has no usable UDP host candidate".into())
            })?
        };
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
            rid_ext: self.rid_ext,
            remb: self.role.remb_bps.map(|bps| (bps, Instant::now())),
            video_pts: self.video_pts.clone(),
            state: state.clone(),
            error: error.clone(),
            stats: LocalStats::default(),
            sent_in_window: sent_in_window.clone(),
            shared: shared.clone(),
            out: Vec::new(),
            rx_ns: None,
        };
        let tcp = self.role.tcp;
        let handle = tokio::spawn(async move {
            if tcp {
                tcp::run(&mut session).await;
            } else {
                session.run(socket).await;
            }
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
        self.rid_ext = self.role.simulcast.then_some(RID_EXT_ID);
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
            let send: Vec<&Outgoing> = self.outgoing.iter().filter(|o| o.kind == *kind).collect();
            self.write_media(&mut s, (*kind, mid, *pt), dir, self.mid_ext, &send);
        }
        s
    }

    fn accept_answer(&mut self, sdp: &str) -> Result<(), String> {
        let remote = parse_sdp(sdp, self.local.is_ipv4()).map_err(|e| e.to_string())?;
        if remote.setup == "active" {
            return Err("the relay answered a=setup:active to our active offer".into());
        }
        // The answer says whether the mid (and rid) extension was accepted, and under which id.
        self.mid_ext = remote.media.iter().find_map(|m| m.mid_ext);
        self.rid_ext = remote.media.iter().find_map(|m| m.rid_ext);
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
                    self.write_media(&mut s, (kind, &m.mid, pt), "recvonly", m.mid_ext, &[]);
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
a=candidate:4 1 tcp 1015023871 10.0.0.1 4002 typ host tcptype passive\r\n\
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
        // The passive one, not the active one before it.
        assert_eq!(r.tcp_candidate, Some("10.0.0.1:4002".parse().unwrap()));
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
            rid: None,
        };
        let mut p = Vec::new();
        write_rtp_header(&mut p, &o, false, (1, 2), (Some(4), None));
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
