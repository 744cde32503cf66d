//! VP9 payload descriptor (RFC 9628 §4.2): key frames, and the spatial and temporal layer of each
//! packet, which a forwarder drops per viewer (SVC).

/// True when the packet begins a frame that is not inter-picture predicted, in spatial layer 0.
pub fn starts_keyframe(p: &[u8]) -> bool {
    Descriptor::parse(p).is_some_and(|d| d.begin && !d.inter_picture && d.sid == 0)
}

/// The fields of a VP9 payload descriptor a forwarder acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// P: the frame refers to earlier pictures (not a switching point for its spatial layer).
    pub inter_picture: bool,
    /// B and E: first and last packet of a layer frame.
    pub begin: bool,
    pub end: bool,
    /// Whether the L bit was set (the layer indices below were sent).
    pub layered: bool,
    pub tid: u8,
    /// U: a switching-up point: from here, temporal layer `tid` can be added.
    pub switch_up: bool,
    pub sid: u8,
    /// D: the frame depends on spatial layer `sid - 1` of the same picture.
    pub inter_layer: bool,
}

impl Descriptor {
    /// `None` when the descriptor is cut short.
    pub fn parse(p: &[u8]) -> Option<Self> {
        let b0 = *p.first()?;
        let mut d = Descriptor {
            inter_picture: b0 & 0x40 != 0,
            begin: b0 & 0x08 != 0,
            end: b0 & 0x04 != 0,
            layered: b0 & 0x20 != 0,
            tid: 0,
            switch_up: false,
            sid: 0,
            inter_layer: false,
        };
        let mut off = 1;
        if b0 & 0x80 != 0 {
            // I: picture id, 7 or 15 bits (M).
            off += if *p.get(off)? & 0x80 != 0 { 2 } else { 1 };
        }
        if d.layered {
            let l = *p.get(off)?;
            d.tid = l >> 5;
            d.switch_up = l & 0x10 != 0;
            d.sid = (l >> 1) & 0x07;
            d.inter_layer = l & 0x01 != 0;
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::{starts_keyframe, Descriptor};

    #[test]
    fn keyframes() {
        let cases: &[(&str, &[u8], bool)] = &[
            ("key begin", &[0x08], true),
            ("inter", &[0x48], false),
            ("key middle", &[0x00], false),
            (
                "key with picture id and layer s0",
                &[0xa8, 0x81, 0x02, 0x00],
                true,
            ),
            ("key with layer s1", &[0xa8, 0x05, 0x02], false),
            ("truncated", &[0xa8], false),
            ("empty", &[], false),
        ];
        for (name, p, want) in cases {
            assert_eq!(starts_keyframe(p), *want, "{name}");
        }
    }

    #[test]
    fn layers() {
        // (name, bytes, (P, B, E, tid, U, sid, D))
        type Fields = (bool, bool, bool, u8, bool, u8, bool);
        let cases: &[(&str, &[u8], Option<Fields>)] = &[
            (
                "no layer indices",
                &[0x0c],
                Some((false, true, true, 0, false, 0, false)),
            ),
            (
                // I, L, B; 15-bit picture id; T2 U S1 D; TL0PICIDX
                "t2 s1 switching up",
                &[0xa8, 0x80, 0x05, 0x53, 0x07],
                Some((false, true, false, 2, true, 1, true)),
            ),
            (
                // I, P, L, E; 7-bit picture id; T1 S2
                "inter, end of s2",
                &[0xe4, 0x11, 0x24],
                Some((true, false, true, 1, false, 2, false)),
            ),
            ("layer byte missing", &[0xa0, 0x80, 0x05], None),
            ("picture id missing", &[0x80], None),
            ("empty", &[], None),
        ];
        for (name, p, want) in cases {
            let got = Descriptor::parse(p).map(|d| {
                (
                    d.inter_picture,
                    d.begin,
                    d.end,
                    d.tid,
                    d.switch_up,
                    d.sid,
                    d.inter_layer,
                )
            });
            assert_eq!(got, *want, "{name}");
        }
    }
}
