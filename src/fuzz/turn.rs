//! The stateful target for the TURN server: four clients (over UDP, TCP and TLS, one identity)
//! send raw bytes, signed Allocate, Refresh, CreatePermission and ChannelBind requests, Send
//! indications and ChannelData with fields from the input; relay sockets receive datagrams;
//! connections close and time passes, in any order the input says.
//!
//! Oracles: every reply to a client is a STUN message or ChannelData whose length is right; every
//! datagram relayed goes to one of the node's media addresses (never elsewhere: the server is not
//! an open relay) from a relay socket the server holds; a relay socket is released once, and only
//! one that was bound; the identity never holds more allocations than its quota; and once every
//! client has gone and two hours have passed, nothing is left.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rtc_stun::attributes::*;
use rtc_stun::message::*;

use crate::transport::turn::auth::Secret;
use crate::transport::turn::request::{message, outcome, peer_value, Creds};
use crate::transport::turn::{Action, Client, Proto, TurnPolicy, TurnServer};

const QUOTA: usize = 3;
const REALM: &str = "volna";

pub fn turn(data: &[u8]) {
    let Ok(crypto) = rtc_crypto::default_provider() else {
        return;
    };
    let local = |p: u16| SocketAddr::new(IpAddr::from([10, 0, 0, 5]), p);
    let advertised = |p: u16| SocketAddr::new(IpAddr::from([203, 0, 113, 5]), p);
    let peers: HashMap<SocketAddr, SocketAddr> =
        [5000, 5001].map(|p| (advertised(p), local(p))).into();
    let targets: HashSet<SocketAddr> = peers.values().copied().collect();
    let policy = TurnPolicy {
        realm: REALM.into(),
        max_per_identity: QUOTA,
        max_allocations: 100,
        peers,
        relayed_ip: IpAddr::from([203, 0, 113, 5]),
    };
    let secret = Secret::new(b"fuzz-secret-0123456");
    let mut s = TurnServer::new(policy, secret.clone(), b"nonce", crypto.clone());
    let unix = 1_800_000_000u64;
    let creds = secret.mint("fuzz", unix + 3600);
    let clients: [Client; 4] = [
        (Proto::Udp, 1000),
        (Proto::Udp, 1001),
        (Proto::Tcp, 1002),
        (Proto::Tls, 1003),
    ]
    .map(|(proto, port)| Client {
        proto,
        addr: SocketAddr::new(IpAddr::from([198, 51, 100, 1]), port),
    });
    let mut nonces: [String; 4] = Default::default();
    let mut bound: HashSet<SocketAddr> = HashSet::new();
    let mut relay_of: HashMap<Client, SocketAddr> = HashMap::new();
    let mut next_port = 40000u16;
    let mut now = Instant::now();
    let mut elapsed = 0u64;
    let mut out = Vec::new();
    let mut i = 0;
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    while i < data.len() {
        let op = byte(i);
        let k = usize::from(op >> 4) % clients.len();
        let c = clients[k];
        let len = usize::from(byte(i + 1) % 64);
        let body = data
            .get(i + 2..(i + 2 + len).min(data.len()))
            .unwrap_or(&[]);
        i += 2 + len;
        let b = |j: usize| body.get(j).copied().unwrap_or(0);
        let peer = if b(0) & 1 == 0 {
            advertised(5000 + u16::from(b(0) >> 1 & 1))
        } else {
            SocketAddr::new(
                IpAddr::from([b(1), b(2), b(3), b(4)]),
                u16::from_be_bytes([b(5), b(6)]),
            )
        };
        let txn = {
            let mut t = [0u8; 12];
            t[..8].copy_from_slice(&(i as u64).to_be_bytes());
            t
        };
        let signed = Creds {
            username: &creds.username,
            password: &creds.credential,
            realm: REALM,
            nonce: &nonces[k],
        };
        let request = |method: Method, attrs: &[(AttrType, Vec<u8>)], sign: bool| {
            let typ = MessageType::new(method, CLASS_REQUEST);
            message(typ, txn, attrs, sign.then_some(&signed), crypto.as_ref()).raw
        };
        let bytes: Option<Vec<u8>> = match op & 0x0f {
            0 => Some(body.to_vec()),
            1 => Some(request(
                METHOD_ALLOCATE,
                &[(
                    ATTR_REQUESTED_TRANSPORT,
                    vec![if b(0) & 2 == 0 { 17 } else { b(1) }, 0, 0, 0],
                )],
                b(0) & 4 == 0,
            )),
            2 => Some(request(
                METHOD_CREATE_PERMISSION,
                &[(ATTR_XOR_PEER_ADDRESS, peer_value(peer))],
                true,
            )),
            3 => Some(request(
                METHOD_CHANNEL_BIND,
                &[
                    (ATTR_CHANNEL_NUMBER, vec![0x40 | (b(7) & 0x3f), b(8), 0, 0]),
                    (ATTR_XOR_PEER_ADDRESS, peer_value(peer)),
                ],
                true,
            )),
            4 => Some(request(
                METHOD_REFRESH,
                &[(
                    ATTR_LIFETIME,
                    body.get(..4).unwrap_or(&[0, 0, 2, 88]).to_vec(),
                )],
                true,
            )),
            5 => {
                let typ = MessageType::new(METHOD_SEND, CLASS_INDICATION);
                let attrs = [
                    (ATTR_XOR_PEER_ADDRESS, peer_value(peer)),
                    (ATTR_DATA, body.to_vec()),
                ];
                Some(message(typ, txn, &attrs, None, crypto.as_ref()).raw)
            }
            6 => {
                let mut cd = vec![0x40, b(0) & 0x0f, 0, len as u8];
                cd.extend_from_slice(body);
                Some(cd)
            }
            7 => {
                if let Some(relay) = relay_of.get(&c) {
                    let from = if b(0) & 1 == 0 {
                        local(5000 + u16::from(b(0) >> 1 & 1))
                    } else {
                        peer
                    };
                    out.clear();
                    s.from_peer(now, *relay, from, body, &mut out);
                    check(&out, &clients, &targets, &bound);
                }
                None
            }
            8 => {
                let secs = u64::from(u16::from_be_bytes([b(0), b(1)]) % 1200);
                now += Duration::from_secs(secs);
                elapsed += secs;
                out.clear();
                s.expire(now, &mut out);
                release(&out, &mut bound, &mut relay_of);
                None
            }
            9 => {
                out.clear();
                s.closed(c, &mut out);
                release(&out, &mut bound, &mut relay_of);
                None
            }
            _ => None,
        };
        let Some(bytes) = bytes else { continue };
        out.clear();
        let port = &mut next_port;
        let mut fresh = None;
        let mut bind = || {
            *port = port.wrapping_add(1);
            let a = SocketAddr::new(IpAddr::from([10, 0, 0, 5]), *port);
            fresh = Some(a);
            Ok(a)
        };
        s.handle(now, unix + elapsed, c, &bytes, &mut bind, &mut out);
        if let Some(a) = fresh {
            assert!(bound.insert(a), "a relay socket bound twice");
            relay_of.insert(c, a);
        }
        check(&out, &clients, &targets, &bound);
        for a in &out {
            if let Action::Reply(to, r) = a {
                if let Some((_, Some(n))) = outcome(r) {
                    let j = clients.iter().position(|x| x == to).unwrap_or(0);
                    nonces[j] = n;
                }
            }
        }
        release(&out, &mut bound, &mut relay_of);
        let st = s.stats();
        assert!(
            st.allocations_udp + st.allocations_tcp + st.allocations_tls <= QUOTA,
            "over the quota"
        );
    }
    // Everyone leaves; two hours on, nothing is held.
    for c in clients {
        out.clear();
        s.closed(c, &mut out);
        release(&out, &mut bound, &mut relay_of);
    }
    out.clear();
    s.expire(now + Duration::from_secs(7200), &mut out);
    release(&out, &mut bound, &mut relay_of);
    let st = s.stats();
    assert_eq!(
        st.allocations_udp + st.allocations_tcp + st.allocations_tls,
        0
    );
    assert!(bound.is_empty(), "relay sockets never released: {bound:?}");
}

