//! Scenarios and one measured round: build the clients a scenario needs through a [`Target`]'s
//! signalling, wait until every one is connected, warm up, measure for a fixed window (by send
//! time), and read the relay's CPU time and peak RSS from /proc.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::{Baseline, LinkBytes, RoundResult, Sample};
use crate::rtc::{
    self, Identity, Role, RtcClient, RunningClient, Shared, STATE_CONNECTED, STATE_FAILED,
};
use crate::target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 10 audio publishers, N listeners each subscribed to all 10.
    Audio,
    /// N participants publishing audio and video, each subscribed to every other.
    Meeting,
    /// 1 audio+video publisher, N viewers.
    Broadcast,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "audio" => Some(Scenario::Audio),
            "meeting" => Some(Scenario::Meeting),
            "broadcast" => Some(Scenario::Broadcast),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Audio => "audio",
            Scenario::Meeting => "meeting",
            Scenario::Broadcast => "broadcast",
        }
    }

    pub fn describe(self, n: usize, video_kbps: u32) -> String {
        match self {
            Scenario::Audio => format!("10 audio publishers x {n} listeners (opus 50 pkt/s)"),
            Scenario::Meeting => {
                format!("{n} x {n} meeting, audio + VP8 {video_kbps} kbps each")
            }
            Scenario::Broadcast => {
                format!("1 publisher (audio + VP8 {video_kbps} kbps) x {n} viewers")
            }
        }
    }

    /// (publishers, video, subscriptions as (subscriber, publisher index)).
    fn plan(self, n: usize) -> (usize, bool, Vec<(usize, usize)>) {
        match self {
            Scenario::Audio => (
                10,
                false,
                (0..n).flat_map(|l| (0..10).map(move |p| (l, p))).collect(),
            ),
            Scenario::Meeting => (
                n,
                true,
                (0..n)
                    .flat_map(|s| (0..n).filter(move |&p| p != s).map(move |p| (s, p)))
                    .collect(),
            ),
            Scenario::Broadcast => (1, true, (0..n).map(|v| (v, 0)).collect()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RoundOptions {
    pub scenario: Scenario,
    pub clients: usize,
    pub seconds: f64,
    pub warmup: f64,
    pub video_kbps: u32,
    /// Publishers send their video as two simulcast layers, and odd-numbered participants
    /// receive on links that carry half the video rate (they tell the relay with REMB): they
    /// take the low layer, the others the full one.
    pub simulcast: bool,
    /// Every client over ICE-TCP (RFC 6544) instead of UDP.
    pub tcp: bool,
    /// Stderr progress line.
    pub progress: bool,
}

/// Relay CPU time (user + system, all threads) in seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = f.get(11)?.parse().ok()?;
    let system: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((user + system) / hz)
}

/// Peak resident set (VmHWM) in MB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Pins every thread of `pid` to `cpu` (threads made later inherit it from their creator).
pub fn pin(pid: u32, cpu: usize) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only reads it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        }
    }
}

/// Rewrites the stderr progress line when its text changed.
fn progress(on: bool, text: &str) {
    static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    if !on {
        return;
    }
    if let Ok(mut last) = LAST.lock() {
        if *last == text {
            return;
        }
        text.clone_into(&mut last);
    }
    let mut e = std::io::stderr();
    let _ = write!(e, "\r{text:<78}");
    let _ = e.flush();
}

