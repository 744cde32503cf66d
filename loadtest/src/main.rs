//! volna-load: load generator for volna.
//!
//! `core-fanout` drives the relay core in-process: one publisher's video packets fanned out to N
//! viewers, reporting forwarded packets per CPU-second of the core alone (no sockets, no SRTP).
//! `audio`, `meeting` and `broadcast` run real WebRTC clients (ICE, DTLS-SRTP, one UDP port each)
//! against a relay process reached through its signalling API, optionally alternating rounds
//! with Janus (`--compare janus`), and write report.md, report.json and SVG plots.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use volna::core::room::{Feedback, RelayConfig, TrackSpec};
use volna::core::rtp::ExtKind;
use volna::testkit::{vp8_track, CountingSink, RtpBuilder, Sim, ViewerTrack};
use volna_load::cluster_target::ClusterTarget;
use volna_load::janus::{JanusOptions, JanusTarget};
use volna_load::netns;
use volna_load::report::{Report, RoundResult, TargetSummary};
use volna_load::rtc;
use volna_load::scenario::{self, RoundOptions, Scenario};
use volna_load::target::Target;
use volna_load::volna_target::{VolnaOptions, VolnaTarget};

#[derive(Parser, Debug)]
#[command(about = "volna load generator")]
struct Args {
    /// Scenario to run.
    #[arg(long, default_value = "core-fanout", value_parser = ["core-fanout", "audio", "meeting", "broadcast", "rfc8867-5.1", "churn"])]
    scenario: String,
    /// core-fanout: viewers per publisher.
    #[arg(long, default_value_t = 10)]
    viewers: u64,
    /// Measured seconds (default 2 for core-fanout, 10 for the networked scenarios).
    #[arg(long)]
    seconds: Option<f64>,
    /// core-fanout: RTP packet size in bytes.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// N: listeners (audio), participants (meeting), viewers (broadcast) or clients present at
    /// once (churn).
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Seconds of traffic before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Video bitrate of each publisher.
    #[arg(long, default_value_t = 1000)]
    video_kbps: u32,
    /// Publishers send video as two simulcast layers (a quarter of --video-kbps, and all of
    /// it); odd-numbered participants receive on links of half --video-kbps (REMB) and take the
    /// low layer. With volna-cluster, the report adds the relay links' bytes and those
    /// per-link layer selection held back.
    #[arg(long)]
    simulcast: bool,
    /// Every client over ICE-TCP (RFC 6544, RFC 4571 framing) instead of UDP: compare with the
    /// same run without it.
    #[arg(long)]
    tcp: bool,
    /// Relay under test.
    /// Relay under test: `volna-cluster` is two volna nodes sharing a Redis (Debian's
    /// `redis-server`, started here), participants split between them.
    #[arg(long, default_value = "volna", value_parser = ["volna", "janus", "volna-cluster"])]
    target: String,
    /// Alternate rounds with this relay (`volna-tcp`: the same volna, every client over
    /// ICE-TCP).
    #[arg(long, value_parser = ["janus", "volna-cluster", "volna-tcp"])]
    compare: Option<String>,
    /// Rounds per target (default 2 with --compare, else 1); the first is dropped when > 1.
    #[arg(long)]
    rounds: Option<usize>,
    /// Directory for report.md, report.json and the SVG plots.
    #[arg(long, default_value = "load-report")]
    out: PathBuf,
    /// The volna binary (default: `volna` next to this executable).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// volna's `[media] workers` (left to the relay's default when absent).
    #[arg(long)]
    workers: Option<usize>,
    /// Do not pin the relay to CPU 0 and the load generator to CPU 1.
    #[arg(long)]
    no_pin: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// rfc8867-5.1: report on this trace (a JSON array of samples recorded over real sockets,
    /// as `tests/browser/rfc8867.test.mjs` writes it) instead of running on virtual time.
    #[arg(long)]
    trace: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.scenario == "core-fanout" {
        core_fanout(&args);
        return ExitCode::SUCCESS;
    }
    if args.scenario == "churn" {
        return match churn(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("volna-load: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.scenario == "rfc8867-5.1" {
        return match rfc8867(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("volna-load: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let janus = args.target == "janus" || args.compare.as_deref() == Some("janus");
    if janus && !netns::in_netns() {
        // Janus's ICE agent ignores loopback: the whole run moves into a namespace with a veth
        // address that Janus and its clients share.
        return match netns::reexec_in_netns() {
            Ok(status) if status.success() => ExitCode::SUCCESS,
            Ok(status) => {
                eprintln!("volna-load: run in network namespace ended with {status}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("volna-load: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match networked(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nvolna-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The soak (see `churn`): clients coming and going for `--seconds` (default 600) against a
/// volna process; report.md and report.json in `--out`; fails when a check fails.
fn churn(args: &Args) -> Result<bool, String> {
    let target = VolnaTarget::start(&VolnaOptions {
        relay_bin: args.relay_bin.clone().unwrap_or_else(default_relay_bin),
        workers: args.workers,
        extra: Vec::new(),
        config: String::new(),
    })?;
    let opts = volna_load::churn::ChurnOptions {
        seconds: args.seconds.unwrap_or(600.0),
        clients: args.clients,
        rooms: 3,
        seed: 7,
        progress: !args.quiet,
    };
    let report = volna_load::churn::run(target.pid(), target.port(), &opts)?;
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let md = report.markdown();
    std::fs::write(args.out.join("report.md"), &md).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("report.json"), json).map_err(|e| e.to_string())?;
    println!("{md}");
    Ok(report.passed())
}

/// RFC 8867 §5.1 on virtual time (see `congestion`): the trace as JSON, a plot of capacity,
/// estimate and delivered rate, and a Markdown summary per phase.
fn rfc8867(args: &Args) -> Result<(), String> {
    let (samples, how) = match &args.trace {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let samples: Vec<volna_load::congestion::Sample> =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let how = "Recorded over real sockets by `tests/browser/rfc8867.test.mjs` \
                 (`VOLNA_RFC8867_OUT=DIR node --test tests/browser/rfc8867.test.mjs`, which then runs \
                 `volna-load --scenario rfc8867-5.1 --trace DIR/trace.json --out DIR`): a Chromium \
                 simulcast publisher, and a Chromium viewer whose traffic to volna goes through \
                 `volna-impair --profile rfc8867-5.1` (1, 2.5, 0.6, 1 Mbps from 0, 40, 60, 80 s; \
                 50 ms one-way delay; 300 ms of queue; both directions). The estimate is volna's for \
                 that viewer (`/stats`), delivered is what the viewer's transport received \
                 (SRTP included), sampled every 0.5 s. The publisher's top layer (960×540 from \
                 Chromium's fake camera) needs about 600 kbps: from 40 s there is no more to send, \
                 and the estimate stays near what the layers could use (volna probes for no more)."
                .to_owned();
            (samples, how)
        }
        None => {
            let seconds = args.seconds.unwrap_or(100.0).max(1.0) as u64;
            let how = format!(
                "`volna-load --scenario rfc8867-5.1 --seconds {seconds} --out DIR`: the relay core \
                 forwards a simulcast publisher (150 / 500 / 1500 kbps layers) to one viewer behind \
                 the §5.1 link (1, 2.5, 0.6, 1 Mbps from 0, 40, 60, 80 s; 50 ms one-way delay; \
                 300 ms of queue), the viewer's side answers with transport-cc feedback every \
                 50 ms. Virtual time."
            );
            (volna_load::congestion::rfc8867_5_1(seconds), how)
        }
    };
    let seconds = samples.last().map_or(0.0, |s| s.t).ceil().max(1.0) as u64;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let line = |name: &str, f: fn(&volna_load::congestion::Sample) -> f64, dashed: bool| {
        (
            name.to_owned(),
            samples.iter().map(f).collect::<Vec<f64>>(),
            dashed,
        )
    };
    let svg = volna_load::report::svg_plot(
        "RFC 8867 5.1: capacity, volna's estimate and what the viewer got (samples every 0.5 s)",
        "kbps",
        &[
            line("capacity", |s| s.capacity_kbps, true),
            line("estimate", |s| s.estimate_kbps, false),
            line("delivered", |s| s.delivered_kbps, false),
        ],
    );
    // Phases of the script: (from, to, capacity); steady = the phase's last 10 s.
    let phases = [
        (0.0, 40.0),
        (40.0, 60.0),
        (60.0, 80.0),
        (80.0, seconds as f64),
    ];
    let mut md = String::from("# RFC 8867 §5.1 against volna's congestion control\n\n");
    md.push_str(&format!(
        "{how} The x axis of the plot is in half seconds.\n\n"
    ));
    md.push_str("| phase | capacity kbps | steady estimate kbps | steady delivered kbps | utilisation | layer |\n|---|---|---|---|---|---|\n");
    for (from, to) in phases.into_iter().filter(|(f, _)| *f < seconds as f64) {
        let steady: Vec<_> = samples
            .iter()
            .filter(|s| s.t > (to - 10.0).max(from) && s.t <= to)
            .collect();
        if steady.is_empty() {
            continue;
        }
        let mean = |f: fn(&volna_load::congestion::Sample) -> f64| {
            steady.iter().map(|s| f(s)).sum::<f64>() / steady.len() as f64
        };
        let cap = mean(|s| s.capacity_kbps);
        let delivered = mean(|s| s.delivered_kbps);
        md.push_str(&format!(
            "| {from:.0}–{to:.0} s | {cap:.0} | {:.0} | {delivered:.0} | {:.0}% | {} |\n",
            mean(|s| s.estimate_kbps),
            100.0 * delivered / cap.max(1.0),
            steady.last().map_or(-1, |s| s.layer)
        ));
    }
    // How fast the estimate followed each change.
    let follow = |at: f64, pred: &dyn Fn(&volna_load::congestion::Sample) -> bool| {
        samples
            .iter()
            .find(|s| s.t > at && pred(s))
            .map_or("not within the run".to_owned(), |s| {
                format!("{:.1} s", s.t - at)
            })
    };
    md.push_str(&format!(
        "\nEstimate at or above 80% of 2.5 Mbps after the rise at 40 s: {}. \
         At or below 0.66 Mbps after the drop at 60 s: {}. \
         At or above 80% of 1 Mbps after the rise at 80 s: {}.\n",
        follow(40.0, &|s| s.estimate_kbps >= 2000.0),
        follow(60.0, &|s| s.estimate_kbps <= 660.0),
        follow(80.0, &|s| s.estimate_kbps >= 800.0),
    ));
    let json = serde_json::to_string_pretty(&samples).map_err(|e| e.to_string())?;
    for (name, body) in [
        ("report.md", md.as_str()),
        ("trace.json", json.as_str()),
        ("rfc8867-5.1.svg", svg.as_str()),
    ] {
        let path = args.out.join(name);
        std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    print!("{md}");
    Ok(())
}

fn default_relay_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("volna")))
        .unwrap_or_else(|| PathBuf::from("volna"))
}

fn start_target(name: &str, args: &Args) -> Result<Box<dyn Target>, String> {
    match name {
        "volna" | "volna-tcp" => Ok(Box::new(VolnaTarget::start(&VolnaOptions {
            relay_bin: args.relay_bin.clone().unwrap_or_else(default_relay_bin),
            workers: args.workers,
            extra: Vec::new(),
            config: String::new(),
        })?)),
        "volna-cluster" => Ok(Box::new(ClusterTarget::start(
            &VolnaOptions {
                relay_bin: args.relay_bin.clone().unwrap_or_else(default_relay_bin),
                workers: args.workers,
                extra: Vec::new(),
                config: String::new(),
            },
            2,
        )?)),
        "janus" => Ok(Box::new(JanusTarget::start(&JanusOptions::default())?)),
        other => Err(format!("unknown target {other}")),
    }
}

fn networked(args: &Args) -> Result<(), String> {
    let scenario = Scenario::parse(&args.scenario).ok_or("unknown scenario")?;
    if args.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let mut order = vec![args.target.clone()];
    if let Some(c) = &args.compare {
        if *c != args.target {
            order.push(c.clone());
        }
    }
    let rounds = args
        .rounds
        .unwrap_or(if order.len() > 1 { 2 } else { 1 })
        .max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = !args.no_pin && cpus >= 2;
    if pin {
        // The load generator on CPU 1 (its runtime threads inherit this); the relay on CPU 0.
        scenario::pin(std::process::id(), 1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if pin { 1 } else { cpus.clamp(1, 4) })
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let identity = rtc::Identity::generate().map_err(|e| e.to_string())?;
    let opts = RoundOptions {
        scenario,
        clients: args.clients,
        seconds: args.seconds.unwrap_or(10.0).max(1.0),
        warmup: args.warmup.max(0.0),
        video_kbps: args.video_kbps,
        simulcast: args.simulcast,
        tcp: args.tcp,
        progress: !args.quiet,
    };
    let mut results: Vec<(String, Vec<RoundResult>)> =
        order.iter().map(|n| (n.clone(), Vec::new())).collect();
    // Loopback between two of our own clients: what the relay's figures are reduced by.
    let baseline = scenario::measure_baseline(
        &rt,
        &identity,
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        args.video_kbps,
    )?;
    for round in 0..rounds {
        for (name, done) in results.iter_mut() {
            let mut target = start_target(name, args)?;
            if pin {
                for pid in target.pids() {
                    scenario::pin(pid, 0);
                }
            }
            let mut opts = opts.clone();
            opts.tcp |= name == "volna-tcp";
            let r = scenario::run_round(target.as_mut(), &rt, &identity, &opts, round + 1);
            target.stop();
            done.push(r?);
        }
    }
    let report = Report {
        scenario: scenario.name().into(),
        description: format!(
            "{}{}{}",
            scenario.describe(args.clients, args.video_kbps),
            if args.simulcast {
                " as two simulcast layers, odd-numbered participants on half-rate links"
            } else {
                ""
            },
            if args.tcp {
                ", every client over ICE-TCP"
            } else {
                ""
            }
        ),
        baseline,
        targets: results
            .into_iter()
            .map(|(n, r)| TargetSummary::new(&n, r))
            .collect(),
    };
    print!("{}", report.markdown());
    report.write(&args.out)?;
    eprintln!(
        "volna-load: wrote {}/report.md, report.json, throughput.svg, latency.svg",
        args.out.display()
    );
    Ok(())
}

fn core_fanout(args: &Args) {
    let seconds = args.seconds.unwrap_or(2.0);
    let mut sim = Sim::with_sink(RelayConfig::default(), CountingSink::new());
    sim.room = "load";
    let track = TrackSpec {
        feedback: Feedback::default(),
        ..vp8_track(Some(1))
    };
    sim.publish(1, 1, vec![track]);
    let start = sim.now;
    for v in 0..args.viewers {
        let spec = ViewerTrack::new(1, 0, 1000 + v as u32, 96)
            .ext(&[(4, ExtKind::Mid)])
            .build();
        sim.view(100 + v, vec![spec]);
    }
    let pkt = RtpBuilder::new(1, 96)
        .payload(&[0x10, 0x00])
        .pad_to(args.size, 0xab)
        .to_vec();
    // Packets as the worker receives them: frozen buffers, so keeping them in the retransmit
    // cache is a reference count. Each goes round a ring with a new sequence number every
    // time (written in place once the cache has let it go), so the relay sees one long stream,
    // not the same 4096 packets again (which it would drop as duplicates).
    let mut ring: Vec<bytes::Bytes> = (0..4096).map(|_| bytes::Bytes::from(pkt.clone())).collect();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut i = 0usize;
    let mut seq = 0u16;
    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
    while Instant::now() < deadline {
        for _ in 0..1000 {
            i = (i + 1) % ring.len();
            seq = seq.wrapping_add(1);
            let mut m = match std::mem::take(&mut ring[i]).try_into_mut() {
                Ok(m) => m,
                Err(shared) => bytes::BytesMut::from(&shared[..]),
            };
            m[2..4].copy_from_slice(&seq.to_be_bytes());
            ring[i] = m.freeze();
            sim.feed(1, &ring[i]);
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
        sim.sink.rtp,
        cpu,
        sim.sink.rtp as f64 / cpu,
        cpu * 1e9 / sim.sink.rtp.max(1) as f64
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
