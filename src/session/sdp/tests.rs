use super::*;

pub(crate) const CHROME_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS s\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\na=sendonly\r\na=msid:s a\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\na=ssrc:1111 cname:x\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:1\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:13 urn:3gpp:video-orientation\r\na=sendonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\na=rtcp-fb:96 ccm fir\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\na=ssrc-group:FID 2222 3333\r\na=ssrc:2222 cname:x\r\na=ssrc:3333 cname:x\r\n";

fn test_local() -> Local {
    Local {
        ice_ufrag: "uf".into(),
        ice_pwd: "pw".into(),
        fingerprint: "01:02".into(),
        candidates: vec!["127.0.0.1:5000".parse().unwrap()],
        tcp_port: None,
        session_id: 7,
    }
}

#[test]
fn parses_a_browser_offer() {
    let o = Offer::parse(CHROME_OFFER).unwrap();
    assert_eq!(
        (o.ice_ufrag.as_str(), o.fingerprint.as_str(), o.setup),
        ("abcd", "aa:bb:cc", Setup::Actpass)
    );
    assert_eq!(o.media.len(), 2);
    let a = &o.media[0];
    assert_eq!(
        (a.kind, a.mid.as_str(), a.direction, a.ssrc),
        (Some(MediaKind::Audio), "0", Direction::SendOnly, Some(1111))
    );
    assert_eq!(a.codecs[0].codec, Some(Codec::Opus));
    assert_eq!(a.codecs[1].name, "PCMU");
    assert_eq!(a.ext_map().id(ExtKind::Mid), Some(4));
    let v = &o.media[1];
    assert_eq!(
        v.codecs.iter().map(|c| c.payload_type).collect::<Vec<_>>(),
        vec![96, 97, 102]
    );
    assert_eq!(v.ssrc, Some(2222));
    assert!(v.codecs[0].feedback.contains(&"nack pli".to_owned()));
}

/// RFC 8853 simulcast: the send RIDs in the simulcast attribute's order, first alternatives,
/// `~` (paused) stripped, each needing its `a=rid:... send`; the answer receives them.
/// RFC 4796: `a=content:slides` (alone or in a list) marks a presentation.
#[test]
fn content_slides_marks_a_presentation() {
    for (line, slides) in [
        ("", false),
        ("a=content:slides\r\n", true),
        ("a=content:main,slides\r\n", true),
        ("a=content:main\r\n", false),
    ] {
        let sdp = CHROME_OFFER.replace("a=mid:1\r\n", &format!("a=mid:1\r\n{line}"));
        let o = Offer::parse(&sdp).unwrap();
        assert_eq!(o.media[1].slides, slides, "{line:?}");
        assert!(!o.media[0].slides);
    }
}

#[test]
fn simulcast_rids_are_read_and_answered() {
    let table: &[(&str, &[&str])] = &[
        (
            "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n",
            &["q", "h", "f"],
        ),
        (
            "a=rid:1 send\r\na=rid:2 send\r\na=simulcast:send ~2;1\r\n",
            &["2", "1"],
        ),
        (
            "a=rid:a send\r\na=rid:b send\r\na=simulcast:send a,b\r\n",
            &["a"],
        ),
        ("a=rid:a send\r\na=simulcast:send a;zz\r\n", &["a"]),
        ("a=rid:a recv\r\na=simulcast:recv a\r\n", &[]),
        ("a=rid:a send\r\n", &[]),
        // RFC 8851 restrictions: a layer only for payload type 97 is not received as VP8 (96).
        (
            "a=rid:q send pt=96;max-width=320\r\na=rid:x send pt=97\r\na=simulcast:send q;x\r\n",
            &["q"],
        ),
    ];
    let rid_ext = "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n";
    for (lines, want) in table {
        let sdp = format!("{CHROME_OFFER}{rid_ext}{lines}");
        let o = Offer::parse(&sdp).unwrap();
        let codec = o.media[1].codecs[0].clone();
        let wanted = [ExtKind::Mid, ExtKind::RtpStreamId];
        let a = AnswerMedia::accept(&o.media[1], codec, Direction::RecvOnly, &wanted, None, true);
        assert_eq!(a.rids(), *want);
        let answer = build_answer(&o, &test_local(), &[AnswerMedia::Rejected, a]);
        if want.is_empty() {
            assert!(!answer.contains("a=simulcast"), "{answer}");
        } else {
            assert!(answer.contains(&format!("a=simulcast:recv {}\r\n", want.join(";"))));
            for r in *want {
                assert!(answer.contains(&format!("a=rid:{r} recv\r\n")), "{answer}");
            }
            assert!(answer.contains(rid_ext), "the RID extension is accepted");
        }
    }
    // Without the RID extension the layers cannot be told apart: no simulcast.
    let sdp = format!("{CHROME_OFFER}{}", table[0].0);
    let o = Offer::parse(&sdp).unwrap();
    let codec = o.media[1].codecs[0].clone();
    let a = AnswerMedia::accept(
        &o.media[1],
        codec,
        Direction::RecvOnly,
        &[ExtKind::Mid],
        None,
        true,
    );
    assert!(a.rids().is_empty());
}

