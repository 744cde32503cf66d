//! The TURN server's state machine on virtual time (RFC 8656): credentials (challenge,
//! expired, wrong password, stale nonce), allocation and its retransmission, the per-identity
//! quota, peers inside and outside the node, Send/Data indications and channels both ways
//! (padded on streams), refresh, expiry, and a client whose connection drops.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rtc_stun::attributes::*;
use rtc_stun::error_code::ErrorCodeAttribute;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::*;
use rtc_stun::textattrs::TextAttribute;
use rtc_stun::xoraddr::XorMappedAddress;
use volna::transport::turn::auth::Secret;
use volna::transport::turn::request::{message, peer_value, Creds};
use volna::transport::turn::{Action, Client, Proto, TurnPolicy, TurnServer};

const SECRET: &[u8] = b"turn-test-secret-0123";
const REALM: &str = "volna";
const NOW_UNIX: u64 = 1_800_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The node: media ports 5000 and 5001 at 203.0.113.5 (advertised), bound at 10.0.0.5.
fn server(max_per_identity: usize) -> TurnServer {
    let peers: HashMap<SocketAddr, SocketAddr> = [
        (addr("203.0.113.5:5000"), addr("10.0.0.5:5000")),
        (addr("203.0.113.5:5001"), addr("10.0.0.5:5001")),
    ]
    .into();
    let policy = TurnPolicy {
        realm: REALM.into(),
        max_per_identity,
        max_allocations: 100,
        peers,
        relayed_ip: "203.0.113.5".parse::<IpAddr>().unwrap(),
    };
    TurnServer::new(
        policy,
        Secret::new(SECRET),
        b"nonce-key",
        rtc_crypto::default_provider().unwrap(),
    )
}

/// A client's side: its address and credentials, and the nonce it last got.
struct Tc {
    client: Client,
    username: String,
    password: String,
    nonce: String,
}

impl Tc {
    fn new(proto: Proto, a: &str, identity: &str, expiry: u64) -> Self {
        let c = Secret::new(SECRET).mint(identity, expiry);
        Self {
            client: Client {
                proto,
                addr: addr(a),
            },
            username: c.username,
            password: c.credential,
            nonce: String::new(),
        }
    }

    fn key(&self) -> Vec<u8> {
        let p = rtc_crypto::default_provider().unwrap();
        MessageIntegrity::long_term_integrity_key(
            self.username.clone(),
            REALM.into(),
            self.password.clone(),
            p.crypto(),
        )
        .unwrap()
    }

    /// A request of `method` with `attrs` (type, value), signed when `signed`.
    fn request(&self, method: Method, attrs: &[(AttrType, Vec<u8>)], signed: bool) -> Message {
        let creds = Creds {
            username: &self.username,
            password: &self.password,
            realm: REALM,
            nonce: &self.nonce,
        };
        let txn = TransactionId::new();
        let p = rtc_crypto::default_provider().unwrap();
        let typ = MessageType::new(method, CLASS_REQUEST);
        message(typ, txn.0, attrs, signed.then_some(&creds), p.as_ref())
    }
}

/// Attributes of a request: (type, value).
type Attrs = Vec<(AttrType, Vec<u8>)>;

fn peer_attr(a: SocketAddr) -> (AttrType, Vec<u8>) {
    (ATTR_XOR_PEER_ADDRESS, peer_value(a))
}

