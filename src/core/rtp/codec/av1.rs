//! AV1 RTP payload (AV1 RTP specification §4.4): the aggregation header's N bit marks the first
//! packet of a new coded video sequence, which is where a decoder can start.

pub fn starts_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|h| h & 0x08 != 0 && h & 0x80 == 0)
}

#[cfg(test)]
mod tests {
    use super::starts_keyframe;

    #[test]
    fn table() {
        let cases: &[(&str, &[u8], bool)] = &[
            ("new sequence", &[0x18], true),
            ("continuation of previous", &[0x98], false),
            ("ordinary", &[0x10], false),
            ("empty", &[], false),
        ];
        for (name, p, want) in cases {
            assert_eq!(starts_keyframe(p), *want, "{name}");
        }
    }
}
