//! Janus VideoRoom through [`JanusTarget`], inside a private network namespace.
//!
//! Needs root on Linux (network namespaces; apt installs Janus when it is missing); elsewhere the
//! test says why and passes. The test re-runs itself inside a fresh namespace with
//! [`netns::run_in_netns`], and the re-run does the work, so that Janus, its HTTP API and the
//! client all live in the namespace.

use std::net::IpAddr;

use volna_load::janus::{ensure_installed, JanusOptions, JanusTarget};
use volna_load::netns;
use volna_load::target::{SdpEndpoint, Target};

/// Re-runs `test` inside a namespace; returns true in the re-run, where the test does its work.
fn inside_netns(test: &str) -> bool {
    if netns::in_netns() {
        return true;
    }
    if !cfg!(target_os = "linux") || !netns::is_root() {
        eprintln!("skipped: {test} needs root on Linux (network namespaces)");
        return false;
    }
    // No network inside the namespace: install first.
    ensure_installed(None).expect("janus installed");
    let args = [test, "--exact", "--nocapture", "--test-threads=1"].map(String::from);
    let status = netns::run_in_netns(&args).expect("run in a namespace");
    assert!(status.success(), "{test} failed inside the namespace");
    false
}

/// A client that only speaks SDP: enough for Janus to answer, never connects.
struct SdpOnly {
    ip: IpAddr,
    answer: Option<String>,
}

impl SdpEndpoint for SdpOnly {
    fn offer(&mut self) -> String {
        let fingerprint = vec!["AB"; 32].join(":");
        let ip = self.ip;
        let mut sdp = format!(
            "v=0\r\no=- 1 2 IN IP4 {ip}\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
             a=msid-semantic: WMS s\r\n"
        );
        for (mid, kind, pt, codec, ssrc) in [
            (0, "audio", 111, "opus/48000/2", 1111),
            (1, "video", 96, "VP8/90000", 2222),
        ] {
            sdp += &format!(
                "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 {ip}\r\n\
                 a=candidate:1 1 udp 2130706431 {ip} 40000 typ host\r\n\
                 a=ice-ufrag:vlua\r\na=ice-pwd:volnaloadtestpassword0\r\n\
                 a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na=mid:{mid}\r\n\
                 a=sendonly\r\na=rtcp-mux\r\na=rtpmap:{pt} {codec}\r\n\
                 a=msid:s t{mid}\r\na=ssrc:{ssrc} cname:volna\r\n"
            );
        }
        sdp
    }

    fn accept_answer(&mut self, sdp: &str) -> Result<(), String> {
        self.answer = Some(sdp.to_string());
        Ok(())
    }

    fn answer_offer(&mut self, _sdp: &str) -> Result<String, String> {
        Err("SdpOnly does not subscribe".into())
    }
}

/// Passes SDP through to a real client, keeping the relay's offer to look at.
struct Recording<'a> {
    inner: &'a mut dyn SdpEndpoint,
    relay_offer: Option<String>,
}

impl SdpEndpoint for Recording<'_> {
    fn offer(&mut self) -> String {
        self.inner.offer()
    }

    fn accept_answer(&mut self, sdp: &str) -> Result<(), String> {
        self.inner.accept_answer(sdp)
    }

    fn answer_offer(&mut self, sdp: &str) -> Result<String, String> {
        self.relay_offer = Some(sdp.to_string());
        self.inner.answer_offer(sdp)
    }
}

