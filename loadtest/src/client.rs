//! A native RTP-over-QUIC client: QUIC with a pinned server certificate, the control stream, and
//! RTP in datagrams. The publisher encodes a sine tone with libopus in 20 ms frames and answers
//! NACKs from a send history; the subscriber NACKs gaps, then decodes the stream in order with
//! libopus (concealing what never came) and measures the decoded level.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use volna::core::rtcp::{Compound, RtcpPacket};
use volna::core::rtp::RtpView;
use volna::transport::quic::endpoint::ALPN;
use volna::transport::quic::roq::{datagram, frame, read_varint, split_datagram};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("QUIC: {0}")]
    Quic(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("server refused: {0}")]
    Refused(Value),
    #[error("control stream: {0}")]
    Control(String),
    #[error("opus: {0}")]
    Opus(String),
    #[error("video encoder: {0}")]
    Video(String),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Connect {
    pub quic: SocketAddr,
    /// Hex SHA-256 of the server certificate (from /quic/cert-hash); `None` trusts any.
    pub cert_sha256: Option<String>,
    pub room: String,
    pub token: Option<String>,
    pub name: String,
}

/// A connected, joined client.
pub struct Client {
    pub conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _endpoint: quinn::Endpoint,
}

impl Client {
    /// Connects and joins the room.
    pub async fn connect(c: &Connect) -> Result<Client, ClientError> {
        let mut client = Self::connect_unjoined(c).await?;
        let mut join = json!({"type": "join", "v": 1, "room": c.room, "name": c.name});
        if let Some(t) = &c.token {
            join["token"] = json!(t);
        }
        client.request(join).await?;
        Ok(client)
    }

    /// Connects and opens the control stream, without joining.
    pub async fn connect_unjoined(c: &Connect) -> Result<Client, ClientError> {
        let config = volna::transport::quic::pin::client_config(c.cert_sha256.as_deref(), ALPN)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let bind: SocketAddr = if c.quic.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal");
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Quic(e.to_string()))?;
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(c.quic, "volna")
            .map_err(|e| ClientError::Quic(e.to_string()))?
            .await
            .map_err(|e| ClientError::Quic(e.to_string()))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Quic(e.to_string()))?;
        Ok(Client {
            conn,
            send,
            recv,
            _endpoint: endpoint,
        })
    }

    /// Sends one control message and reads its reply; an `error` reply is `Err`.
    pub async fn request(&mut self, msg: Value) -> Result<Value, ClientError> {
        let reply = self.exchange(msg.to_string().as_bytes()).await?;
        if reply["type"] == "error" {
            return Err(ClientError::Refused(reply));
        }
        Ok(reply)
    }

    /// Sends raw bytes as one framed control message and reads the framed reply as JSON.
    pub async fn exchange(&mut self, raw: &[u8]) -> Result<Value, ClientError> {
        let ctl = |e: &dyn std::fmt::Display| ClientError::Control(e.to_string());
        self.send
            .write_all(&frame(raw))
            .await
            .map_err(|e| ctl(&e))?;
        let mut first = [0u8; 1];
        self.recv
            .read_exact(&mut first)
            .await
            .map_err(|e| ctl(&e))?;
        let mut len = vec![first[0]; 1usize << (first[0] >> 6)];
        if len.len() > 1 {
            self.recv
                .read_exact(&mut len[1..])
                .await
                .map_err(|e| ctl(&e))?;
        }
        let (n, _) = read_varint(&len).map_err(|e| ctl(&e))?;
        let mut body = vec![0u8; n as usize];
        self.recv.read_exact(&mut body).await.map_err(|e| ctl(&e))?;
        serde_json::from_slice(&body).map_err(|e| ctl(&e))
    }
}

