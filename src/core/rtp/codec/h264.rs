//! H.264 RTP payload (RFC 6184): single NAL units, STAP-A and FU-A, checked for SPS or IDR.

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

fn is_key_nal(t: u8) -> bool {
    t == NAL_IDR || t == NAL_SPS
}

/// True when the packet carries the start of an IDR picture or its SPS.
pub fn starts_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        STAP_A => {
            let mut rest = &p[1..];
            while rest.len() >= 3 {
                let size = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                if size == 0 || rest.len() < 2 + size {
                    return false;
                }
                if is_key_nal(rest[2] & 0x1f) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        FU_A => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key_nal(fu & 0x1f)),
        t => is_key_nal(t),
    }
}

#[cfg(test)]
mod tests {
    use super::starts_keyframe;

    #[test]
    fn table() {
        let cases: &[(&str, &[u8], bool)] = &[
            ("sps", &[0x67, 0x42], true),
            ("idr", &[0x65, 0x88], true),
            ("non-idr slice", &[0x41, 0x9a], false),
            (
                "stap-a with sps",
                &[0x78, 0, 2, 0x67, 0x42, 0, 1, 0x68],
                true,
            ),
            ("stap-a without key", &[0x78, 0, 1, 0x06, 0, 1, 0x41], false),
            ("stap-a bad size", &[0x78, 0, 9, 0x67], false),
            ("fu-a idr start", &[0x7c, 0x85, 0], true),
            ("fu-a idr middle", &[0x7c, 0x05, 0], false),
            ("fu-a slice start", &[0x7c, 0x81, 0], false),
            ("empty", &[], false),
        ];
        for (name, p, want) in cases {
            assert_eq!(starts_keyframe(p), *want, "{name}");
        }
    }
}
