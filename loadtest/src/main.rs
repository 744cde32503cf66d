//! volna-load: load generator for volna.
//!
//! This first scenario, `core-fanout`, drives the relay core in-process: one publisher's video
//! packets fanned out to N viewers, reporting forwarded packets per CPU-second of the core alone
//! (no sockets, no SRTP). The networked scenarios (audio, meeting, broadcast) and the side-by-side
//! comparison with Janus build on it.

use std::time::{Duration, Instant};

use clap::Parser;
use volna::core::room::{
    Feedback, MediaKind, Relay, RelayConfig, SessionId, Sink, TrackRef, TrackSpec, ViewerTrackSpec,
};
use volna::core::rtp::{Codec, ExtKind, ExtMap, RtpView};

#[derive(Parser, Debug)]
#[command(about = "volna load generator")]
struct Args {
    /// Scenario to run.
    #[arg(long, default_value = "core-fanout", value_parser = ["core-fanout"])]
    scenario: String,
    /// Viewers per publisher.
    #[arg(long, default_value_t = 10)]
    viewers: u64,
    /// How long to run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// RTP packet size in bytes.
    #[arg(long, default_value_t = 1200)]
    size: usize,
}

struct Counting {
    packets: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl Sink for Counting {
    fn rtp(&mut self, _to: SessionId, header: &[u8], payload: &[u8]) {
        self.buf.clear();
        self.buf.extend_from_slice(header);
        self.buf.extend_from_slice(payload);
        self.packets += 1;
        self.bytes += self.buf.len() as u64;
    }
    fn rtcp(&mut self, _to: SessionId, _packet: &[u8]) {}
}

fn main() {
    let args = Args::parse();
    let mut mid = ExtMap::default();
    mid.insert(4, ExtKind::Mid);
    let mut relay = Relay::new(RelayConfig::default());
    let track = TrackSpec {
        kind: MediaKind::Video,
        mid: "1".into(),
        codec: Codec::Vp8,
        payload_type: 96,
        clock_rate: 90000,
        ssrc: Some(1),
        ext: mid.clone(),
        feedback: Feedback::default(),
    };
    relay
        .add_publisher(1, "load", 1, vec![track])
        .expect("fresh relay");
    let mut sink = Counting {
        packets: 0,
        bytes: 0,
        buf: Vec::with_capacity(2048),
    };
    let start = Instant::now();
    for v in 0..args.viewers {
        let spec = ViewerTrackSpec {
            source: TrackRef {
                publisher: 1,
                track: 0,
            },
            mid: "0".into(),
            ssrc: 1000 + v as u32,
            payload_type: 96,
            ext: mid.clone(),
            initial_seq: 0,
            initial_ts: 0,
        };
        relay.add_viewer(100 + v, "load").expect("fresh viewer id");
        relay
            .add_viewer_track(start, 100 + v, spec, &mut sink)
            .expect("publisher exists");
    }
    let mut pkt = vec![0x80u8, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x10, 0x00];
    pkt.resize(args.size.max(14), 0xab);
    // Packets as the worker receives them: split off one buffer and frozen, so keeping them in
    // the retransmit cache is a reference count.
    let mut arena = bytes::BytesMut::with_capacity(4096 * pkt.len());
    let ring: Vec<bytes::Bytes> = (1..=4096u16)
        .map(|seq| {
            arena.extend_from_slice(&pkt);
            arena[2..4].copy_from_slice(&seq.to_be_bytes());
            arena.split().freeze()
        })
        .collect();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut i = 0usize;
    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
    while Instant::now() < deadline {
        for _ in 0..1000 {
            i = (i + 1) % ring.len();
            let view = RtpView::parse(&ring[i]).expect("well-formed packet");
            relay.handle_rtp(start, 1, &ring[i], &view, &mut sink);
        }
    }
    // Without /proc (not Linux), wall time stands in for CPU time.
    let cpu = match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => wall0.elapsed().as_secs_f64(),
    }
    .max(1e-9);
    println!(
        "## volna-load {}: 1 publisher x {} viewers, {} B packets",
        args.scenario, args.viewers, args.size
    );
    println!("| forwarded packets | CPU s | packets per CPU-second | ns per packet per viewer |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {:.3} | {:.0} | {:.1} |",
        sink.packets,
        cpu,
        sink.packets as f64 / cpu,
        cpu * 1e9 / sink.packets.max(1) as f64
    );
}

/// CPU time of this process (user + system) from /proc, in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = f.get(11)?.parse().ok()?;
    let system: f64 = f.get(12)?.parse().ok()?;
    // Linux reports clock ticks; USER_HZ is 100 on every mainstream build.
    Some((user + system) / 100.0)
}
