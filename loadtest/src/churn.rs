//! The soak: for `seconds`, clients come and go against a real volna process the way people do.
//! WHIP publishers (who republish half the time after leaving), WHEP viewers of whoever publishes,
//! and room-protocol participants who join and publish over the WebSocket; each stays 3 to 25 s and
//! then leaves properly (`DELETE`, `leave`) or vanishes: its media stops without a DTLS close, its
//! socket drops, nothing is deleted, and the relay must notice by itself (consent, reconnect
//! grace).
//!
//! Read from the relay each second: resident memory and open descriptors (/proc), sessions,
//! participants and tasks alive (`/stats`). It passes when, once everyone has gone, `/stats` is
//! back to 0 sessions and participants, descriptors and tasks are back to their count before the
//! first client, and resident memory is within 10 % of what it was after the first minute.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use crate::rtc::{Identity, Role, RtcClient, RunningClient, Shared};
use crate::target::SdpEndpoint;

/// How a soak runs.
#[derive(Debug, Clone)]
pub struct ChurnOptions {
    pub seconds: f64,
    /// Clients present at once (each comes and goes).
    pub clients: usize,
    pub rooms: usize,
    pub seed: u64,
    pub progress: bool,
}

/// What the relay looked like at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    pub at_s: f64,
    pub rss_kb: u64,
    pub fds: usize,
    pub sessions: u64,
    pub participants: u64,
    pub tasks: u64,
}

/// What the clients did.
#[derive(Debug, Default, Serialize)]
pub struct Actions {
    pub whip: u64,
    pub whep: u64,
    pub joins: u64,
    pub republished: u64,
    pub left: u64,
    pub vanished: u64,
    /// Refused by the relay (a WHEP for a publisher that had just gone, and the like).
    pub refused: u64,
}

#[derive(Debug, Serialize)]
pub struct ChurnReport {
    pub seconds: f64,
    pub clients: usize,
    pub before: Sample,
    pub after_first_minute: Sample,
    pub peak: Sample,
    pub end: Sample,
    /// Seconds from the last client's going until `/stats` showed no session or participant.
    pub settle_s: f64,
    pub actions: Actions,
    pub samples: Vec<Sample>,
    /// Each criterion and whether it held.
    pub checks: Vec<(String, bool)>,
}

impl ChurnReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.1)
    }

    pub fn markdown(&self) -> String {
        let row = |name: &str, s: &Sample| {
            format!(
                "| {name} | {:.0} | {:.1} | {} | {} | {} | {} |\n",
                s.at_s,
                s.rss_kb as f64 / 1024.0,
                s.fds,
                s.sessions,
                s.participants,
                s.tasks
            )
        };
        let a = &self.actions;
        let mut md = format!(
            "# volna soak: {} s of churn, {} clients at a time\n\n\
             Actions: {} WHIP publishes ({} republished), {} WHEP views, {} room joins; \
             {} left properly, {} vanished (no DELETE, no leave, no DTLS close); {} refused.\n\n\
             | moment | s | RSS MiB | fds | sessions | participants | tasks |\n|---|---|---|---|---|---|---|\n",
            self.seconds,
            self.clients,
            a.whip,
            a.republished,
            a.whep,
            a.joins,
            a.left,
            a.vanished,
            a.refused
        );
        md.push_str(&row("before the first client", &self.before));
        md.push_str(&row("after the first minute", &self.after_first_minute));
        md.push_str(&row("most sessions", &self.peak));
        md.push_str(&row("everyone gone", &self.end));
        md.push_str(&format!(
            "\nEveryone gone to 0 sessions and participants: {:.0} s.\n\n",
            self.settle_s
        ));
        for (what, ok) in &self.checks {
            md.push_str(&format!("- {} {what}\n", if *ok { "PASS" } else { "FAIL" }));
        }
        md
    }
}

/// What every client thread shares.
struct World {
    base: String,
    port: u16,
    identity: Identity,
    rt: tokio::runtime::Handle,
    stop: AtomicBool,
    live: AtomicUsize,
    /// Publishers now: (room, publisher id).
    publishers: Mutex<Vec<(String, String)>>,
    counts: [AtomicU64; 7],
}

