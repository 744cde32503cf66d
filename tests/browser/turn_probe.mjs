// A hostile TURN client (RFC 8656) for turn.test.mjs: against the TURN server at HOST:PORT over
// UDP it sends junk, then Allocate requests without credentials, with expired ones and with a
// wrong password, then allocates with the credentials the WHIP endpoint hands out (OPTIONS,
// Link rel="ice-server") and asks to relay to an address outside the node, by CreatePermission
// and by ChannelBind. Prints the response codes as JSON.
// Usage: node turn_probe.mjs HOST PORT WHIP_URL
import dgram from 'node:dgram';
import { createHash, createHmac, randomBytes } from 'node:crypto';

const [host, port, whip] = process.argv.slice(2);
const COOKIE = 0x2112a442;
const T = { USERNAME: 0x0006, MI: 0x0008, ERROR: 0x0009, REALM: 0x0014, NONCE: 0x0015, PEER: 0x0012, TRANSPORT: 0x0019, CHANNEL: 0x000c };
const M = { ALLOCATE: 0x003, PERMISSION: 0x008, CHANNEL_BIND: 0x009 };

function attr(type, value) {
  const pad = (4 - (value.length % 4)) % 4;
  const b = Buffer.alloc(4 + value.length + pad);
  b.writeUInt16BE(type, 0);
  b.writeUInt16BE(value.length, 2);
  value.copy(b, 4);
  return b;
}

function peer(ip, p) {
  const v = Buffer.alloc(8);
  v.writeUInt8(1, 1);
  v.writeUInt16BE(p ^ (COOKIE >>> 16), 2);
  const parts = ip.split('.').map(Number);
  v.writeUInt32BE((((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) ^ COOKIE) >>> 0, 4);
  return attr(T.PEER, v);
}

/** A request of `method` with `attrs`; with `key`, MESSAGE-INTEGRITY last. */
function request(method, attrs, key) {
  const body = Buffer.concat(attrs);
  const head = Buffer.alloc(20);
  head.writeUInt16BE(method, 0);
  head.writeUInt32BE(COOKIE, 4);
  randomBytes(12).copy(head, 8);
  if (!key) {
    head.writeUInt16BE(body.length, 2);
    return Buffer.concat([head, body]);
  }
  head.writeUInt16BE(body.length + 24, 2);
  const mac = createHmac('sha1', key).update(Buffer.concat([head, body])).digest();
  return Buffer.concat([head, body, attr(T.MI, mac)]);
}

function parse(b) {
  const out = { cls: ((b[0] & 0x01) << 1) | ((b[1] & 0x10) >> 4), attrs: {} };
  let i = 20;
  while (i + 4 <= b.length) {
    const type = b.readUInt16BE(i);
    const len = b.readUInt16BE(i + 2);
    out.attrs[type] = b.subarray(i + 4, i + 4 + len);
    i += 4 + len + ((4 - (len % 4)) % 4);
  }
  const e = out.attrs[T.ERROR];
  out.code = e ? e[2] * 100 + e[3] : 200;
  return out;
}

const sock = dgram.createSocket('udp4');
await new Promise((r) => sock.bind(0, r));
function exchange(msg) {
  return new Promise((resolve) => {
    const t = setTimeout(() => { sock.removeAllListeners('message'); resolve({ code: 0, attrs: {} }); }, 2000);
    sock.once('message', (b) => { clearTimeout(t); resolve(parse(b)); });
    sock.send(msg, Number(port), host);
  });
}

const res = await fetch(whip, { method: 'OPTIONS' });
const link = (res.headers.get('Link') || '').split(/,(?=\s*<)/).find((l) => l.includes('transport=udp'));
if (!link) throw new Error(`no TURN/UDP Link header: ${res.headers.get('Link')}`);
const username = /username="([^"]*)"/.exec(link)[1];
const credential = /credential="([^"]*)"/.exec(link)[1];
const udp = attr(T.TRANSPORT, Buffer.from([17, 0, 0, 0]));
const codes = {};

sock.send(Buffer.from('not a TURN message at all'), Number(port), host);
const challenge = await exchange(request(M.ALLOCATE, [udp]));
codes.challenge = challenge.code;
const realm = challenge.attrs[T.REALM].toString();
const nonce = challenge.attrs[T.NONCE].toString();
const key = (u, p) => createHash('md5').update(`${u}:${realm}:${p}`).digest();
const auth = (u) => [attr(T.USERNAME, Buffer.from(u)), attr(T.REALM, Buffer.from(realm)), attr(T.NONCE, Buffer.from(nonce))];

const expired = `${Math.floor(Date.now() / 1000) - 60}:${username.split(':').slice(1).join(':')}`;
codes.expired = (await exchange(request(M.ALLOCATE, [udp, ...auth(expired)], key(expired, credential)))).code;
codes.wrongPassword = (await exchange(request(M.ALLOCATE, [udp, ...auth(username)], key(username, 'guessed')))).code;
const k = key(username, credential);
codes.allocate = (await exchange(request(M.ALLOCATE, [udp, ...auth(username)], k))).code;
codes.outsidePermission = (await exchange(request(M.PERMISSION, [peer('192.0.2.1', 9), ...auth(username)], k))).code;
const channel = attr(T.CHANNEL, Buffer.from([0x40, 0x01, 0, 0]));
codes.outsideChannel = (await exchange(request(M.CHANNEL_BIND, [channel, peer('192.0.2.1', 9), ...auth(username)], k))).code;
console.log(JSON.stringify(codes));
sock.close();