#[test]
fn rejects_bad_offers() {
    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "hello".into(), "does not parse"),
        (
            "no ice",
            CHROME_OFFER.replace("a=ice-ufrag:abcd\r\n", ""),
            "ice-ufrag",
        ),
        (
            "no fingerprint",
            CHROME_OFFER.replace("a=fingerprint:sha-256 AA:BB:CC\r\n", ""),
            "fingerprint",
        ),
        (
            "sha-1 only",
            CHROME_OFFER.replace("sha-256 AA", "sha-1 AA"),
            "sha-256",
        ),
        (
            "no rtcp-mux",
            CHROME_OFFER.replace("a=rtcp-mux\r\n", ""),
            "rtcp-mux",
        ),
        (
            "plain RTP",
            CHROME_OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"),
            "UDP/TLS/RTP/SAVPF",
        ),
        ("no mid", CHROME_OFFER.replace("a=mid:0\r\n", ""), "a=mid"),
        (
            "bad setup",
            CHROME_OFFER.replace("setup:actpass", "setup:holdconn"),
            "setup",
        ),
    ];
    for (name, sdp, want) in cases {
        let err = Offer::parse(&sdp).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn answer_mirrors_offer() {
    let o = Offer::parse(CHROME_OFFER).unwrap();
    let local = test_local();
    let audio = AnswerMedia::accept(
        &o.media[0],
        o.media[0].codecs[0].clone(),
        Direction::RecvOnly,
        &[ExtKind::Mid, ExtKind::AudioLevel],
        None,
        true,
    );
    let video = AnswerMedia::accept(
        &o.media[1],
        o.media[1].codecs[0].clone(),
        Direction::RecvOnly,
        &[ExtKind::Mid],
        None,
        true,
    );
    assert_eq!(
        video.feedback(),
        Feedback {
            nack: true,
            pli: true,
            fir: true,
            remb: true
        }
    );
    let text = build_answer(&o, &local, &[audio, video]);
    for line in [
        "a=group:BUNDLE 0 1",
        "a=ice-lite",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=setup:passive",
        "a=recvonly",
        "a=rtcp-fb:96 nack pli",
        "a=rtcp-fb:96 goog-remb",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
    ] {
        assert!(
            text.contains(&format!("{line}\r\n")),
            "missing {line}\n{text}"
        );
    }
    assert!(
        !text.contains("transport-cc"),
        "unsupported feedback must not be echoed"
    );
    assert!(
        !text.contains("a=extmap:13"),
        "unrequested extension must not be echoed"
    );
    // The answer is valid SDP to our own parser too (as a round trip check of syntax).
    SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes())).unwrap();
}

#[test]
fn bundle_only_m_line_is_live() {
    let sdp = CHROME_OFFER
        .replace("m=video 9 UDP", "m=video 0 UDP")
        .replace("a=mid:1\r\n", "a=mid:1\r\na=bundle-only\r\n");
    let o = Offer::parse(&sdp).unwrap();
    assert!(o.media[1].active());
    let rejected = CHROME_OFFER.replace("m=video 9 UDP", "m=video 0 UDP");
    assert!(!Offer::parse(&rejected).unwrap().media[1].active());
}

#[test]
fn new_ice_credentials_keep_the_rest() {
    let before = "v=0\r\no=volna 7 2 IN IP4 127.0.0.1\r\ns=-\r\nm=audio 9 X 0\r\na=ice-ufrag:old1\r\na=ice-pwd:oldpwd\r\na=mid:0\r\nm=video 9 X 1\r\na=ice-ufrag:old1\r\na=ice-pwd:oldpwd\r\n";
    let after = with_ice_credentials(before, "new2", "newpwd");
    assert_eq!(
        after,
        before
            .replace("old1", "new2")
            .replace("oldpwd", "newpwd")
            .replace("7 2 IN", "7 3 IN")
    );
}

#[test]
fn offer_with_parked_and_stopped_lines() {
    let local = test_local();
    let codec = Offer::parse(CHROME_OFFER).unwrap().media[1].codecs[0].clone();
    let src = Source {
        ssrc: 42,
        cname: "c".into(),
        stream_id: "s".into(),
        track_id: "t".into(),
        rtx: None,
        red: None,
    };
    let line = |mid: &str, source: Option<Source>, bundled| OfferLine {
        mid: mid.into(),
        kind: MediaKind::Video,
        codec: codec.clone(),
        ext: vec![(1, ExtKind::Mid.uri().into())],
        source,
        bundled,
    };
    // The tag line without a track (parked), a stopped line, a live one.
    let lines = [
        line("0", None, true),
        line("4", None, false),
        line("5", Some(src), true),
    ];
    let text = build_offer(&local, 3, &lines);
    for want in [
        "o=volna 7 3 IN IP4",
        "a=group:BUNDLE 0 5\r\n",
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n",
        "m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\na=mid:4\r\n",
        "a=inactive\r\na=rtcp-mux",
        "a=setup:actpass",
        "a=sendonly",
        "a=ssrc:42 msid:s t",
    ] {
        assert!(text.contains(want), "missing {want}\n{text}");
    }
    // The candidate goes on the tag line, which is live even without a track.
    let tag = &text[text.find("a=mid:0").unwrap()..text.find("a=mid:4").unwrap()];
    assert!(
        tag.contains("a=candidate:") && !tag.contains("a=msid"),
        "{tag}"
    );
    assert_eq!(text.matches("a=candidate:").count(), 1);
    // A browser would parse it: so does our parser, with all m-lines.
    let parsed = Offer::parse(&text).unwrap();
    let live: Vec<bool> = parsed.media.iter().map(OfferedMedia::active).collect();
    assert_eq!(live, [true, false, true]);
}

#[test]
fn h264_compatibility() {
    let c = |fmtp: &str| OfferedCodec {
        payload_type: 102,
        codec: Some(Codec::H264),
        name: "H264".into(),
        clock_rate: 90000,
        channels: String::new(),
        fmtp: fmtp.into(),
        feedback: vec![],
    };
    let base = c("packetization-mode=1;profile-level-id=42e01f");
    assert!(base.compatible(&c("profile-level-id=42e034;packetization-mode=1")));
    assert!(!base.compatible(&c("packetization-mode=0;profile-level-id=42e01f")));
    assert!(!base.compatible(&c("packetization-mode=1;profile-level-id=640c1f")));
}