const WHIP: usize = 0;
const WHEP: usize = 1;
const JOINS: usize = 2;
const REPUBLISHED: usize = 3;
const LEFT: usize = 4;
const VANISHED: usize = 5;
const REFUSED: usize = 6;

impl World {
    fn count(&self, what: usize) {
        self.counts[what].fetch_add(1, Ordering::Relaxed);
    }

    /// One HTTP request on a connection of its own (no idle connection left open on the relay).
    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .max_idle_connections(0)
            .build()
    }

    /// Sleeps up to `d`, less when the soak ends.
    fn stay(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn client(&self, name: &str, role: Role) -> Result<RtcClient, String> {
        RtcClient::new(
            name.into(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            self.identity.clone(),
            role,
        )
        .map_err(|e| e.to_string())
    }

    /// Starts a client's media on the runtime, with a stop of its own.
    fn start(&self, c: RtcClient) -> Result<(RunningClient, Arc<Shared>), String> {
        let _guard = self.rt.enter();
        let shared = Arc::new(Shared::default());
        let running = c.start(shared.clone()).map_err(|e| e.to_string())?;
        Ok((running, shared))
    }

    /// POSTs an offer to WHIP or WHEP; (answer, resource URL, publisher id).
    fn post(&self, path: &str, offer: &str) -> Result<(String, String, String), String> {
        let res = Self::agent()
            .post(&format!("{}{path}", self.base))
            .set("Content-Type", "application/sdp")
            .send_string(offer)
            .map_err(|e| e.to_string())?;
        let location = res.header("Location").unwrap_or("").to_owned();
        let publisher = res.header("x-volna-publisher").unwrap_or("").to_owned();
        let answer = res.into_string().map_err(|e| e.to_string())?;
        Ok((answer, format!("{}{location}", self.base), publisher))
    }

    /// Ends a client: properly (`end` runs: DELETE or leave) or by vanishing (its media task
    /// aborted, no DTLS close).
    fn go(&self, rng: &mut StdRng, media: (RunningClient, Arc<Shared>), end: impl FnOnce()) {
        if rng.gen_bool(0.6) {
            media.1.stop();
            end();
            self.count(LEFT);
        } else {
            media.0.handle.abort();
            self.count(VANISHED);
        }
    }
}

/// A WHIP publisher: publishes, stays, goes, and half the time publishes again.
fn whip(w: &World, rng: &mut StdRng, room: &str) -> Result<(), String> {
    loop {
        let mut c = w.client("whip", Role::publisher(true, 300))?;
        let offer = c.offer();
        let (answer, resource, id) = match w.post(&format!("/whip/{room}"), &offer) {
            Ok(r) => r,
            Err(_) => {
                w.count(REFUSED);
                return Ok(());
            }
        };
        c.accept_answer(&answer)?;
        let media = w.start(c)?;
        w.count(WHIP);
        let entry = (room.to_owned(), id);
        if let Ok(mut p) = w.publishers.lock() {
            p.push(entry.clone());
        }
        w.stay(Duration::from_millis(rng.gen_range(3_000..25_000)));
        if let Ok(mut p) = w.publishers.lock() {
            p.retain(|e| *e != entry);
        }
        w.go(rng, media, || {
            let _ = World::agent().delete(&resource).call();
        });
        if w.stop.load(Ordering::Relaxed) || rng.gen_bool(0.5) {
            return Ok(());
        }
        w.count(REPUBLISHED);
    }
}

/// A WHEP viewer of one of the room's publishers (any room's, if it has none).
fn whep(w: &World, rng: &mut StdRng, room: &str) -> Result<(), String> {
    let target = w.publishers.lock().ok().and_then(|p| {
        let here: Vec<&(String, String)> = p.iter().filter(|e| e.0 == room).collect();
        let pick = if here.is_empty() {
            p.iter().collect()
        } else {
            here
        };
        (!pick.is_empty()).then(|| pick[rng.gen_range(0..pick.len())].clone())
    });
    let Some((room, publisher)) = target else {
        return Ok(());
    };
    let mut c = w.client("whep", Role::subscriber(true))?;
    let offer = c.offer();
    let Ok((answer, resource, _)) = w.post(&format!("/whep/{room}/{publisher}"), &offer) else {
        w.count(REFUSED);
        return Ok(());
    };
    c.accept_answer(&answer)?;
    let media = w.start(c)?;
    w.count(WHEP);
    w.stay(Duration::from_millis(rng.gen_range(3_000..20_000)));
    w.go(rng, media, || {
        let _ = World::agent().delete(&resource).call();
    });
    Ok(())
}

type Socket = tungstenite::WebSocket<std::net::TcpStream>;

/// The next message of `kind` on the socket (others skipped), within 10 s.
fn expect(ws: &mut Socket, kind: &str) -> Result<Value, String> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                if v["type"] == kind {
                    return Ok(v);
                }
                if v["type"] == "error" {
                    return Err(v.to_string());
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("no {kind} within 10 s"))
}