#[test]
fn janus_videoroom_signalling() {
    if !inside_netns("janus_videoroom_signalling") {
        return;
    }
    let mut janus = JanusTarget::start(&JanusOptions::default()).expect("janus starts");
    assert_eq!(janus.name(), "janus");
    assert!(janus.pid() > 0);
    assert_eq!(janus.client_ip(), netns::VETH_IP);

    janus.create_room("smoke", 4).expect("room created");
    let rooms = janus.list_rooms().expect("rooms listed");
    assert!(
        rooms.contains(&JanusTarget::room_id("smoke")),
        "room missing from {rooms:?}"
    );
    // Creating it again starts over instead of failing.
    janus.create_room("smoke", 4).expect("room re-created");

    let mut client = SdpOnly {
        ip: netns::VETH_IP,
        answer: None,
    };
    let feed = janus
        .publish("smoke", "pub-0", &mut client)
        .expect("publisher answered");
    assert!(feed.parse::<u64>().is_ok(), "feed id {feed}");
    let answer = client.answer.expect("answer applied");
    eprintln!("Janus's answer:\n{answer}");
    assert!(
        answer.contains(&format!(" {} ", netns::VETH_IP)),
        "{answer}"
    );
    assert!(answer.contains("a=setup:active") || answer.contains("a=setup:passive"));

    // This publisher never connects, so Janus keeps refusing subscribers with 428.
    let mut viewer = SdpOnly {
        ip: netns::VETH_IP,
        answer: None,
    };
    let err = janus
        .subscribe("smoke", &feed, &mut viewer)
        .expect_err("no media, no feed");
    assert!(err.contains("428"), "{err}");

    janus.stop();
}

/// One publisher's packets reach one subscriber through Janus, over real ICE, DTLS and SRTP.
#[test]
fn janus_forwards_publisher_to_subscriber() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use volna_load::rtc::{self, Identity, Role, RtcClient, Shared, STATE_CONNECTED};

    if !inside_netns("janus_forwards_publisher_to_subscriber") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Clients run on the runtime's workers; signalling blocks this thread.
    let _entered = runtime.enter();
    let mut janus = JanusTarget::start(&JanusOptions::default()).expect("janus starts");
    janus.create_room("e2e", 2).expect("room created");
    let ip = janus.client_ip();
    let identity = Identity::generate().expect("certificate");
    let shared = Arc::new(Shared::default());

    let log = janus.log_path().to_path_buf();
    let wait_connected = |client: &rtc::RunningClient| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.state() == rtc::STATE_CONNECTING && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if client.state() != STATE_CONNECTED {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "{} did not connect ({}); Janus's log:\n{log}",
                client.name,
                client.error()
            );
        }
    };

    let mut publisher = RtcClient::new(
        "pub".into(),
        ip,
        identity.clone(),
        Role::publisher(true, 300),
    )
    .expect("publisher socket");
    let feed = janus
        .publish("e2e", "pub", &mut publisher)
        .expect("published");
    let publisher = publisher.start(shared.clone()).expect("publisher runs");
    wait_connected(&publisher);

    let mut viewer = RtcClient::new("sub".into(), ip, identity, Role::subscriber(true))
        .expect("subscriber socket");
    let mut recording = Recording {
        inner: &mut viewer,
        relay_offer: None,
    };
    janus
        .subscribe("e2e", &feed, &mut recording)
        .expect("subscribed");
    let offer = recording.relay_offer.expect("Janus offered");
    eprintln!("Janus's subscriber offer:\n{offer}");
    assert!(offer.contains(&format!(" {ip} ")), "{offer}");
    let viewer = viewer.start(shared.clone()).expect("subscriber runs");
    wait_connected(&viewer);

    let start = rtc::now_ns();
    shared.set_window(start, start + 2_000_000_000);
    std::thread::sleep(Duration::from_millis(2500));
    shared.stop();
    // Clients flush their last samples when they see the stop.
    std::thread::sleep(Duration::from_millis(300));
    let (received, p50, loss) = {
        let inner = shared.inner.lock().expect("recorder");
        (
            inner.total.count(),
            inner.total.quantile(0.5) / 1e6,
            inner.loss,
        )
    };
    eprintln!("received {received} packets through Janus, median latency {p50:.2} ms, {loss:?}");
    assert!(received > 50, "only {received} packets arrived");
    janus.stop();
}
