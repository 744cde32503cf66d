//! The TURN server's state (RFC 8656), without I/O: allocations keyed by the client's transport
//! address, their permissions and channels, credentials and quotas. Input is a message from a
//! client (UDP datagram, or one message cut from a TCP/TLS stream) or a datagram a relay socket
//! received; output is [`Action`]s: bytes for a client, a datagram for a relay socket to send, a
//! relay socket to close. Time comes in as `now` (lifetimes) and `unix` (credential expiry).
//! The one I/O it asks for is a new relay socket, through the `bind` callback of `handle`.
//!
//! Policy: Allocate, Refresh, CreatePermission and ChannelBind need REST credentials
//! ([`super::auth`]); an allocation relays only to this node's own media addresses (403 for any
//! other peer); an identity holds at most `max_per_identity` allocations (486).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc_crypto::RTCCryptoProvider;
use rtc_stun::attributes::*;
use rtc_stun::error_code::*;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::*;
use rtc_stun::textattrs::TextAttribute;
use rtc_stun::xoraddr::XorMappedAddress;
use tracing::debug;

use super::auth::{self, NonceCheck, Nonces, Secret, UsernameError};
use super::wire::{self, allocate_attrs, lifetime, peer_address, Attr, Refusal};
use super::{Action, Client, Proto, TurnPolicy, TurnStats};

/// Allocation lifetime when the client asks none, and the most it may ask.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Permissions last 300 s, channel bindings 600 s (RFC 8656 §9, §12).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// Channel numbers a client may bind (RFC 8656 §12).
const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x4FFF;
/// Permissions and channels one allocation may hold: a client of this node needs one peer per
/// media worker.
const MAX_PEERS: usize = 64;
/// Answers over UDP to requests that did not authenticate (the 401 challenge, Binding) are
/// larger than the requests, so a spoofed source could use them to amplify: at most this many a
/// second (with twice that as a burst) for the whole server.
const UNAUTHENTICATED_PER_SEC: f64 = 500.0;
const PROTO_UDP: u8 = 17;

struct Allocation {
    /// The relay socket's own address (I/O's key) and the one told to the client.
    relay: SocketAddr,
    relayed: SocketAddr,
    username: String,
    identity: String,
    expires: Instant,
    /// The Allocate request that made it: a retransmission is answered again (RFC 8656 §7.2).
    txn: TransactionId,
    permissions: HashMap<IpAddr, Instant>,
    /// Channel number → (peer, expiry).
    channels: HashMap<u16, (SocketAddr, Instant)>,
    /// For each media address sent to, the peer address the client named: what a reply from
    /// it is tagged with (several advertised addresses may stand for one media socket).
    named: HashMap<SocketAddr, SocketAddr>,
}

impl Allocation {
    fn permitted(&self, now: Instant, ip: IpAddr) -> bool {
        self.permissions.get(&ip).is_some_and(|e| *e > now)
    }

    fn channel_of(&self, now: Instant, peer: SocketAddr) -> Option<u16> {
        self.channels
            .iter()
            .find(|(_, (p, e))| *p == peer && *e > now)
            .map(|(n, _)| *n)
    }
}

/// An authenticated request's user, with the key its response is signed with.
struct User {
    username: String,
    identity: String,
    key: Vec<u8>,
}

pub struct TurnServer {
    config: TurnPolicy,
    secret: Secret,
    nonces: Nonces,
    crypto: Arc<dyn RTCCryptoProvider>,
    allocations: HashMap<Client, Allocation>,
    by_relay: HashMap<SocketAddr, Client>,
    per_identity: HashMap<String, usize>,
    /// Each local media address with the advertised ones that stand for it.
    locals: HashMap<SocketAddr, Vec<SocketAddr>>,
    /// Tokens for unauthenticated UDP answers, and when they were last topped up.
    tokens: f64,
    topped: Option<Instant>,
    stats: TurnStats,
}