fn rtp_header(pt: u8, seq: u16, ts: u32, ssrc: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 0x80;
    h[1] = pt;
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&ts.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    h
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishReport {
    pub packets: u64,
    pub video_packets: u64,
    pub retransmitted: u64,
    pub nacks_received: u64,
    pub keyframe_requests: u64,
}

impl PublishReport {
    pub fn to_json(&self) -> Value {
        json!({"packets": self.packets, "video_packets": self.video_packets, "retransmitted": self.retransmitted,
               "nacks_received": self.nacks_received, "keyframe_requests": self.keyframe_requests})
    }
}

const FLOW_PUBLISH: u64 = 0;
const FLOW_SUBSCRIBE: u64 = 1;
const OPUS_PT: u8 = 111;

const H264_PT: u8 = 102;
/// Largest RTP payload put in one datagram (QUIC datagrams on a 1280+ byte path hold ~1150).
const MAX_RTP_PAYLOAD: usize = 1000;

/// A moving test pattern, H.264 (constrained baseline, packetization-mode 1) from OpenH264.
struct VideoSource {
    enc: openh264::encoder::Encoder,
    frame: u64,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

impl VideoSource {
    const W: usize = 320;
    const H: usize = 240;

    fn new(ssrc: u32) -> Result<Self, ClientError> {
        use openh264::encoder::{BitRate, EncoderConfig, FrameRate, IntraFramePeriod};
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(300_000))
            .max_frame_rate(FrameRate::from_hz(15.0))
            .intra_frame_period(IntraFramePeriod::from_num_frames(90));
        let enc = openh264::encoder::Encoder::with_api_config(
            openh264::OpenH264API::from_source(),
            config,
        )
        .map_err(|e| ClientError::Video(e.to_string()))?;
        Ok(Self {
            enc,
            frame: 0,
            ssrc,
            seq: rand::random(),
            ts: rand::random(),
        })
    }

    /// Encodes the next frame and returns its RTP packets (RFC 6184: single NAL or FU-A).
    fn next_packets(&mut self) -> Result<Vec<Vec<u8>>, ClientError> {
        let (w, h) = (Self::W, Self::H);
        let mut yuv = vec![128u8; w * h * 3 / 2];
        let shift = (self.frame * 4) as usize;
        for y in 0..h {
            for x in 0..w {
                yuv[y * w + x] = (((x + shift) / 16 + y / 16) % 2 * 160 + 40) as u8;
            }
        }
        let buffer = openh264::formats::YUVBuffer::from_vec(yuv, w, h);
        let bits = self
            .enc
            .encode(&buffer)
            .map_err(|e| ClientError::Video(e.to_string()))?;
        let mut nals: Vec<Vec<u8>> = Vec::new();
        for l in 0..bits.num_layers() {
            let Some(layer) = bits.layer(l) else { continue };
            for n in 0..layer.nal_count() {
                if let Some(nal) = layer.nal_unit(n) {
                    let body = nal
                        .strip_prefix(&[0, 0, 0, 1][..])
                        .or_else(|| nal.strip_prefix(&[0, 0, 1][..]))
                        .unwrap_or(nal);
                    if !body.is_empty() {
                        nals.push(body.to_vec());
                    }
                }
            }
        }
        self.frame += 1;
        let mut packets = Vec::new();
        let count = nals.len();
        for (i, nal) in nals.iter().enumerate() {
            let last_nal = i + 1 == count;
            if nal.len() <= MAX_RTP_PAYLOAD {
                packets.push((nal.clone(), last_nal));
                continue;
            }
            // FU-A: the indicator keeps F and NRI with type 28; the header carries S/E and the type.
            let (hdr, body) = (nal[0], &nal[1..]);
            let chunks: Vec<&[u8]> = body.chunks(MAX_RTP_PAYLOAD - 2).collect();
            for (k, c) in chunks.iter().enumerate() {
                let start = if k == 0 { 0x80 } else { 0 };
                let end = if k + 1 == chunks.len() { 0x40 } else { 0 };
                let mut p = vec![(hdr & 0xe0) | 28, start | end | (hdr & 0x1f)];
                p.extend_from_slice(c);
                packets.push((p, last_nal && end != 0));
            }
        }
        let out = packets
            .into_iter()
            .map(|(payload, marker)| {
                let mut h = rtp_header(H264_PT, self.seq, self.ts, self.ssrc);
                if marker {
                    h[1] |= 0x80;
                }
                self.seq = self.seq.wrapping_add(1);
                let mut p = h.to_vec();
                p.extend_from_slice(&payload);
                p
            })
            .collect();
        self.ts = self.ts.wrapping_add(90_000 / 15);
        Ok(out)
    }
}

/// Publishes a `hz` sine tone for `seconds`, Opus at 48 kHz in 20 ms frames, and with `video` an
/// H.264 test pattern at 15 fps; answers NACKs (and PLIs, with a keyframe).
pub async fn publish_tone(
    client: &mut Client,
    hz: f64,
    seconds: f64,
    video: bool,
) -> Result<PublishReport, ClientError> {
    let ssrc: u32 = rand::random();
    let vssrc: u32 = rand::random();
    let mut tracks = vec![
        json!({"kind": "audio", "codec": "opus", "payload_type": OPUS_PT,
        "clock_rate": 48000, "channels": 2, "fmtp": "minptime=10;useinbandfec=1", "ssrc": ssrc}),
    ];
    let mut source = None;
    if video {
        tracks.push(json!({"kind": "video", "codec": "H264", "payload_type": H264_PT, "clock_rate": 90000,
            "fmtp": "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", "ssrc": vssrc}));
        source = Some(VideoSource::new(vssrc)?);
    }
    client
        .request(json!({"type": "publish", "flow": FLOW_PUBLISH, "tracks": tracks}))
        .await?;
    let mut vtick = tokio::time::interval(Duration::from_millis(1000 / 15));
    let mut enc = opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Audio)
        .map_err(|e| ClientError::Opus(e.to_string()))?;
    let frames = (seconds * 50.0).round() as u64;
    let mut history: HashMap<u16, Bytes> = HashMap::new();
    let mut vhistory: HashMap<u16, Bytes> = HashMap::new();
    let mut report = PublishReport::default();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let (mut seq, mut ts, mut phase) = (rand::random::<u16>(), rand::random::<u32>(), 0f64);
    let mut pcm = [0i16; 960];
    let mut out = [0u8; 1500];
    let step = 2.0 * std::f64::consts::PI * hz / 48000.0;
    while report.packets < frames {
        tokio::select! {
            _ = tick.tick() => {
                for s in pcm.iter_mut() {
                    *s = (phase.sin() * 0.3 * f64::from(i16::MAX)) as i16;
                    phase = (phase + step) % (2.0 * std::f64::consts::PI);
                }
                let n = enc.encode(&pcm, &mut out).map_err(|e| ClientError::Opus(e.to_string()))?;
                let pkt = Bytes::from(datagram(FLOW_PUBLISH, &[&rtp_header(OPUS_PT, seq, ts, ssrc), &out[..n]]));
                // The datagram may be refused when the congestion window is full: it is a loss
                // like any other, repaired by NACK.
                let _ = client.conn.send_datagram(pkt.clone());
                history.insert(seq, pkt);
                history.remove(&seq.wrapping_sub(1024));
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(960);
                report.packets += 1;
            }
            _ = vtick.tick(), if source.is_some() => {
                if let Some(v) = source.as_mut() {
                    for p in v.next_packets()? {
                        let seq = u16::from_be_bytes([p[2], p[3]]);
                        let d = Bytes::from(datagram(FLOW_PUBLISH, &[&p]));
                        let _ = client.conn.send_datagram(d.clone());
                        vhistory.insert(seq, d);
                        vhistory.remove(&seq.wrapping_sub(1024));
                        report.video_packets += 1;
                    }
                }
            }
            d = client.conn.read_datagram() => {
                let d = d.map_err(|e| ClientError::Quic(e.to_string()))?;
                let Ok((_, pkt)) = split_datagram(&d) else { continue };
                for p in Compound::new(pkt).flatten() {
                    if let (RtcpPacket::Pli(pli), Some(v)) = (&p, source.as_mut()) {
                        if pli.media_ssrc == vssrc {
                            v.enc.force_intra_frame();
                            report.keyframe_requests += 1;
                        }
                    }
                    if let RtcpPacket::Nack(n) = p {
                        let history = if n.media_ssrc == vssrc { &vhistory } else { &history };
                        report.nacks_received += 1;
                        for (pid, blp) in n.pairs() {
                            for s in std::iter::once(pid).chain((0..16).filter(|b| blp & (1 << b) != 0).map(|b| pid.wrapping_add(b + 1))) {
                                if let Some(p) = history.get(&s) {
                                    let _ = client.conn.send_datagram(p.clone());
                                    report.retransmitted += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(report)
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscribeReport {
    pub audio_packets: u64,
    pub duplicates: u64,
    pub expected: u64,
    pub lost: u64,
    pub decode_errors: u64,
    pub level_dbfs: f64,
    pub video_packets: u64,
    pub nacks_sent: u64,
}

impl SubscribeReport {
    pub fn loss_pct(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            100.0 * self.lost as f64 / self.expected as f64
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"audio_packets": self.audio_packets, "duplicates": self.duplicates, "expected": self.expected,
               "lost": self.lost, "loss_pct": self.loss_pct(), "decode_errors": self.decode_errors,
               "level_dbfs": self.level_dbfs, "video_packets": self.video_packets, "nacks_sent": self.nacks_sent})
    }
}

/// Extends 16-bit sequence numbers against the highest seen.
fn extend(highest: Option<i64>, seq: u16) -> i64 {
    match highest {
        None => i64::from(seq),
        Some(h) => h + i64::from(seq.wrapping_sub(h as u16) as i16),
    }
}

/// A generic NACK (RFC 4585 §6.2.1) for `missing` (ascending extended numbers).
fn nack(sender: u32, media: u32, missing: &[i64]) -> Vec<u8> {
    let mut pairs: Vec<(u16, u16)> = Vec::new();
    for &m in missing {
        let s = m as u16;
        match pairs.last_mut() {
            Some((pid, blp)) if s.wrapping_sub(*pid) >= 1 && s.wrapping_sub(*pid) <= 16 => {
                *blp |= 1 << (s.wrapping_sub(*pid) - 1)
            }
            _ => pairs.push((s, 0)),
        }
    }
    let mut p = vec![0x81, 205, 0, 0];
    p.extend_from_slice(&sender.to_be_bytes());
    p.extend_from_slice(&media.to_be_bytes());
    for (pid, blp) in pairs {
        p.extend_from_slice(&pid.to_be_bytes());
        p.extend_from_slice(&blp.to_be_bytes());
    }
    let words = (p.len() / 4 - 1) as u16;
    p[2..4].copy_from_slice(&words.to_be_bytes());
    p
}

/// Subscribes to the room's most recent publisher for `seconds`, repairing audio loss with
/// NACK, then decodes the audio with libopus.
pub async fn subscribe(client: &mut Client, seconds: f64) -> Result<SubscribeReport, ClientError> {
    let reply = client
        .request(json!({"type": "subscribe", "flow": FLOW_SUBSCRIBE}))
        .await?;
    let tracks = reply["tracks"].as_array().cloned().unwrap_or_default();
    let ssrc_of = |kind: &str| {
        tracks
            .iter()
            .find(|t| t["kind"] == kind)
            .and_then(|t| t["ssrc"].as_u64())
            .map(|s| s as u32)
    };
    let audio = ssrc_of("audio");
    let video = ssrc_of("video");
    let me: u32 = rand::random();
    let mut report = SubscribeReport::default();
    let mut packets: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
    let mut highest: Option<i64> = None;
    // Missing number -> (last NACK time, NACKs sent).
    let mut missing: BTreeMap<i64, (Option<Instant>, u32)> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick() => {
                let now = Instant::now();
                let due: Vec<i64> = missing
                    .iter_mut()
                    .filter(|(_, (last, n))| *n < 8 && last.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(60)))
                    .map(|(s, (last, n))| { *last = Some(now); *n += 1; *s })
                    .collect();
                if let (Some(a), false) = (audio, due.is_empty()) {
                    let _ = client.conn.send_datagram(Bytes::from(datagram(FLOW_SUBSCRIBE, &[&nack(me, a, &due)])));
                    report.nacks_sent += 1;
                }
            }
            d = client.conn.read_datagram() => {
                let d = d.map_err(|e| ClientError::Quic(e.to_string()))?;
                let Ok((_, pkt)) = split_datagram(&d) else { continue };
                if volna::core::rtp::is_rtcp(pkt) { continue; }
                let Ok(view) = RtpView::parse(pkt) else { continue };
                if Some(view.ssrc) == video {
                    report.video_packets += 1;
                    continue;
                }
                if Some(view.ssrc) != audio { continue; }
                let ext = extend(highest, view.sequence);
                if let Some(h) = highest {
                    for gap in h + 1..ext {
                        missing.entry(gap).or_insert((None, 0));
                    }
                }
                highest = Some(highest.map_or(ext, |h| h.max(ext)));
                missing.remove(&ext);
                if packets.insert(ext, view.payload(pkt).to_vec()).is_some() {
                    report.duplicates += 1;
                }
            }
        }
    }
    report.audio_packets = packets.len() as u64;
    // Judge loss up to shortly before the end: the last packets had no time for repair.
    if let (Some(&first), Some(&last)) = (packets.keys().next(), packets.keys().next_back()) {
        let end = (last - 10).max(first);
        report.expected = (end - first + 1) as u64;
        report.lost = report.expected - packets.range(first..=end).count() as u64;
        let mut dec = opus::Decoder::new(48000, opus::Channels::Mono)
            .map_err(|e| ClientError::Opus(e.to_string()))?;
        let mut pcm = vec![0i16; 5760];
        let (mut sum, mut n) = (0f64, 0u64);
        for s in first..=last {
            match packets.get(&s) {
                Some(p) => match dec.decode(p, &mut pcm, false) {
                    Ok(k) => {
                        for x in &pcm[..k] {
                            sum += f64::from(*x) * f64::from(*x);
                        }
                        n += k as u64;
                    }
                    Err(_) => report.decode_errors += 1,
                },
                // Conceal the gap, as a receiver would.
                None => {
                    let _ = dec.decode(&[], &mut pcm, false);
                }
            }
        }
        let rms = (sum / n.max(1) as f64).sqrt() / f64::from(i16::MAX);
        report.level_dbfs = if rms > 0.0 {
            20.0 * rms.log10()
        } else {
            f64::NEG_INFINITY
        };
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nack_groups_into_bitmasks() {
        let p = nack(1, 2, &[10, 11, 13, 30]);
        let Some(Ok(RtcpPacket::Nack(n))) = Compound::new(&p).next() else {
            panic!("not a NACK")
        };
        assert_eq!(n.media_ssrc, 2);
        assert_eq!(n.pairs().collect::<Vec<_>>(), vec![(10, 0b101), (30, 0)]);
    }

    #[test]
    fn sequence_extension() {
        assert_eq!(extend(None, 5), 5);
        assert_eq!(extend(Some(65535), 0), 65536);
        assert_eq!(extend(Some(65536), 65535), 65535);
    }
}
