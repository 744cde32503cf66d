//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01
//! §3.1): RTCP RTPFB, FMT 15. A receiver reports, for a range of transport-wide sequence numbers,
//! which packets arrived and when, relative to a reference time.

use super::RtcpError;

pub const FMT: u8 = 15;
pub const PT: u8 = 205;
/// Receive deltas are in units of 250 µs; the reference time in units of 64 ms.
const DELTA_US: i64 = 250;
const REFERENCE_US: i64 = 64_000;

/// One packet's fate in a feedback message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketResult {
    pub seq: u16,
    /// Arrival time in µs on the receiver's clock (reference time plus deltas); `None` if lost.
    pub arrival_us: Option<i64>,
}

/// A parsed feedback message: results are written into a caller-owned vector, reused across
/// messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwccHeader {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    pub base_seq: u16,
    pub status_count: u16,
    pub feedback_count: u8,
}

/// The most results one message yields: a sender remembers no more packets than this (the
/// estimator's history), so a message that claims more (40 bytes can claim 65,535 lost packets)
/// is read no further.
pub const MAX_RESULTS: usize = 4096;

/// Parses one TWCC feedback packet (`buf` is the whole RTCP packet, header included). Yields at
/// most [`MAX_RESULTS`] results, the first ones.
pub fn parse(buf: &[u8], out: &mut Vec<PacketResult>) -> Result<TwccHeader, RtcpError> {
    out.clear();
    if buf.len() < 4 {
        return Err(RtcpError::TooShort);
    }
    if buf[0] & 0x1f != FMT || buf[1] != PT {
        return Err(RtcpError::Malformed("not transport-cc feedback"));
    }
    let len = 4 * (u16::from_be_bytes([buf[2], buf[3]]) as usize + 1);
    let buf = buf.get(..len).ok_or(RtcpError::Length)?;
    if buf.len() < 20 {
        return Err(RtcpError::TooShort);
    }
    let u32_at = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let header = TwccHeader {
        sender_ssrc: u32_at(4),
        media_ssrc: u32_at(8),
        base_seq: u16::from_be_bytes([buf[12], buf[13]]),
        status_count: u16::from_be_bytes([buf[14], buf[15]]),
        feedback_count: buf[19],
    };
    // 24-bit signed reference time.
    let raw = (u32::from(buf[16]) << 16) | (u32::from(buf[17]) << 8) | u32::from(buf[18]);
    let reference = ((raw << 8) as i32 >> 8) as i64 * REFERENCE_US;
    // First pass: the status symbols, from run-length and status-vector chunks. All chunks are
    // walked (the deltas follow them), but only the first `kept` symbols are stored.
    let count = header.status_count as usize;
    let kept = count.min(MAX_RESULTS);
    let mut seen = 0;
    let mut off = 20;
    let mut seq = header.base_seq;
    while seen < count {
        let chunk = buf.get(off..off + 2).ok_or(RtcpError::TooShort)?;
        let c = u16::from_be_bytes([chunk[0], chunk[1]]);
        off += 2;
        let room = kept - out.len();
        let mut push = |symbol: u16| {
            if out.len() < kept {
                // The symbol is kept in `arrival_us` until the deltas are read.
                out.push(PacketResult {
                    seq,
                    arrival_us: Some(i64::from(symbol)),
                });
                seq = seq.wrapping_add(1);
            }
        };
        if c & 0x8000 == 0 {
            let symbol = (c >> 13) & 0x3;
            let run = usize::from(c & 0x1fff).min(count - seen);
            seen += run;
            // A long run costs no more than the symbols kept.
            for _ in 0..run.min(room) {
                push(symbol);
            }
            continue;
        }
        seen += if c & 0x4000 == 0 { 14 } else { 7 };
        if c & 0x4000 == 0 {
            for i in (0..14).rev() {
                push((c >> i) & 0x1);
            }
        } else {
            for i in (0..7).rev() {
                push((c >> (2 * i)) & 0x3);
            }
        }
    }
    // Second pass: receive deltas for the received packets, in order.
    let mut t = reference;
    for r in out.iter_mut() {
        let symbol = r.arrival_us.unwrap_or(0);
        r.arrival_us = match symbol {
            0 => None,
            1 => {
                let d = *buf.get(off).ok_or(RtcpError::TooShort)?;
                off += 1;
                t += i64::from(d) * DELTA_US;
                Some(t)
            }
            2 => {
                let d = buf.get(off..off + 2).ok_or(RtcpError::TooShort)?;
                off += 2;
                t += i64::from(i16::from_be_bytes([d[0], d[1]])) * DELTA_US;
                Some(t)
            }
            _ => return Err(RtcpError::Malformed("reserved transport-cc symbol")),
        };
    }
    Ok(header)
}