/// A room-protocol participant: joins, publishes over the socket, reads its events while it stays,
/// then sends `leave` or drops the socket.
fn participant(w: &World, rng: &mut StdRng, room: &str) -> Result<(), String> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", w.port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let url = format!("ws://127.0.0.1:{}/rtc", w.port);
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).map_err(|e| e.to_string())?;
    let send = |ws: &mut Socket, v: Value| {
        ws.send(tungstenite::Message::Text(v.to_string().into()))
            .map_err(|e| e.to_string())
    };
    send(
        &mut ws,
        json!({"type": "join", "v": 1, "room": room, "name": "soak", "auto_subscribe": false, "id": 1}),
    )?;
    if expect(&mut ws, "joined").is_err() {
        w.count(REFUSED);
        return Ok(());
    }
    w.count(JOINS);
    let mut c = w.client("room", Role::publisher(true, 300))?;
    send(
        &mut ws,
        json!({"type": "publish", "sdp": c.offer(), "id": 2}),
    )?;
    let answer = expect(&mut ws, "publish_answer")?;
    c.accept_answer(answer["sdp"].as_str().unwrap_or(""))?;
    let media = w.start(c)?;
    // Events are read while it stays (a client that stops reading is cut off).
    let end = Instant::now() + Duration::from_millis(rng.gen_range(3_000..25_000));
    while Instant::now() < end && !w.stop.load(Ordering::Relaxed) {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    w.go(rng, media, || {
        let _ = send(&mut ws, json!({"type": "leave"}));
        let _ = ws.close(None);
        let _ = ws.flush();
    });
    Ok(())
}

fn stats(base: &str) -> Option<Value> {
    World::agent()
        .get(&format!("{base}/stats"))
        .call()
        .ok()?
        .into_string()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

fn sample(pid: u32, base: &str, at_s: f64) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let s = stats(base).unwrap_or_default();
    let n = |k: &str| s[k].as_u64().unwrap_or(u64::MAX);
    Sample {
        at_s,
        rss_kb,
        fds,
        sessions: n("sessions"),
        participants: n("participants"),
        tasks: n("tasks"),
    }
}