/// Sets the scenario up on `target`, measures, and tears the clients down (not the relay).
pub fn run_round(
    target: &mut dyn Target,
    rt: &tokio::runtime::Runtime,
    identity: &Identity,
    opts: &RoundOptions,
    round: usize,
) -> Result<RoundResult, String> {
    let _guard = rt.enter();
    let (publishers, video, subs) = opts.scenario.plan(opts.clients);
    let room = format!("load{}", rand::random::<u32>());
    target.create_room(&room, publishers)?;
    let ip = target.client_ip();
    let shared = Arc::new(Shared::default());
    let mut running: Vec<RunningClient> = Vec::new();
    let mut pub_ids = Vec::new();
    let total = publishers + subs.len();
    let name = target.name();
    for p in 0..publishers {
        let cname = format!("pub{p}");
        let mut c = RtcClient::new(
            cname.clone(),
            ip,
            identity.clone(),
            Role::publisher(video, opts.video_kbps)
                .with_simulcast(opts.simulcast)
                .with_tcp(opts.tcp),
        )
        .map_err(|e| format!("{cname}: {e}"))?;
        target.place(p);
        let id = target
            .publish(&room, &cname, &mut c)
            .map_err(|e| format!("{name}: publishing {cname}: {e}"))?;
        pub_ids.push(id);
        running.push(
            c.start(shared.clone())
                .map_err(|e| format!("{cname}: {e}"))?,
        );
        progress(
            opts.progress,
            &format!("{name}: signalling {}/{total}", running.len()),
        );
    }
    for (i, &(s, p)) in subs.iter().enumerate() {
        let cname = format!("sub{s}-of-pub{p}");
        let capped = (opts.simulcast && s % 2 == 1).then_some(u64::from(opts.video_kbps) * 500);
        let role = Role::subscriber(video).with_remb(capped).with_tcp(opts.tcp);
        let mut c = RtcClient::new(cname.clone(), ip, identity.clone(), role)
            .map_err(|e| format!("{cname}: {e}"))?;
        target.place(s);
        target
            .subscribe(&room, &pub_ids[p], &mut c)
            .map_err(|e| format!("{name}: subscribing {cname}: {e}"))?;
        running.push(
            c.start(shared.clone())
                .map_err(|e| format!("{cname}: {e}"))?,
        );
        if i % 10 == 0 {
            progress(
                opts.progress,
                &format!("{name}: signalling {}/{total}", running.len()),
            );
        }
    }
    // Publishers come first in `running`; keep their counters for the expected totals.
    let sent: Vec<Arc<std::sync::atomic::AtomicU64>> = running[..publishers]
        .iter()
        .map(|c| c.sent_in_window.clone())
        .collect();
    let result = measure(
        target,
        rt,
        &shared,
        &mut running,
        opts,
        round,
        video,
        subs.len(),
    );
    shared.stop();
    rt.block_on(async {
        for c in running.drain(..) {
            let _ = c.handle.await;
        }
    });
    if opts.progress {
        eprintln!();
    }
    let loss = shared
        .inner
        .lock()
        .map(|i| i.loss)
        .map_err(|_| "recorder poisoned".to_string())?;
    let mut r = result?;
    r.loss_pct = if loss.expected == 0 {
        f64::NAN
    } else {
        100.0 * (loss.expected.saturating_sub(loss.received)) as f64 / loss.expected as f64
    };
    // Every subscription should receive all its publisher sent in the window.
    let expected: u64 = subs
        .iter()
        .map(|&(_, p)| sent[p].load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    // A simulcast publisher's expected packets are its full layer's, which the subscribers on
    // short links do not get: nothing to compare.
    r.undelivered_pct = if expected == 0 || opts.simulcast {
        f64::NAN
    } else {
        100.0 * expected.saturating_sub(r.delivered) as f64 / expected as f64
    };
    r.streams_received = loss.streams;
    r.duplicates = loss.duplicates;
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    target: &mut dyn Target,
    rt: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    running: &mut Vec<RunningClient>,
    opts: &RoundOptions,
    round: usize,
    video: bool,
    subscriptions: usize,
) -> Result<RoundResult, String> {
    let name = target.name();
    let pids = target.pids();
    let cpu = || -> Option<f64> { pids.iter().map(|&p| process_cpu_seconds(p)).sum() };
    let limit = Duration::from_secs(10) + Duration::from_millis(20) * running.len() as u32;
    let deadline = Instant::now() + limit;
    loop {
        let connected = running
            .iter()
            .filter(|c| c.state() == STATE_CONNECTED)
            .count();
        let failed: Vec<&RunningClient> = running
            .iter()
            .filter(|c| c.state() == STATE_FAILED)
            .collect();
        if !failed.is_empty() {
            let why: Vec<String> = failed.iter().take(5).map(|c| c.error()).collect();
            return Err(format!(
                "{name}: {} of {} clients failed: {}",
                failed.len(),
                running.len(),
                why.join("; ")
            ));
        }
        if connected == running.len() {
            break;
        }
        if Instant::now() > deadline {
            let stuck: Vec<&str> = running
                .iter()
                .filter(|c| c.state() != STATE_CONNECTED)
                .take(10)
                .map(|c| c.name.as_str())
                .collect();
            return Err(format!(
                "{name}: {} of {} clients not connected after {limit:?} (ICE or DTLS): {}",
                running.len() - connected,
                running.len(),
                stuck.join(", ")
            ));
        }
        progress(
            opts.progress,
            &format!("{name}: connected {connected}/{}", running.len()),
        );
        rt.block_on(tokio::time::sleep(Duration::from_millis(50)));
    }
    let warm_end = Instant::now() + Duration::from_secs_f64(opts.warmup);
    while Instant::now() < warm_end {
        progress(
            opts.progress,
            &format!(
                "{name}: round {round} warming up {:.0} s",
                warm_end
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            ),
        );
        rt.block_on(tokio::time::sleep(Duration::from_millis(250)));
    }
    let window = Duration::from_secs_f64(opts.seconds);
    let start_ns = rtc::now_ns();
    shared.set_window(start_ns, start_ns + window.as_nanos() as u64);
    let link0 = target.link_bytes();
    let cpu0 = cpu();
    let t0 = Instant::now();
    let end = t0 + window;
    while Instant::now() < end {
        let el = t0.elapsed().as_secs_f64();
        let done = (el / opts.seconds * 30.0) as usize;
        let last = shared
            .inner
            .lock()
            .ok()
            .and_then(|i| {
                let n = el as usize;
                (n >= 1).then(|| i.seconds.get(n - 1).map_or(0, |s| s.packets))
            })
            .unwrap_or(0);
        progress(
            opts.progress,
            &format!(
                "{name} round {round} [{:<30}] {el:.0}/{:.0} s {last} pkt/s",
                "#".repeat(done.min(30)),
                opts.seconds
            ),
        );
        rt.block_on(tokio::time::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250)),
        ));
    }
    let cpu1 = cpu();
    let link1 = target.link_bytes();
    let elapsed = t0.elapsed().as_secs_f64();
    // Packets sent at the end of the window are still on their way.
    rt.block_on(tokio::time::sleep(Duration::from_millis(500)));
    let rss: f64 = pids
        .iter()
        .map(|&p| peak_rss_mb(p).unwrap_or(f64::NAN))
        .sum();
    let relay_cpu_s = match (cpu0, cpu1) {
        (Some(a), Some(b)) => b - a,
        _ => return Err(format!("{name}: cannot read /proc/{pids:?}/stat")),
    };
    // Stop the clients and wait for them, so that their last samples are flushed.
    let clients = running.len();
    shared.stop();
    rt.block_on(async {
        for c in running.drain(..) {
            let _ = c.handle.await;
        }
    });
    let inner = shared
        .inner
        .lock()
        .map_err(|_| "recorder poisoned".to_string())?;
    let ms = |ns: f64| ns / 1e6;
    let secs = opts.seconds.ceil() as usize;
    let per_second = (0..secs)
        .map(|i| {
            inner.seconds.get(i).map_or(
                Sample {
                    packets: 0,
                    p50_ms: f64::NAN,
                    p99_ms: f64::NAN,
                },
                |s| Sample {
                    packets: s.packets,
                    p50_ms: ms(s.latency.quantile(0.5)),
                    p99_ms: ms(s.latency.quantile(0.99)),
                },
            )
        })
        .collect();
    Ok(RoundResult {
        target: name.to_owned(),
        round,
        clients,
        seconds: elapsed,
        delivered: inner.total.count(),
        loss_pct: f64::NAN,
        streams_received: 0,
        duplicates: 0,
        undelivered_pct: f64::NAN,
        streams_expected: (subscriptions * if video { 2 } else { 1 }) as u64,
        p50_ms: ms(inner.total.quantile(0.5)),
        p99_ms: ms(inner.total.quantile(0.99)),
        p999_ms: ms(inner.total.quantile(0.999)),
        relay_cpu_s,
        peak_rss_mb: rss,
        per_second,
        link: link0.zip(link1).map(|(a, b)| LinkBytes {
            sent: b.sent.saturating_sub(a.sent),
            held: b.held.saturating_sub(a.held),
        }),
    })
}

/// The direct loopback latency of the client's own SRTP path, for subtraction.
pub fn measure_baseline(
    rt: &tokio::runtime::Runtime,
    identity: &Identity,
    ip: std::net::IpAddr,
    video_kbps: u32,
) -> Result<Baseline, String> {
    let h = rt
        .block_on(rtc::baseline(
            ip,
            identity,
            video_kbps,
            Duration::from_secs(1),
        ))
        .map_err(|e| format!("baseline: {e}"))?;
    Ok(Baseline {
        p50_ms: h.quantile(0.5) / 1e6,
        p99_ms: h.quantile(0.99) / 1e6,
        p999_ms: h.quantile(0.999) / 1e6,
    })
}
