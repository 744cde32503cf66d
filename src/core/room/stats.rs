//! Reception statistics of one publisher stream, for the receiver reports volna sends back
//! (RFC 3550 §6.4.1 and Appendix A.3, A.8).

use std::time::Instant;

use crate::core::rtcp::ReportBlock;

#[derive(Debug, Clone)]
pub struct ReceiveStats {
    clock_rate: u32,
    base_ext: Option<i64>,
    highest_ext: i64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter in timestamp units, scaled by 16 as in RFC 3550 A.8.
    jitter_q4: u64,
    last_transit: Option<i64>,
    first_arrival: Option<Instant>,
    last_sr: Option<(Instant, u32)>,
}

impl ReceiveStats {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            base_ext: None,
            highest_ext: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter_q4: 0,
            last_transit: None,
            first_arrival: None,
            last_sr: None,
        }
    }

    pub fn on_packet(&mut self, now: Instant, seq: u16, ts: u32) {
        let ext = match self.base_ext {
            None => {
                self.base_ext = Some(i64::from(seq));
                self.highest_ext = i64::from(seq);
                i64::from(seq)
            }
            Some(_) => {
                self.highest_ext + i64::from(seq.wrapping_sub(self.highest_ext as u16) as i16)
            }
        };
        self.highest_ext = self.highest_ext.max(ext);
        self.received += 1;

        let first = *self.first_arrival.get_or_insert(now);
        let arrival = (now.duration_since(first).as_secs_f64() * f64::from(self.clock_rate)) as i64;
        let transit = arrival - i64::from(ts);
        if let Some(last) = self.last_transit {
            // Wrapping timestamps make a huge difference once per wrap; ignore such outliers.
            let d = (transit - last).unsigned_abs();
            if d < u64::from(u32::MAX / 2) {
                let j = self.jitter_q4 as i64 + d as i64 - ((self.jitter_q4 as i64 + 8) >> 4);
                self.jitter_q4 = j.max(0) as u64;
            }
        }
        self.last_transit = Some(transit);
    }

    pub fn on_sender_report(&mut self, now: Instant, ntp_middle: u32) {
        self.last_sr = Some((now, ntp_middle));
    }

    /// The report block for this interval; resets the interval counters.
    pub fn report_block(&mut self, now: Instant, ssrc: u32) -> ReportBlock {
        let base = self.base_ext.unwrap_or(0);
        let expected = (self.highest_ext - base + 1).max(0) as u64;
        let lost = expected as i64 - self.received as i64;
        let expected_interval = expected - self.expected_prior.min(expected);
        let received_interval = self.received - self.received_prior.min(self.received);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((at, middle)) => {
                let d = now.duration_since(at).as_secs_f64() * 65536.0;
                (middle, d as u32)
            }
            None => (0, 0),
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: lost.clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_sequence: self.highest_ext as u32,
            jitter: (self.jitter_q4 >> 4) as u32,
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn loss_and_wrap() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(48000);
        // 65530..=65535, 0..=3 with 65533 and 1 missing: 10 expected, 8 received.
        let seqs = [65530u16, 65531, 65532, 65534, 65535, 0, 2, 3];
        for (i, seq) in seqs.iter().enumerate() {
            s.on_packet(
                t0 + Duration::from_millis(20 * i as u64),
                *seq,
                960 * i as u32,
            );
        }
        let b = s.report_block(t0 + Duration::from_secs(1), 7);
        assert_eq!(b.cumulative_lost, 2);
        assert_eq!(b.highest_sequence, 65536 + 3);
        assert_eq!(b.fraction_lost, (2 * 256 / 10) as u8);
        // Next interval: nothing new, so no fractional loss.
        let b2 = s.report_block(t0 + Duration::from_secs(2), 7);
        assert_eq!(b2.fraction_lost, 0);
    }

    #[test]
    fn echoes_last_sender_report() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(90000);
        s.on_packet(t0, 1, 0);
        s.on_sender_report(t0, 0x1234_5678);
        let b = s.report_block(t0 + Duration::from_millis(500), 1);
        assert_eq!(b.last_sr, 0x1234_5678);
        assert_eq!(b.delay_since_last_sr, 32768);
    }

    #[test]
    fn steady_stream_has_low_jitter() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(90000);
        for i in 0..100u32 {
            s.on_packet(
                t0 + Duration::from_millis(33 * u64::from(i)),
                i as u16,
                2970 * i,
            );
        }
        assert!(s.report_block(t0 + Duration::from_secs(4), 1).jitter < 5);
    }
}