fn udp_transport() -> (AttrType, Vec<u8>) {
    (ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

struct Run {
    s: TurnServer,
    now: Instant,
    unix: u64,
    next_port: u16,
    out: Vec<Action>,
}

impl Run {
    fn new(max_per_identity: usize) -> Self {
        Self {
            s: server(max_per_identity),
            now: Instant::now(),
            unix: NOW_UNIX,
            next_port: 40000,
            out: Vec::new(),
        }
    }

    /// Hands `bytes` from `c` to the server; the reply to `c`, if any, decoded.
    fn send(&mut self, c: &Client, bytes: &[u8]) -> Option<Message> {
        let port = &mut self.next_port;
        let mut bind = || {
            *port += 1;
            Ok(SocketAddr::new("10.0.0.5".parse().unwrap(), *port))
        };
        self.out.clear();
        self.s
            .handle(self.now, self.unix, *c, bytes, &mut bind, &mut self.out);
        self.out.iter().find_map(|a| match a {
            Action::Reply(to, b) if to == c => {
                let mut m = Message::new();
                m.unmarshal_binary(b).ok().map(|()| m)
            }
            _ => None,
        })
    }

    /// Sends `m` and returns the response's error code (0 for success); takes a new nonce.
    fn ask(&mut self, tc: &mut Tc, m: &Message) -> u16 {
        let r = self.send(&tc.client, &m.raw).expect("a response");
        assert_eq!(r.transaction_id, m.transaction_id);
        if let Ok(n) = TextAttribute::get_from_as(&r, ATTR_NONCE) {
            tc.nonce = n.text;
        }
        if r.typ.class == CLASS_SUCCESS_RESPONSE {
            // Success responses are signed with the client's key.
            let p = rtc_crypto::default_provider().unwrap();
            let mut r = r;
            MessageIntegrity::check(&mut r, &tc.key(), p.crypto()).expect("signed success");
            return 0;
        }
        let mut e = ErrorCodeAttribute::default();
        e.get_from(&r).unwrap();
        e.code.0
    }

    /// Challenge, then Allocate: the relayed address.
    fn allocate(&mut self, tc: &mut Tc) -> Result<SocketAddr, u16> {
        let first = tc.request(METHOD_ALLOCATE, &[udp_transport()], false);
        assert_eq!(self.ask(tc, &first), 401);
        let m = tc.request(METHOD_ALLOCATE, &[udp_transport()], true);
        let r = self.send(&tc.client, &m.raw).unwrap();
        if r.typ.class != CLASS_SUCCESS_RESPONSE {
            let mut e = ErrorCodeAttribute::default();
            e.get_from(&r).unwrap();
            return Err(e.code.0);
        }
        let mut x = XorMappedAddress::default();
        x.get_from_as(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap();
        Ok(SocketAddr::new(x.ip, x.port))
    }

    fn relays(&self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.out
            .iter()
            .filter_map(|a| match a {
                Action::Relay { relay, to, data } => Some((*relay, *to, data.clone())),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn credentials_are_checked() {
    let mut r = Run::new(4);
    let mut good = Tc::new(Proto::Udp, "198.51.100.1:1000", "alice", NOW_UNIX + 60);
    // (what is wrong, the code)
    let mut expired = Tc::new(Proto::Udp, "198.51.100.1:1001", "alice", NOW_UNIX - 1);
    assert_eq!(r.allocate(&mut expired), Err(401));
    let mut wrong = Tc::new(Proto::Udp, "198.51.100.1:1002", "alice", NOW_UNIX + 60);
    wrong.password = Secret::new(b"another-secret-0000")
        .mint("alice", NOW_UNIX + 60)
        .credential;
    assert_eq!(r.allocate(&mut wrong), Err(401));
    // A nonce made for another address is not taken: the sender knows the password, so it gets
    // 438 and a nonce of its own.
    let mut stolen = Tc::new(Proto::Udp, "198.51.100.1:1003", "alice", NOW_UNIX + 60);
    let first = stolen.request(METHOD_ALLOCATE, &[udp_transport()], false);
    r.ask(&mut stolen, &first);
    good.nonce = stolen.nonce.clone();
    let m = good.request(METHOD_ALLOCATE, &[udp_transport()], true);
    assert_eq!(r.ask(&mut good, &m), 438);
    // A nonce of ours, ten minutes old (with credentials still valid): 438 with a fresh one,
    // which then works.
    r.unix += 600;
    good.username = Secret::new(SECRET).mint("alice", r.unix + 60).username;
    good.password = Secret::new(SECRET).password(&good.username);
    let m = good.request(METHOD_ALLOCATE, &[udp_transport()], true);
    assert_eq!(r.ask(&mut good, &m), 438);
    let m = good.request(METHOD_ALLOCATE, &[udp_transport()], true);
    assert_eq!(r.ask(&mut good, &m), 0);
    let s = r.s.stats();
    assert_eq!(
        (
            s.expired_credentials,
            s.bad_credentials,
            s.stale_nonces,
            s.allocations_udp
        ),
        (1, 1, 2, 1)
    );
}

#[test]
fn allocations_follow_rfc_8656() {
    let mut r = Run::new(2);
    let mut a = Tc::new(Proto::Tcp, "198.51.100.1:1000", "alice", NOW_UNIX + 60);
    let relayed = r.allocate(&mut a).unwrap();
    assert_eq!(relayed.ip(), "203.0.113.5".parse::<IpAddr>().unwrap());
    // Another Allocate on this 5-tuple: 437, whatever it asks.
    // (request attributes, code)
    let cases: Vec<(Attrs, u16)> = vec![
        (vec![udp_transport()], 437),
        (vec![(ATTR_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])], 437),
    ];
    for (attrs, want) in cases {
        let m = a.request(METHOD_ALLOCATE, &attrs, true);
        assert_eq!(r.ask(&mut a, &m), want);
    }
    // A retransmitted Allocate (same transaction) gets the same relayed address again.
    let mut again = Tc::new(Proto::Udp, "198.51.100.3:1000", "carol", NOW_UNIX + 60);
    let first = again.request(METHOD_ALLOCATE, &[udp_transport()], false);
    r.ask(&mut again, &first);
    let m = again.request(METHOD_ALLOCATE, &[udp_transport()], true);
    let relayed_of = |msg: Message| {
        let mut x = XorMappedAddress::default();
        x.get_from_as(&msg, ATTR_XOR_RELAYED_ADDRESS).unwrap();
        SocketAddr::new(x.ip, x.port)
    };
    let one = relayed_of(r.send(&again.client, &m.raw).unwrap());
    let two = relayed_of(r.send(&again.client, &m.raw).unwrap());
    assert_eq!(one, two);
    assert_eq!(r.s.stats().allocated_udp, 1, "one allocation for both");
    let mut tcp_relay = Tc::new(Proto::Udp, "198.51.100.2:1000", "bob", NOW_UNIX + 60);
    let first = tcp_relay.request(METHOD_ALLOCATE, &[udp_transport()], false);
    r.ask(&mut tcp_relay, &first);
    let m = tcp_relay.request(
        METHOD_ALLOCATE,
        &[(ATTR_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])],
        true,
    );
    assert_eq!(
        r.ask(&mut tcp_relay, &m),
        442,
        "TCP relaying is not offered"
    );
    // The quota: alice's second allocation is taken, the third refused; once one ends, the
    // next is taken again.
    let mut a2 = Tc::new(Proto::Udp, "198.51.100.1:2000", "alice", NOW_UNIX + 60);
    assert!(r.allocate(&mut a2).is_ok());
    let mut a3 = Tc::new(Proto::Tls, "198.51.100.1:3000", "alice", NOW_UNIX + 60);
    assert_eq!(r.allocate(&mut a3), Err(486));
    assert_eq!(r.s.stats().over_quota, 1);
    let mut out = Vec::new();
    r.s.closed(a.client, &mut out);
    assert!(matches!(out.as_slice(), [Action::Release(_)]), "{out:?}");
    assert!(r.allocate(&mut a3).is_ok());
    let s = r.s.stats();
    assert_eq!(
        (
            s.allocations_udp,
            s.allocations_tcp,
            s.allocations_tls,
            s.allocated_tcp
        ),
        (2, 0, 1, 1)
    );
}

#[test]
fn relays_only_to_the_nodes_media_ports() {
    let mut r = Run::new(4);
    let mut a = Tc::new(Proto::Udp, "198.51.100.1:1000", "alice", NOW_UNIX + 60);
    r.allocate(&mut a).unwrap();
    let media = addr("203.0.113.5:5000");
    let outside = addr("192.0.2.1:5000");
    let other_port = addr("203.0.113.5:22");
    let channel = |n: u16| (ATTR_CHANNEL_NUMBER, vec![(n >> 8) as u8, n as u8, 0, 0]);
    // (method, attributes, code)
    let cases: Vec<(Method, Attrs, u16)> = vec![
        (METHOD_CREATE_PERMISSION, vec![peer_attr(outside)], 403),
        (
            METHOD_CREATE_PERMISSION,
            vec![peer_attr(media), peer_attr(outside)],
            403,
        ),
        (METHOD_CREATE_PERMISSION, vec![], 400),
        (
            METHOD_CHANNEL_BIND,
            vec![channel(0x4000), peer_attr(outside)],
            403,
        ),
        (
            METHOD_CHANNEL_BIND,
            vec![channel(0x4000), peer_attr(other_port)],
            403,
        ),
        (
            METHOD_CHANNEL_BIND,
            vec![channel(0x3fff), peer_attr(media)],
            400,
        ),
        (
            METHOD_CHANNEL_BIND,
            vec![channel(0x5000), peer_attr(media)],
            400,
        ),
        (METHOD_CREATE_PERMISSION, vec![peer_attr(media)], 0),
        (
            METHOD_CHANNEL_BIND,
            vec![channel(0x4001), peer_attr(media)],
            0,
        ),
        // A number stays with its peer, and a peer with its number.
        (
            METHOD_CHANNEL_BIND,
            vec![channel(0x4001), peer_attr(addr("203.0.113.5:5001"))],
            400,
        ),
        (
            METHOD_CHANNEL_BIND,
            vec![channel(0x4002), peer_attr(media)],
            400,
        ),
    ];
    for (i, (method, attrs, want)) in cases.into_iter().enumerate() {
        let m = a.request(method, &attrs, true);
        assert_eq!(r.ask(&mut a, &m), want, "case {i}");
    }
    assert_eq!(r.s.stats().forbidden_peers, 4);
    // Nothing that was refused reaches anyone: a Send indication to the outside is dropped.
    let mut send = Message::new();
    send.typ = MessageType::new(METHOD_SEND, CLASS_INDICATION);
    send.new_transaction_id().unwrap();
    send.write_header();
    let (t, v) = peer_attr(outside);
    send.add(t, &v);
    send.add(ATTR_DATA, b"hello");
    assert!(r.send(&a.client, &send.raw).is_none());
    assert!(r.relays().is_empty());
    assert_eq!(r.s.stats().dropped, 1);
}

#[test]
fn media_both_ways_by_indication_and_channel() {
    let mut r = Run::new(4);
    let mut a = Tc::new(Proto::Tcp, "198.51.100.1:1000", "alice", NOW_UNIX + 60);
    r.allocate(&mut a).unwrap();
    let media = addr("203.0.113.5:5000");
    let m = a.request(METHOD_CREATE_PERMISSION, &[peer_attr(media)], true);
    assert_eq!(r.ask(&mut a, &m), 0);
    // Send indication → a datagram from the relay socket to the media socket's own address.
    let mut send = Message::new();
    send.typ = MessageType::new(METHOD_SEND, CLASS_INDICATION);
    send.new_transaction_id().unwrap();
    send.write_header();
    let (t, v) = peer_attr(media);
    send.add(t, &v);
    send.add(ATTR_DATA, b"stun check");
    r.send(&a.client, &send.raw);
    let relays = r.relays();
    assert_eq!(relays.len(), 1);
    let (relay, to, data) = &relays[0];
    assert_eq!(
        (*to, data.as_slice()),
        (addr("10.0.0.5:5000"), &b"stun check"[..])
    );
    // The worker's answer comes back as a Data indication naming the advertised address.
    let mut out = Vec::new();
    r.s.from_peer(r.now, *relay, addr("10.0.0.5:5000"), b"answer", &mut out);
    let Some(Action::Reply(c, bytes)) = out.pop() else {
        panic!("no reply")
    };
    assert_eq!(c, a.client);
    let mut d = Message::new();
    d.unmarshal_binary(&bytes).unwrap();
    assert_eq!(d.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    assert_eq!(d.get(ATTR_DATA).unwrap(), b"answer");
    let mut x = XorMappedAddress::default();
    x.get_from_as(&d, ATTR_XOR_PEER_ADDRESS).unwrap();
    assert_eq!(SocketAddr::new(x.ip, x.port), media);
    // With a channel: ChannelData each way, padded to 4 bytes on a stream.
    let m = a.request(
        METHOD_CHANNEL_BIND,
        &[
            (ATTR_CHANNEL_NUMBER, vec![0x40, 0x07, 0, 0]),
            peer_attr(media),
        ],
        true,
    );
    assert_eq!(r.ask(&mut a, &m), 0);
    r.send(&a.client, &[0x40, 0x07, 0x00, 0x03, 1, 2, 3, 0]);
    assert_eq!(r.relays()[0].2, vec![1, 2, 3]);
    let mut out = Vec::new();
    r.s.from_peer(
        r.now,
        *relay,
        addr("10.0.0.5:5000"),
        &[9, 9, 9, 9, 9],
        &mut out,
    );
    assert_eq!(
        out,
        vec![Action::Reply(
            a.client,
            vec![0x40, 0x07, 0, 5, 9, 9, 9, 9, 9, 0, 0, 0]
        )]
    );
    // From an address without permission (another port of the node is not a peer): dropped.
    let mut out = Vec::new();
    r.s.from_peer(r.now, *relay, addr("10.0.0.5:22"), b"x", &mut out);
    assert!(out.is_empty());
    // An unbound channel number is dropped.
    r.send(&a.client, &[0x40, 0x08, 0x00, 0x01, 1, 0, 0, 0]);
    assert!(r.relays().is_empty());
}

#[test]
fn lifetimes_refresh_and_expiry() {
    let mut r = Run::new(4);
    let mut a = Tc::new(Proto::Udp, "198.51.100.1:1000", "alice", NOW_UNIX + 7200);
    r.allocate(&mut a).unwrap();
    // Refresh to an hour; after 50 minutes it still stands, after 61 it is gone.
    let m = a.request(
        METHOD_REFRESH,
        &[(ATTR_LIFETIME, 3600u32.to_be_bytes().to_vec())],
        true,
    );
    assert_eq!(r.ask(&mut a, &m), 0);
    let mut out = Vec::new();
    r.s.expire(r.now + Duration::from_secs(3000), &mut out);
    assert!(out.is_empty());
    r.s.expire(r.now + Duration::from_secs(3660), &mut out);
    assert!(matches!(out.as_slice(), [Action::Release(_)]), "{out:?}");
    let m = a.request(METHOD_REFRESH, &[], true);
    assert_eq!(r.ask(&mut a, &m), 437, "no allocation left");
    // A new allocation, ended by the client with LIFETIME 0.
    r.allocate(&mut a).unwrap();
    let m = a.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], true);
    assert_eq!(r.ask(&mut a, &m), 0);
    assert!(r.out.iter().any(|x| matches!(x, Action::Release(_))));
    assert_eq!(r.s.stats().allocations_udp, 0);
    // Credentials that expire while the allocation lives: its refreshes go on; a new
    // allocation with them is refused.
    let mut short = Tc::new(Proto::Udp, "198.51.100.4:1000", "dora", NOW_UNIX + 60);
    r.allocate(&mut short).unwrap();
    r.unix += 700;
    let m = short.request(METHOD_REFRESH, &[], true);
    assert_eq!(r.ask(&mut short, &m), 438, "a new nonce first");
    let m = short.request(METHOD_REFRESH, &[], true);
    assert_eq!(r.ask(&mut short, &m), 0);
    let mut late = Tc::new(Proto::Udp, "198.51.100.4:2000", "dora", NOW_UNIX + 60);
    assert_eq!(r.allocate(&mut late), Err(401));
    // Another user's credentials on this client's 5-tuple: 441.
    r.allocate(&mut a).unwrap();
    let mut b = Tc::new(Proto::Udp, "198.51.100.1:1000", "bob", NOW_UNIX + 7200);
    b.nonce = a.nonce.clone();
    let m = b.request(METHOD_REFRESH, &[], true);
    assert_eq!(r.ask(&mut b, &m), 441);
}

#[test]
fn junk_is_counted_and_never_answered() {
    let mut r = Run::new(4);
    let c = Client {
        proto: Proto::Udp,
        addr: addr("198.51.100.9:9"),
    };
    // (bytes) each dropped without a reply
    let cases: [&[u8]; 5] = [
        b"",
        &[0x40],
        &[0x40, 0x00, 0x00, 0x10, 1],
        &[0x00, 0x01, 0x00, 0x00],
        &[0xff; 40],
    ];
    for (i, bytes) in cases.iter().enumerate() {
        assert!(r.send(&c, bytes).is_none(), "case {i}");
        assert!(r.out.is_empty(), "case {i}");
    }
    assert!(r.s.stats().junk >= 4, "{:?}", r.s.stats());
}

#[test]
fn unauthenticated_udp_answers_are_rate_limited() {
    let mut r = Run::new(4);
    let binding = |port: u16| {
        let mut m = Message::new();
        m.typ = BINDING_REQUEST;
        m.new_transaction_id().unwrap();
        m.write_header();
        (
            Client {
                proto: Proto::Udp,
                addr: SocketAddr::new("192.0.2.50".parse().unwrap(), port),
            },
            m,
        )
    };
    // A spoofed flood at one instant: the burst (two seconds' worth) is answered, no more.
    let answered = (0..1500u16)
        .filter(|p| {
            let (c, m) = binding(1000 + p);
            r.send(&c, &m.raw).is_some()
        })
        .count();
    assert_eq!(answered, 1000);
    assert_eq!(r.s.stats().unanswered, 500);
    // A second later, a second's worth again.
    r.now += Duration::from_secs(1);
    let answered = (0..1000u16)
        .filter(|p| {
            let (c, m) = binding(5000 + p);
            r.send(&c, &m.raw).is_some()
        })
        .count();
    assert_eq!(answered, 500);
    // Over a stream (no spoofing) every request is answered.
    let (mut c, m) = binding(9000);
    c.proto = Proto::Tcp;
    assert!(r.send(&c, &m.raw).is_some());
}
