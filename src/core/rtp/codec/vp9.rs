//! VP9 payload descriptor (RFC 9628 §4.2): a key frame is a non-inter-predicted frame start.

/// True when the packet begins a frame that is not inter-picture predicted, in spatial layer 0.
pub fn starts_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let inter_predicted = b0 & 0x40 != 0;
    let begin = b0 & 0x08 != 0;
    if inter_predicted || !begin {
        return false;
    }
    // With the L bit the layer indices follow the optional picture id; require spatial id 0.
    let mut off = 1;
    if b0 & 0x80 != 0 {
        let Some(&pid) = p.get(off) else { return false };
        off += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    if b0 & 0x20 != 0 {
        let Some(&layers) = p.get(off) else {
            return false;
        };
        return (layers >> 1) & 0x07 == 0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::starts_keyframe;

    #[test]
    fn table() {
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
}