impl TurnServer {
    /// `nonce_key` should be random per process.
    pub fn new(
        config: TurnPolicy,
        secret: Secret,
        nonce_key: &[u8],
        crypto: Arc<dyn RTCCryptoProvider>,
    ) -> Self {
        let mut locals: HashMap<SocketAddr, Vec<SocketAddr>> = HashMap::new();
        for (peer, local) in &config.peers {
            locals.entry(*local).or_default().push(*peer);
        }
        Self {
            locals,
            tokens: 2.0 * UNAUTHENTICATED_PER_SEC,
            topped: None,
            config,
            secret,
            nonces: Nonces::new(nonce_key),
            crypto,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            per_identity: HashMap::new(),
            stats: TurnStats::default(),
        }
    }

    pub fn stats(&self) -> TurnStats {
        let mut s = self.stats;
        (s.allocations_udp, s.allocations_tcp, s.allocations_tls) = (0, 0, 0);
        for c in self.allocations.keys() {
            *match c.proto {
                Proto::Udp => &mut s.allocations_udp,
                Proto::Tcp => &mut s.allocations_tcp,
                Proto::Tls => &mut s.allocations_tls,
            } += 1;
        }
        s
    }

    pub fn has_allocation(&self, client: Client) -> bool {
        self.allocations.contains_key(&client)
    }

    /// The client whose allocation's relay socket is bound at `relay`.
    pub fn client_of(&self, relay: SocketAddr) -> Option<Client> {
        self.by_relay.get(&relay).copied()
    }

    /// A message from `client`. `bind` opens a relay socket and says its address.
    pub fn handle(
        &mut self,
        now: Instant,
        unix: u64,
        client: Client,
        data: &[u8],
        bind: &mut dyn FnMut() -> std::io::Result<SocketAddr>,
        out: &mut Vec<Action>,
    ) {
        if data.first().is_some_and(|b| b >> 6 == 1) {
            return self.channel_data(now, client, data, out);
        }
        let mut m = Message::new();
        if m.unmarshal_binary(data).is_err() {
            return self.junk(client, "neither STUN nor ChannelData");
        }
        match (m.typ.class, m.typ.method) {
            (CLASS_INDICATION, METHOD_SEND) => self.send_indication(now, client, &m, out),
            (CLASS_INDICATION, _) => {}
            (CLASS_REQUEST, METHOD_BINDING) => {
                let mapped = XorMappedAddress {
                    ip: client.addr.ip(),
                    port: client.addr.port(),
                };
                if self.may_answer(now, client, false) {
                    let r = self.response(&m, CLASS_SUCCESS_RESPONSE, None, &[&mapped]);
                    out.push(Action::Reply(client, r));
                }
            }
            (CLASS_REQUEST, _) => {
                let r = match self.request(now, unix, client, &mut m, bind, out) {
                    Ok(r) => r,
                    Err((refusal, key)) => {
                        if !self.may_answer(now, client, key.is_some()) {
                            return;
                        }
                        self.refuse(unix, client, &m, refusal, key)
                    }
                };
                out.push(Action::Reply(client, r));
            }
            _ => self.junk(client, "a STUN response to a server"),
        }
    }

    /// Whether to answer a request: always on streams and once authenticated; otherwise within
    /// the rate of unauthenticated UDP answers.
    fn may_answer(&mut self, now: Instant, client: Client, authenticated: bool) -> bool {
        if authenticated || client.proto != Proto::Udp {
            return true;
        }
        let since = self
            .topped
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.topped = Some(now);
        self.tokens = (self.tokens + since.as_secs_f64() * UNAUTHENTICATED_PER_SEC)
            .min(2.0 * UNAUTHENTICATED_PER_SEC);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        self.stats.unanswered += 1;
        if self.stats.unanswered.is_power_of_two() {
            debug!(
                unanswered = self.stats.unanswered,
                "TURN: unauthenticated UDP answers over their rate"
            );
        }
        false
    }