/// Writes a feedback message for `results` (consecutive sequence numbers from the first), with
/// two-bit status-vector chunks. Arrival times are rounded to the 250 µs grid.
pub fn write(
    sender_ssrc: u32,
    media_ssrc: u32,
    feedback_count: u8,
    results: &[PacketResult],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0x80 | FMT, PT, 0, 0]);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    let base = results.first().map_or(0, |r| r.seq);
    out.extend_from_slice(&base.to_be_bytes());
    out.extend_from_slice(&(results.len() as u16).to_be_bytes());
    let first_arrival = results.iter().find_map(|r| r.arrival_us).unwrap_or(0);
    let reference = first_arrival.div_euclid(REFERENCE_US);
    let r = (reference as i32 as u32) & 0x00ff_ffff;
    out.extend_from_slice(&[(r >> 16) as u8, (r >> 8) as u8, r as u8, feedback_count]);
    // Each packet's status symbol and delta, in order: walked twice (chunks, then deltas) rather
    // than collected, so writing feedback allocates nothing beyond `out`.
    let deltas = || {
        let mut t = reference * REFERENCE_US;
        results.iter().map(move |r| match r.arrival_us {
            None => (0u16, 0i64),
            Some(a) => {
                let d = (a - t) / DELTA_US;
                t += d * DELTA_US;
                (if (0..=255).contains(&d) { 1 } else { 2 }, d)
            }
        })
    };
    let mut symbols = deltas().map(|(s, _)| s).peekable();
    while symbols.peek().is_some() {
        let mut c: u16 = 0xc000;
        for (i, symbol) in symbols.by_ref().take(7).enumerate() {
            c |= symbol << (2 * (6 - i));
        }
        out.extend_from_slice(&c.to_be_bytes());
    }
    for (symbol, d) in deltas() {
        match symbol {
            1 => out.push(d as u8),
            2 => out.extend_from_slice(&(d.clamp(-32768, 32767) as i16).to_be_bytes()),
            _ => {}
        }
    }
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
    let words = ((out.len() - start) / 4 - 1) as u16;
    out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(seq: u16, arrival_us: Option<i64>) -> PacketResult {
        PacketResult { seq, arrival_us }
    }

    #[test]
    fn round_trip_table() {
        let cases: Vec<(&str, Vec<PacketResult>)> = vec![
            ("one", vec![r(10, Some(1_000_000))]),
            (
                "loss in the middle",
                vec![r(1, Some(64_000)), r(2, None), r(3, Some(70_000))],
            ),
            (
                "large and negative deltas",
                vec![
                    r(65534, Some(128_000)),
                    r(65535, Some(300_000)),
                    r(0, Some(299_000)),
                    r(1, None),
                    r(2, Some(299_250)),
                ],
            ),
            (
                "more than one chunk",
                (0..20u16)
                    .map(|i| {
                        r(
                            100 + i,
                            (i % 5 != 0).then_some(640_000 + i64::from(i) * 1000),
                        )
                    })
                    .collect(),
            ),
        ];
        for (name, results) in cases {
            let mut buf = Vec::new();
            write(1, 2, 7, &results, &mut buf);
            assert_eq!(buf.len() % 4, 0, "{name}");
            let mut out = Vec::new();
            let h = parse(&buf, &mut out).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((h.sender_ssrc, h.media_ssrc, h.feedback_count), (1, 2, 7));
            assert_eq!(out, results, "{name}");
        }
    }

    /// A run-length chunk and a one-bit status vector, as written by other implementations.
    #[test]
    fn parses_run_length_and_one_bit_chunks() {
        let mut b = vec![0x8f, 205, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        b.extend_from_slice(&[0, 5, 0, 17]); // base 5, 17 packets
        b.extend_from_slice(&[0, 0, 1, 0]); // reference 1 (64 ms), count 0
        b.extend_from_slice(&[0x20, 0x03]); // run of 3 × "small delta"
        b.extend_from_slice(&[0xbf, 0xfe]); // 1-bit vector: 13 received, 1 lost
        b.extend_from_slice(&[4u8; 16]); // 16 deltas of 1 ms
        while b.len() % 4 != 0 {
            b.push(0);
        }
        let words = (b.len() / 4 - 1) as u16;
        b[2..4].copy_from_slice(&words.to_be_bytes());
        let mut out = Vec::new();
        parse(&b, &mut out).unwrap();
        assert_eq!(out.len(), 17);
        assert_eq!(out[0], r(5, Some(65_000)));
        assert_eq!(out[15].arrival_us, Some(64_000 + 16 * 1000));
        assert_eq!(out[16], r(21, None));
    }

    /// 40 bytes that claim 65,535 lost packets yield at most `MAX_RESULTS`, the first ones.
    #[test]
    fn a_huge_run_is_read_no_further_than_max_results() {
        let mut b = vec![0x8f, 205, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        b.extend_from_slice(&[0, 10, 0xff, 0xff]); // base 10, 65,535 packets
        b.extend_from_slice(&[0, 0, 1, 0]);
        for _ in 0..8 {
            b.extend_from_slice(&[0x1f, 0xff]); // runs of 8,191 "not received"
        }
        b.extend_from_slice(&[0x1f, 0xff]); // one more than needed: ignored
        b.extend_from_slice(&[0, 0]);
        let words = (b.len() / 4 - 1) as u16;
        b[2..4].copy_from_slice(&words.to_be_bytes());
        let mut out = Vec::new();
        let h = parse(&b, &mut out).unwrap();
        assert_eq!(h.status_count, 65535);
        assert_eq!(out.len(), MAX_RESULTS);
        assert_eq!(out[0], r(10, None));
        assert_eq!(out[MAX_RESULTS - 1], r(10 + MAX_RESULTS as u16 - 1, None));
        // Received packets past the limit still have their deltas skipped correctly: a message
        // of MAX_RESULTS + 3 received packets keeps the first MAX_RESULTS with their times.
        let results: Vec<PacketResult> = (0..MAX_RESULTS as u16 + 3)
            .map(|i| r(i, Some(64_000 + i64::from(i) * 250)))
            .collect();
        let mut b = Vec::new();
        write(1, 2, 0, &results, &mut b);
        parse(&b, &mut out).unwrap();
        assert_eq!(out[..], results[..MAX_RESULTS]);
    }

    #[test]
    fn refuses_bad_input() {
        let mut out = Vec::new();
        let good = {
            let mut b = Vec::new();
            write(1, 2, 0, &[r(1, Some(0)), r(2, Some(500))], &mut b);
            b
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("not twcc", {
                let mut b = good.clone();
                b[0] = 0x81;
                b
            }),
            ("count beyond chunks", {
                let mut b = good.clone();
                b[15] = 200;
                b
            }),
            ("length beyond buffer", {
                let mut b = good.clone();
                b[3] += 4;
                b
            }),
            // The length field cuts the packet below its fixed part (found by fuzzing: it
            // panicked).
            (
                "length below the header",
                vec![
                    0x8f, 0xcd, 0, 1, 0, 0, 0, 2, 0, 5, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
                ],
            ),
        ];
        for (name, b) in cases {
            assert!(parse(&b, &mut out).is_err(), "{name}");
        }
    }
}