/// Replies are STUN or whole ChannelData; datagrams go only to the node's media addresses from
/// a bound relay socket.
fn check(
    out: &[Action],
    clients: &[Client],
    targets: &HashSet<SocketAddr>,
    bound: &HashSet<SocketAddr>,
) {
    for a in out {
        match a {
            Action::Reply(to, r) => {
                assert!(clients.contains(to), "a reply to a stranger");
                if r.first().is_some_and(|b| b >> 6 == 1) {
                    let len = usize::from(u16::from_be_bytes([r[2], r[3]]));
                    let padded = if to.proto == Proto::Udp {
                        4 + len
                    } else {
                        4 + len.div_ceil(4) * 4
                    };
                    assert_eq!(r.len(), padded, "ChannelData length");
                } else {
                    let mut m = Message::new();
                    m.unmarshal_binary(r).expect("a reply parses as STUN");
                }
            }
            Action::Relay { relay, to, .. } => {
                assert!(targets.contains(to), "relayed to {to}: an open relay");
                assert!(bound.contains(relay), "sent from a relay socket not held");
            }
            Action::Release(_) => {}
        }
    }
}

fn release(
    out: &[Action],
    bound: &mut HashSet<SocketAddr>,
    relay_of: &mut HashMap<Client, SocketAddr>,
) {
    for a in out {
        if let Action::Release(r) = a {
            assert!(bound.remove(r), "released a relay socket not held");
            relay_of.retain(|_, v| v != r);
        }
    }
}