/// Runs the soak against the relay process `pid` serving HTTP on `port`.
pub fn run(pid: u32, port: u16, opts: &ChurnOptions) -> Result<ChurnReport, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let base = format!("http://127.0.0.1:{port}");
    let world = Arc::new(World {
        base: base.clone(),
        port,
        identity: Identity::generate().map_err(|e| e.to_string())?,
        rt: rt.handle().clone(),
        stop: AtomicBool::new(false),
        live: AtomicUsize::new(0),
        publishers: Mutex::new(Vec::new()),
        counts: Default::default(),
    });
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let start = Instant::now();
    let before = sample(pid, &base, 0.0);
    let first_minute = opts.seconds.min(60.0);
    let mut after_first_minute: Option<Sample> = None;
    let mut samples = vec![before];
    let mut threads = Vec::new();
    let mut next_sample = 1.0;
    while start.elapsed().as_secs_f64() < opts.seconds {
        if world.live.load(Ordering::Relaxed) < opts.clients {
            let room = format!("soak{}", rng.gen_range(0..opts.rooms.max(1)));
            let kind = rng.gen_range(0..3);
            let mut crng = StdRng::seed_from_u64(rng.gen());
            let (w, errors) = (world.clone(), errors.clone());
            w.live.fetch_add(1, Ordering::Relaxed);
            threads.push(std::thread::spawn(move || {
                let r = match kind {
                    0 => whip(&w, &mut crng, &room),
                    1 => whep(&w, &mut crng, &room),
                    _ => participant(&w, &mut crng, &room),
                };
                if let Err(e) = r {
                    if let Ok(mut v) = errors.lock() {
                        v.push(e);
                    }
                }
                w.live.fetch_sub(1, Ordering::Relaxed);
            }));
            threads.retain(|t| !t.is_finished());
        }
        std::thread::sleep(Duration::from_millis(50));
        let t = start.elapsed().as_secs_f64();
        if t >= next_sample {
            next_sample += 1.0;
            let s = sample(pid, &base, t);
            if after_first_minute.is_none() && t >= first_minute {
                after_first_minute = Some(s);
            }
            samples.push(s);
            if opts.progress {
                eprint!(
                    "\rsoak {t:>4.0}/{:.0} s: {} sessions, {} participants, RSS {:.1} MiB   ",
                    opts.seconds,
                    s.sessions,
                    s.participants,
                    s.rss_kb as f64 / 1024.0
                );
            }
        }
    }
    // Everyone goes (leaving or vanishing as each would), then the relay settles.
    world.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let gone = Instant::now();
    let mut end = sample(pid, &base, start.elapsed().as_secs_f64());
    while (end.sessions != 0 || end.participants != 0) && gone.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_secs(1));
        end = sample(pid, &base, start.elapsed().as_secs_f64());
    }
    let settle_s = gone.elapsed().as_secs_f64();
    // A moment for closed sockets and ended tasks to be reaped.
    std::thread::sleep(Duration::from_secs(2));
    end = sample(pid, &base, start.elapsed().as_secs_f64());
    samples.push(end);
    if opts.progress {
        eprintln!();
    }
    drop(rt);
    let after_first_minute = after_first_minute.unwrap_or(end);
    let peak = samples
        .iter()
        .copied()
        .max_by_key(|s| {
            if s.sessions == u64::MAX {
                0
            } else {
                s.sessions
            }
        })
        .unwrap_or(end);
    let c = |i: usize| world.counts[i].load(Ordering::Relaxed);
    let actions = Actions {
        whip: c(WHIP),
        whep: c(WHEP),
        joins: c(JOINS),
        republished: c(REPUBLISHED),
        left: c(LEFT),
        vanished: c(VANISHED),
        refused: c(REFUSED),
    };
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    let rss_bound = after_first_minute.rss_kb + after_first_minute.rss_kb / 10;
    let checks = vec![
        (
            format!(
                "no client failed ({} errors{})",
                errors.len(),
                errors
                    .first()
                    .map(|e| format!(", first: {e}"))
                    .unwrap_or_default()
            ),
            errors.is_empty(),
        ),
        (
            format!(
                "clients came and went: {} publishes, {} views, {} joins, {} vanished",
                actions.whip, actions.whep, actions.joins, actions.vanished
            ),
            actions.whip > 0 && actions.whep > 0 && actions.joins > 0 && actions.vanished > 0,
        ),
        (
            format!(
                "/stats back to 0 sessions and participants ({}, {})",
                end.sessions, end.participants
            ),
            end.sessions == 0 && end.participants == 0,
        ),
        (
            format!(
                "RSS {} KiB within 10 % of {} KiB after the first minute",
                end.rss_kb, after_first_minute.rss_kb
            ),
            end.rss_kb > 0 && end.rss_kb <= rss_bound,
        ),
        (
            format!(
                "open descriptors back to their start ({} -> {})",
                before.fds, end.fds
            ),
            end.fds > 0 && end.fds <= before.fds,
        ),
        (
            format!(
                "tasks back to their start ({} -> {})",
                before.tasks, end.tasks
            ),
            end.tasks <= before.tasks,
        ),
    ];
    Ok(ChurnReport {
        seconds: opts.seconds,
        clients: opts.clients,
        before,
        after_first_minute,
        peak,
        end,
        settle_s,
        actions,
        samples,
        checks,
    })
}