    /// A datagram the relay socket at `relay` received from `from`.
    pub fn from_peer(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        out: &mut Vec<Action>,
    ) {
        let Some(client) = self.by_relay.get(&relay).copied() else {
            return;
        };
        let Some(a) = self.allocations.get(&client) else {
            return;
        };
        // Name the peer as the client does: the advertised address this local one stands for.
        let peer = a
            .named
            .get(&from)
            .copied()
            .filter(|p| a.permitted(now, p.ip()))
            .or_else(|| {
                let peers = self.locals.get(&from)?;
                peers.iter().copied().find(|p| a.permitted(now, p.ip()))
            });
        let Some(peer) = peer else {
            self.stats.dropped += 1;
            return;
        };
        self.stats.to_clients += 1;
        let bytes = match a.channel_of(now, peer) {
            Some(n) => {
                let pad = if client.proto == Proto::Udp {
                    0
                } else {
                    (4 - data.len() % 4) % 4
                };
                let mut b = Vec::with_capacity(4 + data.len() + pad);
                b.extend_from_slice(&n.to_be_bytes());
                b.extend_from_slice(&(data.len() as u16).to_be_bytes());
                b.extend_from_slice(data);
                b.resize(4 + data.len() + pad, 0);
                b
            }
            None => {
                let mut m = Message::new();
                m.typ = MessageType::new(METHOD_DATA, CLASS_INDICATION);
                let _ = m.new_transaction_id();
                m.write_header();
                let xor = XorMappedAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                };
                let _ = xor.add_to_as(&mut m, ATTR_XOR_PEER_ADDRESS);
                m.add(ATTR_DATA, data);
                m.raw
            }
        };
        out.push(Action::Reply(client, bytes));
    }

    /// Drops what has expired: allocations (their relay sockets released), permissions and
    /// channels.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Action>) {
        let dead: Vec<Client> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in dead {
            self.remove(c, out);
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, e| *e > now);
            a.channels.retain(|_, (_, e)| *e > now);
        }
    }

    /// The client's connection closed (TCP, TLS): its allocation goes with it (RFC 8656 §3.1).
    pub fn closed(&mut self, client: Client, out: &mut Vec<Action>) {
        self.remove(client, out);
    }

    fn remove(&mut self, client: Client, out: &mut Vec<Action>) {
        let Some(a) = self.allocations.remove(&client) else {
            return;
        };
        self.by_relay.remove(&a.relay);
        if let Some(n) = self.per_identity.get_mut(&a.identity) {
            *n -= 1;
            if *n == 0 {
                self.per_identity.remove(&a.identity);
            }
        }
        debug!(client = %client.addr, proto = ?client.proto, relay = %a.relayed, "TURN allocation ended");
        out.push(Action::Release(a.relay));
    }

    fn junk(&mut self, client: Client, why: &'static str) {
        self.stats.junk += 1;
        if self.stats.junk.is_power_of_two() {
            debug!(client = %client.addr, why, junk = self.stats.junk, "TURN message dropped");
        }
    }

    fn request(
        &mut self,
        now: Instant,
        unix: u64,
        client: Client,
        m: &mut Message,
        bind: &mut dyn FnMut() -> std::io::Result<SocketAddr>,
        out: &mut Vec<Action>,
    ) -> Result<Vec<u8>, (Refusal, Option<Vec<u8>>)> {
        let method = m.typ.method;
        if ![
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ]
        .contains(&method)
        {
            return Err((Refusal::Bad, None));
        }
        let user = self.authenticate(unix, client, m)?;
        let key = Some(user.key.clone());
        if let Some(a) = self.allocations.get(&client) {
            if a.username != user.username {
                return Err((Refusal::WrongCredentials, key));
            }
        }
        let done = match method {
            METHOD_ALLOCATE => self.allocate(now, client, m, user, bind),
            METHOD_REFRESH => self.refresh(now, client, m, out),
            METHOD_CREATE_PERMISSION => self.permit(now, client, m),
            _ => self.bind_channel(now, client, m),
        };
        match done {
            Ok(attrs) => {
                let setters: Vec<&dyn Setter> = attrs.iter().map(|a| a as &dyn Setter).collect();
                Ok(self.response(m, CLASS_SUCCESS_RESPONSE, key.as_deref(), &setters))
            }
            Err(r) => Err((r, key)),
        }
    }

    /// Checks the long-term credentials of a request (RFC 8489 §9.2).
    fn authenticate(
        &mut self,
        unix: u64,
        client: Client,
        m: &mut Message,
    ) -> Result<User, (Refusal, Option<Vec<u8>>)> {
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            return Err((Refusal::Challenge, None));
        }
        let text = |a| TextAttribute::get_from_as(m, a).map(|t| t.text);
        let (Ok(username), Ok(realm), Ok(nonce)) =
            (text(ATTR_USERNAME), text(ATTR_REALM), text(ATTR_NONCE))
        else {
            return Err((Refusal::Bad, None));
        };
        if realm != self.config.realm {
            return Err((Refusal::BadCredentials, None));
        }
        // Credentials must be valid when the allocation is made; the allocation then lives on
        // with its refreshes, whatever the username's expiry.
        let held = self
            .allocations
            .get(&client)
            .is_some_and(|a| a.username == username);
        let identity = match auth::identity(&username, unix) {
            Ok(i) => i.to_owned(),
            Err(UsernameError::Expired) if held => {
                username.split_once(':').map_or("", |(_, i)| i).to_owned()
            }
            Err(UsernameError::Expired) => return Err((Refusal::Expired, None)),
            Err(UsernameError::Malformed) => return Err((Refusal::BadCredentials, None)),
        };
        let password = self.secret.password(&username);
        let crypto = self.crypto.crypto();
        let key =
            MessageIntegrity::long_term_integrity_key(username.clone(), realm, password, crypto)
                .map_err(|_| (Refusal::BadCredentials, None))?;
        MessageIntegrity::check(m, &key, crypto).map_err(|_| (Refusal::BadCredentials, None))?;
        // The sender knows the password: a nonce that is old, or not ours (a restart), gets
        // 438 and a new one, answered whatever the rate of unauthenticated answers.
        if self.nonces.check(&nonce, client.addr, unix) != NonceCheck::Fresh {
            return Err((Refusal::Stale, Some(key)));
        }
        Ok(User {
            username,
            identity,
            key,
        })
    }

    fn allocate(
        &mut self,
        now: Instant,
        client: Client,
        m: &Message,
        user: User,
        bind: &mut dyn FnMut() -> std::io::Result<SocketAddr>,
    ) -> Result<Vec<Attr>, Refusal> {
        if let Some(a) = self.allocations.get(&client) {
            if a.txn != m.transaction_id {
                return Err(Refusal::Mismatch);
            }
            let left = a.expires.saturating_duration_since(now);
            return Ok(allocate_attrs(a.relayed, client.addr, left));
        }
        let transport = m.get(ATTR_REQUESTED_TRANSPORT).map_err(|_| Refusal::Bad)?;
        if transport.first() != Some(&PROTO_UDP) {
            return Err(Refusal::Transport);
        }
        if m.contains(ATTR_EVEN_PORT) || m.contains(ATTR_RESERVATION_TOKEN) {
            return Err(Refusal::Bad);
        }
        if let Ok(family) = m.get(ATTR_REQUESTED_ADDRESS_FAMILY) {
            let want_v6 = family.first() == Some(&2);
            if want_v6 != self.config.relayed_ip.is_ipv6() {
                return Err(Refusal::Family);
            }
        }
        let held = self.per_identity.get(&user.identity).copied().unwrap_or(0);
        if held >= self.config.max_per_identity {
            return Err(Refusal::Quota);
        }
        if self.allocations.len() >= self.config.max_allocations {
            return Err(Refusal::Capacity);
        }
        let relay = bind().map_err(|_| Refusal::Capacity)?;
        let relayed = SocketAddr::new(self.config.relayed_ip, relay.port());
        let lifetime = lifetime(m);
        *self.per_identity.entry(user.identity.clone()).or_default() += 1;
        *match client.proto {
            Proto::Udp => &mut self.stats.allocated_udp,
            Proto::Tcp => &mut self.stats.allocated_tcp,
            Proto::Tls => &mut self.stats.allocated_tls,
        } += 1;
        debug!(client = %client.addr, proto = ?client.proto, identity = %user.identity, relay = %relayed, "TURN allocation");
        self.by_relay.insert(relay, client);
        self.allocations.insert(
            client,
            Allocation {
                relay,
                relayed,
                username: user.username,
                identity: user.identity,
                expires: now + lifetime,
                txn: m.transaction_id,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                named: HashMap::new(),
            },
        );
        Ok(allocate_attrs(relayed, client.addr, lifetime))
    }

    fn refresh(
        &mut self,
        now: Instant,
        client: Client,
        m: &Message,
        out: &mut Vec<Action>,
    ) -> Result<Vec<Attr>, Refusal> {
        if !self.allocations.contains_key(&client) {
            return Err(Refusal::Mismatch);
        }
        let lifetime = lifetime(m);
        if m.get(ATTR_LIFETIME).is_ok_and(|v| v == [0, 0, 0, 0]) {
            self.remove(client, out);
            return Ok(vec![Attr::Lifetime(Duration::ZERO)]);
        }
        if let Some(a) = self.allocations.get_mut(&client) {
            a.expires = now + lifetime;
        }
        Ok(vec![Attr::Lifetime(lifetime)])
    }

    fn permit(&mut self, now: Instant, client: Client, m: &Message) -> Result<Vec<Attr>, Refusal> {
        let relayed_v6 = self.config.relayed_ip.is_ipv6();
        let a = self.allocations.get(&client).ok_or(Refusal::Mismatch)?;
        let mut ips = Vec::new();
        for attr in m
            .attributes
            .0
            .iter()
            .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        {
            let mut one = Message::new();
            one.write_header();
            one.add(ATTR_XOR_PEER_ADDRESS, &attr.value);
            one.transaction_id = m.transaction_id;
            let peer = peer_address(&one).ok_or(Refusal::Bad)?;
            if peer.is_ipv6() != relayed_v6 {
                return Err(Refusal::Family);
            }
            if !self.config.peers.keys().any(|p| p.ip() == peer.ip()) {
                return Err(self.forbidden(client, peer));
            }
            ips.push(peer.ip());
        }
        if ips.is_empty() {
            return Err(Refusal::Bad);
        }
        if a.permissions.len() + ips.len() > MAX_PEERS
            && ips.iter().any(|ip| !a.permissions.contains_key(ip))
        {
            return Err(Refusal::Capacity);
        }
        let a = self.allocations.get_mut(&client).ok_or(Refusal::Mismatch)?;
        for ip in ips {
            a.permissions.insert(ip, now + PERMISSION_LIFETIME);
        }
        Ok(Vec::new())
    }

    fn bind_channel(
        &mut self,
        now: Instant,
        client: Client,
        m: &Message,
    ) -> Result<Vec<Attr>, Refusal> {
        let number = m
            .get(ATTR_CHANNEL_NUMBER)
            .ok()
            .filter(|v| v.len() == 4)
            .map(|v| u16::from_be_bytes([v[0], v[1]]))
            .filter(|n| CHANNELS.contains(n))
            .ok_or(Refusal::Bad)?;
        let peer = peer_address(m).ok_or(Refusal::Bad)?;
        if !self.allocations.contains_key(&client) {
            return Err(Refusal::Mismatch);
        }
        if peer.is_ipv6() != self.config.relayed_ip.is_ipv6() {
            return Err(Refusal::Family);
        }
        if !self.config.peers.contains_key(&peer) {
            return Err(self.forbidden(client, peer));
        }
        let a = self.allocations.get_mut(&client).ok_or(Refusal::Mismatch)?;
        // A number stays with its peer, and a peer with its number (RFC 8656 §12.2).
        if a.channels.get(&number).is_some_and(|(p, _)| *p != peer)
            || a.channels
                .iter()
                .any(|(n, (p, _))| *p == peer && *n != number)
        {
            return Err(Refusal::Bad);
        }
        if !a.channels.contains_key(&number) && a.channels.len() >= MAX_PEERS {
            return Err(Refusal::Capacity);
        }
        a.channels.insert(number, (peer, now + CHANNEL_LIFETIME));
        a.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        Ok(Vec::new())
    }

    fn forbidden(&mut self, client: Client, peer: SocketAddr) -> Refusal {
        self.stats.forbidden_peers += 1;
        if self.stats.forbidden_peers.is_power_of_two() {
            debug!(client = %client.addr, %peer, refused = self.stats.forbidden_peers, "TURN peer outside this node refused");
        }
        Refusal::Forbidden
    }

    fn send_indication(
        &mut self,
        now: Instant,
        client: Client,
        m: &Message,
        out: &mut Vec<Action>,
    ) {
        let (Some(peer), Ok(data)) = (peer_address(m), m.get(ATTR_DATA)) else {
            return self.junk(client, "Send indication without a peer or data");
        };
        self.relay(now, client, peer, data, out);
    }

    fn channel_data(&mut self, now: Instant, client: Client, data: &[u8], out: &mut Vec<Action>) {
        if data.len() < 4 {
            return self.junk(client, "short ChannelData");
        }
        let number = u16::from_be_bytes([data[0], data[1]]);
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        // On streams a message may carry its padding; over UDP it may not be shorter.
        let Some(payload) = data.get(4..4 + len) else {
            return self.junk(client, "ChannelData shorter than its length");
        };
        let peer = self
            .allocations
            .get(&client)
            .and_then(|a| a.channels.get(&number).filter(|(_, e)| *e > now))
            .map(|(p, _)| *p);
        match peer {
            Some(peer) => self.relay(now, client, peer, payload.to_vec(), out),
            None => self.stats.dropped += 1,
        }
    }

    fn relay(
        &mut self,
        now: Instant,
        client: Client,
        peer: SocketAddr,
        data: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let target = self.config.peers.get(&peer).copied();
        let a = self.allocations.get_mut(&client);
        match (a, target) {
            (Some(a), Some(to)) if a.permitted(now, peer.ip()) => {
                self.stats.to_peers += 1;
                // Bounded: one entry per media address.
                a.named.insert(to, peer);
                out.push(Action::Relay {
                    relay: a.relay,
                    to,
                    data,
                });
            }
            _ => self.stats.dropped += 1,
        }
    }

    /// An error response; 401 and 438 carry REALM and a new NONCE, and responses to
    /// authenticated requests MESSAGE-INTEGRITY.
    fn refuse(
        &mut self,
        unix: u64,
        client: Client,
        m: &Message,
        refusal: Refusal,
        key: Option<Vec<u8>>,
    ) -> Vec<u8> {
        let counter = match refusal {
            Refusal::Challenge | Refusal::Forbidden => None,
            Refusal::BadCredentials | Refusal::WrongCredentials => {
                Some(&mut self.stats.bad_credentials)
            }
            Refusal::Expired => Some(&mut self.stats.expired_credentials),
            Refusal::Stale => Some(&mut self.stats.stale_nonces),
            Refusal::Quota => Some(&mut self.stats.over_quota),
            Refusal::Capacity => Some(&mut self.stats.at_capacity),
            Refusal::Mismatch | Refusal::Transport | Refusal::Family | Refusal::Bad => {
                Some(&mut self.stats.bad_requests)
            }
        };
        if let Some(c) = counter {
            *c += 1;
            if c.is_power_of_two() {
                debug!(client = %client.addr, code = refusal.code().0, reason = refusal.reason(), count = *c, "TURN request refused");
            }
        }
        let error = ErrorCodeAttribute {
            code: refusal.code(),
            reason: refusal.reason().as_bytes().to_vec(),
        };
        if refusal.challenges() {
            let realm = TextAttribute::new(ATTR_REALM, self.config.realm.clone());
            let nonce = TextAttribute::new(ATTR_NONCE, self.nonces.make(client.addr, unix));
            self.response(m, CLASS_ERROR_RESPONSE, None, &[&error, &realm, &nonce])
        } else {
            self.response(m, CLASS_ERROR_RESPONSE, key.as_deref(), &[&error])
        }
    }

    fn response(
        &self,
        req: &Message,
        class: MessageClass,
        key: Option<&[u8]>,
        attrs: &[&dyn Setter],
    ) -> Vec<u8> {
        wire::response(req, class, key, attrs, self.crypto.crypto())
    }
}
