//! What a load test produced and how it is written: per-round figures, medians per target, a
//! Markdown table, a JSON file and two hand-drawn SVG plots (throughput and latency over time).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Map, Value};

/// One second of a round.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub packets: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One round against one fresh relay process.
#[derive(Debug, Clone)]
pub struct RoundResult {
    pub target: String,
    pub round: usize,
    pub clients: usize,
    pub seconds: f64,
    pub delivered: u64,
    /// Loss from the counters of each received stream (gaps between first and last received).
    pub loss_pct: f64,
    /// Packets the publishers sent in the window that no subscriber got (gaps, late or never).
    pub undelivered_pct: f64,
    pub streams_received: u64,
    pub streams_expected: u64,
    /// Packets received more than once (not counted as delivered).
    pub duplicates: u64,
    /// Receive − send, relay included (not yet minus the baseline).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub relay_cpu_s: f64,
    pub peak_rss_mb: f64,
    pub per_second: Vec<Sample>,
    /// A cluster's relay links over the window: bytes sent, and bytes of simulcast layers held
    /// back because no subscriber behind a link wanted them.
    pub link: Option<LinkBytes>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkBytes {
    pub sent: u64,
    pub held: u64,
}

impl RoundResult {
    pub fn pkts_per_cpu_s(&self) -> f64 {
        self.delivered as f64 / self.relay_cpu_s.max(1e-9)
    }
}

/// Direct loopback latency, same SRTP path, no relay.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// Medians over the kept rounds of one target.
#[derive(Debug, Clone)]
pub struct TargetSummary {
    pub name: String,
    pub rounds: Vec<RoundResult>,
    pub kept: Vec<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl TargetSummary {
    /// Keeps every round but the first when there are several (the first warms caches).
    pub fn new(name: &str, rounds: Vec<RoundResult>) -> Self {
        let kept = if rounds.len() > 1 {
            (1..rounds.len()).collect()
        } else {
            (0..rounds.len()).collect()
        };
        Self {
            name: name.to_owned(),
            rounds,
            kept,
        }
    }

    fn med(&self, f: impl Fn(&RoundResult) -> f64) -> f64 {
        median(self.kept.iter().map(|&i| f(&self.rounds[i])).collect())
    }

    pub fn to_json(&self, b: &Baseline) -> Value {
        let added = |m: f64, base: f64| (m - base).max(0.0);
        json!({
            "pkts_per_cpu_s": self.med(RoundResult::pkts_per_cpu_s),
            "latency_p50_ms": added(self.med(|r| r.p50_ms), b.p50_ms),
            "latency_p99_ms": added(self.med(|r| r.p99_ms), b.p99_ms),
            "latency_p999_ms": added(self.med(|r| r.p999_ms), b.p999_ms),
            "loss_pct": self.med(|r| r.loss_pct),
            "undelivered_pct": self.med(|r| r.undelivered_pct),
            "peak_rss_mb": self.med(|r| r.peak_rss_mb),
            "delivered_packets": self.med(|r| r.delivered as f64),
            "delivered_pkts_per_s": self.med(|r| r.delivered as f64 / r.seconds),
            "relay_cpu_s": self.med(|r| r.relay_cpu_s),
            "seconds": self.med(|r| r.seconds),
            "clients": self.med(|r| r.clients as f64),
            "streams_received": self.med(|r| r.streams_received as f64),
            "streams_expected": self.med(|r| r.streams_expected as f64),
            "duplicate_packets": self.med(|r| r.duplicates as f64),
            "measured_p50_ms": self.med(|r| r.p50_ms),
            "measured_p99_ms": self.med(|r| r.p99_ms),
            "measured_p999_ms": self.med(|r| r.p999_ms),
            "baseline_p50_ms": b.p50_ms,
            "baseline_p99_ms": b.p99_ms,
            "baseline_p999_ms": b.p999_ms,
            "link_sent_bytes": self.med(|r| r.link.map_or(f64::NAN, |l| l.sent as f64)),
            "link_held_bytes": self.med(|r| r.link.map_or(f64::NAN, |l| l.held as f64)),
            "rounds": self.rounds.len(),
            "rounds_kept": self.kept.len(),
            "per_round": self.rounds.iter().map(|r| json!({
                "round": r.round,
                "delivered_packets": r.delivered,
                "duplicate_packets": r.duplicates,
                "relay_cpu_s": r.relay_cpu_s,
                "pkts_per_cpu_s": r.pkts_per_cpu_s(),
                "loss_pct": r.loss_pct,
                "undelivered_pct": r.undelivered_pct,
                "measured_p50_ms": r.p50_ms,
                "measured_p99_ms": r.p99_ms,
                "measured_p999_ms": r.p999_ms,
                "peak_rss_mb": r.peak_rss_mb,
                "per_second": r.per_second.iter().map(|s| json!([s.packets, s.p50_ms, s.p99_ms])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The whole report.
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub baseline: Baseline,
    pub targets: Vec<TargetSummary>,
}

impl Report {
    pub fn to_json(&self) -> Value {
        let mut targets = Map::new();
        for t in &self.targets {
            targets.insert(t.name.clone(), t.to_json(&self.baseline));
        }
        let mut top = json!({
            "scenario": self.scenario,
            "description": self.description,
            "baseline": {
                "p50_ms": self.baseline.p50_ms,
                "p99_ms": self.baseline.p99_ms,
                "p999_ms": self.baseline.p999_ms,
            },
            "targets": targets,
        });
        let ppc = |name: &str| {
            self.targets
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.med(RoundResult::pkts_per_cpu_s))
        };
        if let (Some(v), Some(j)) = (ppc("volna"), ppc("janus")) {
            top["ratio_pkts_per_cpu_s"] = json!(v / j);
        }
        top
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let b = &self.baseline;
        let _ = writeln!(s, "## volna-load {}: {}\n", self.scenario, self.description);
        let _ = writeln!(
            s,
            "| target | rounds kept | delivered pkt/s | relay CPU s | pkt per CPU-s | µs CPU per pkt | loss % | undelivered % | added p50 ms | added p99 ms | added p99.9 ms | peak RSS MB |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for t in &self.targets {
            let j = t.to_json(b);
            let f = |k: &str| j[k].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "| {} | {}/{} | {:.0} | {:.2} | {:.0} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} |",
                t.name,
                t.kept.len(),
                t.rounds.len(),
                f("delivered_pkts_per_s"),
                f("relay_cpu_s"),
                f("pkts_per_cpu_s"),
                1e6 / f("pkts_per_cpu_s"),
                f("loss_pct"),
                f("undelivered_pct"),
                f("latency_p50_ms"),
                f("latency_p99_ms"),
                f("latency_p999_ms"),
                f("peak_rss_mb"),
            );
        }
        let _ = writeln!(
            s,
            "\nDirect loopback baseline (subtracted above): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms.",
            b.p50_ms, b.p99_ms, b.p999_ms
        );
        if let Some(r) = self.to_json()["ratio_pkts_per_cpu_s"].as_f64() {
            let _ = writeln!(s, "\nvolna / janus packets per CPU-second: {r:.2}");
        }
        for t in &self.targets {
            let j = t.to_json(b);
            let (sent, held) = (j["link_sent_bytes"].as_f64(), j["link_held_bytes"].as_f64());
            if let (Some(sent), Some(held)) = (sent, held) {
                let every = sent + held;
                let _ = writeln!(
                    s,
                    "\n{}: the relay links sent {:.2} MB in the window; simulcast layers no subscriber behind a link wanted, held back: {:.2} MB. Sending every layer would have taken {:.2} MB: {:.0}% saved.",
                    t.name,
                    sent / 1e6,
                    held / 1e6,
                    every / 1e6,
                    100.0 * held / every.max(1.0)
                );
            }
        }
        for t in &self.targets {
            let dups: u64 = t.rounds.iter().map(|r| r.duplicates).sum();
            if dups > 0 {
                let _ = writeln!(
                    s,
                    "\n{}: {dups} duplicate packets received over all rounds (not counted as delivered).",
                    t.name
                );
            }
            let missing: Vec<String> = t
                .rounds
                .iter()
                .filter(|r| r.streams_received < r.streams_expected)
                .map(|r| {
                    format!(
                        "round {}: {}/{} streams",
                        r.round, r.streams_received, r.streams_expected
                    )
                })
                .collect();
            if !missing.is_empty() {
                let _ = writeln!(
                    s,
                    "\n{}: streams that delivered nothing: {}",
                    t.name,
                    missing.join(", ")
                );
            }
        }
        s
    }

    /// report.md, report.json, throughput.svg and latency.svg in `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let w = |name: &str, text: String| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
        };
        w("report.md", self.markdown())?;
        w(
            "report.json",
            serde_json::to_string_pretty(&self.to_json()).map_err(|e| e.to_string())?,
        )?;
        let series = |f: &dyn Fn(&Sample) -> f64| -> Vec<(String, Vec<f64>)> {
            self.targets
                .iter()
                .flat_map(|t| {
                    t.rounds.iter().map(|r| {
                        (
                            format!("{} round {}", t.name, r.round),
                            r.per_second.iter().map(f).collect(),
                        )
                    })
                })
                .collect()
        };
        w(
            "throughput.svg",
            svg_plot(
                "Delivered packets per second",
                "pkt/s",
                &series(&|s| s.packets as f64)
                    .into_iter()
                    .map(|(n, v)| (n, v, false))
                    .collect::<Vec<_>>(),
            ),
        )?;
        let mut lat: Vec<(String, Vec<f64>, bool)> = Vec::new();
        for (n, v) in series(&|s| s.p50_ms) {
            lat.push((format!("{n} p50"), v, false));
        }
        for (n, v) in series(&|s| s.p99_ms) {
            lat.push((format!("{n} p99"), v, true));
        }
        w(
            "latency.svg",
            svg_plot("Latency per second (receive − send)", "ms", &lat),
        )?;
        Ok(())
    }
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A line plot over seconds: one polyline per (name, values, dashed).
pub fn svg_plot(title: &str, unit: &str, lines: &[(String, Vec<f64>, bool)]) -> String {
    let (w, h) = (800.0, 420.0);
    let (left, right, top, bottom) = (70.0, 220.0, 40.0, 40.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xmax = lines.iter().map(|l| l.1.len()).max().unwrap_or(1).max(2) as f64 - 1.0;
    let ymax = lines
        .iter()
        .flat_map(|l| l.1.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let ymax = nice_ceiling(ymax);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        escape(title)
    );
    for i in 0..=4 {
        let y = top + ph - ph * i as f64 / 4.0;
        let v = ymax * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            short(v)
        );
    }
    let ticks = (xmax as usize).clamp(1, 10);
    for i in 0..=ticks {
        let sec = xmax * i as f64 / ticks as f64;
        let x = left + pw * sec / xmax;
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{sec:.0}</text>"#,
            top + ph + 16.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds into the measured window</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"##,
        left + pw / 2.0,
        h - 6.0,
        top + ph / 2.0,
        top + ph / 2.0,
        escape(unit)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    for (k, (name, values, dashed)) in lines.iter().enumerate() {
        let color = COLORS[(k % (lines.len().div_ceil(2).max(1))) % COLORS.len()];
        // Dashed lines pair with solid ones (one relay against another) only when half are.
        let paired = lines.iter().filter(|l| l.2).count() * 2 == lines.len();
        let color = if paired {
            color
        } else {
            COLORS[k % COLORS.len()]
        };
        let pts: Vec<String> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    left + pw * i as f64 / xmax,
                    top + ph - ph * (v / ymax).min(1.0)
                )
            })
            .collect();
        let dash = if *dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            pts.join(" ")
        );
        let ly = top + 14.0 + 18.0 * k as f64;
        let lx = left + pw + 12.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        // 1.25k stays 1.25k: tick labels must not round to the wrong value.
        let k = format!("{:.2}", v / 1e3);
        format!("{}k", k.trim_end_matches('0').trim_end_matches('.'))
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ceilings() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
        assert_eq!(nice_ceiling(730.0), 1000.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
    }
}
