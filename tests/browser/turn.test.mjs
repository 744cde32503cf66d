// The strictest networks: Chromium in a namespace whose nftables pass nothing to the relay but
// TCP to its HTTP port and to its TURN-over-TLS port. A WHIP→WHEP call whose pages take the ICE
// servers from the endpoints' Link headers (RFC 9725 §4.6), and a demo-page room call (ICE
// servers from `joined`), connect through the embedded TURN server over TLS and decode. While
// the call runs, a hostile TURN client sends junk, bad and expired credentials and asks to
// relay outside the node: each is refused (401, 403) and counted, and the call goes on.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Netns, isRoot, startVolna, startPages, launchChromium, openPage, relayStats, waitFor, localCandidate } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const RELAY = '10.79.0.1';
const HTTP_PORT = 18150;
const HTTP = `${RELAY}:${HTTP_PORT}`;
const MEDIA = `${RELAY}:15070`;
// Chromium refuses TURN servers on private addresses at 443: the test's TLS port is 5349.
const TURN_UDP = 3478;
const TURN_TLS = 5349;
const PAGES = 'http://127.0.0.1:18151';
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let relay, client, browser;

before(async () => {
  if (skip) return;
  relay = new Netns('turnr');
  client = new Netns('turnc');
  relay.link(client, { devA: 'ur0', devB: 'uc0', a: RELAY, b: '10.79.0.2' });
  const config = join(relay.tempDir(), 'turn.toml');
  writeFileSync(config, `[turn]
enabled = true
udp = "${RELAY}:${TURN_UDP}"
tcp = "${RELAY}:${TURN_UDP}"
tls = "${RELAY}:${TURN_TLS}"
`);
  await startVolna(relay, { http: HTTP, media: MEDIA, extra: ['--config', config] });
  await startPages(client, PAGES.slice(7));
  const rules = join(client.tempDir(), 'only-tls.nft');
  writeFileSync(rules, `table inet volna_only_tls {
  chain out {
    type filter hook output priority 0;
    ip daddr ${RELAY} tcp dport { ${HTTP_PORT}, ${TURN_TLS} } accept
    ip daddr ${RELAY} counter drop
  }
}
`);
  client.exec(['nft', '-f', rules]);
  // The TURN server's certificate is self-signed (turn.tls_cert unset).
  browser = await launchChromium(client, {
    args: [`--unsafely-treat-insecure-origin-as-secure=http://${HTTP}`, '--ignore-certificate-errors'],
  });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (client) await client.cleanup();
  if (relay) await relay.cleanup();
});

/** `expr`'s chosen local candidate: its type and, for a relay, the way to TURN. */
const relayOf = async (page, expr) => {
  const c = await localCandidate(page, expr);
  return c && { type: c.type, relayProtocol: c.relayProtocol };
};

const decodes = (viewer, frames) => waitFor(async () => {
  const s = await viewer.evaluate(() => window.inbound());
  return s.framesDecoded >= frames && s.audioPackets >= 100 ? s : null;
}, 30000, 250);

test('only TLS to the TURN port: calls connect through TURN/TLS; bad TURN requests are refused and counted', { skip, timeout: 180000 }, async () => {
  const pub = await openPage(browser, PAGES);
  const viewer = await openPage(browser, PAGES);
  const whip = `http://${HTTP}/whip/strict`;
  const whep = `http://${HTTP}/whep/strict`;
  for (const [page, url] of [[pub, whip], [viewer, whep]]) {
    const servers = await page.evaluate((u) => window.linkIceServers(u), url);
    assert.ok(servers.some((s) => s.urls.startsWith(`turns:${RELAY}:${TURN_TLS}`) && s.username && s.credential), JSON.stringify(servers));
    await page.evaluate((s) => { window.rtcConfig = { iceServers: s }; window.gatherCapMs = 1000; }, servers);
  }
  const start = Date.now();
  await pub.evaluate((u) => window.publish(u), whip);
  await viewer.evaluate((u) => window.view(u), whep);
  const first = await decodes(viewer, 30);
  assert.ok(first, `decodes through TURN: ${JSON.stringify(await viewer.evaluate(() => window.inbound()))}`);
  console.log(`WHIP→WHEP through TURN/TLS: 30 frames after ${Date.now() - start} ms`);
  for (const p of [pub, viewer]) {
    assert.deepEqual(await relayOf(p, 'window.pc'), { type: 'relay', relayProtocol: 'tls' });
  }
  const dropped = client.exec(['nft', 'list', 'table', 'inet', 'volna_only_tls']);
  assert.match(dropped, /counter packets [1-9]/, 'the block dropped what the browser tried besides TLS');
  let stats = await relayStats(viewer, HTTP);
  assert.ok(stats.transports.turn_tls >= 2, `sessions through TURN/TLS: ${JSON.stringify(stats.transports)}`);
  assert.ok(stats.turn.allocated_tls >= 2, JSON.stringify(stats.turn));

  // The hostile client, from the relay's own namespace over UDP, while the call runs.
  const before = (await viewer.evaluate(() => window.inbound())).framesDecoded;
  const out = relay.exec(['node', join(here, 'turn_probe.mjs'), RELAY, String(TURN_UDP), `http://${HTTP}/whip/probe`]);
  const codes = JSON.parse(out.trim().split('\n').pop());
  assert.deepEqual(codes, {
    challenge: 401, expired: 401, wrongPassword: 401, allocate: 200, outsidePermission: 403, outsideChannel: 403,
  });
  stats = await waitFor(async () => {
    const s = await relayStats(viewer, HTTP);
    return s.turn.forbidden_peers >= 2 && s.turn.junk >= 1 ? s : null;
  }, 5000, 250);
  assert.ok(stats, 'the refusals are counted');
  assert.ok(stats.turn.expired_credentials >= 1 && stats.turn.bad_credentials >= 1, JSON.stringify(stats.turn));
  const after = await waitFor(async () => {
    const s = await viewer.evaluate(() => window.inbound());
    return s.framesDecoded >= before + 30 ? s : null;
  }, 10000, 250);
  assert.ok(after, 'the call goes on');
  await pub.close();
  await viewer.close();

  // The demo page: ICE servers from `joined`. Ada and Bo call; Bo leaves and comes back on a new
  // page; each time both decode the other through TURN/TLS.
  const joinRoom = async (name) => {
    const p = await browser.newPage();
    await p.goto(`http://${HTTP}/?room=strict-room`);
    await p.evaluate((n) => window.app.join('strict-room', n), name);
    return p;
  };
  const decodesOther = async (p, who) => {
    const ok = await waitFor(async () => {
      const list = await p.evaluate(() => window.app.inbound());
      const v = list.find((t) => t.kind === 'video' && t.framesDecoded >= 30);
      const a = list.find((t) => t.kind === 'audio' && t.packetsReceived >= 100);
      return v && a ? list : null;
    }, 30000, 500);
    assert.ok(ok, `${who} decodes the other through TURN: ${JSON.stringify(await p.evaluate(() => [window.app.inbound(), window.app.events]))}`);
    assert.deepEqual(await relayOf(p, 'window.app.pub'), { type: 'relay', relayProtocol: 'tls' });
    assert.deepEqual(await relayOf(p, 'window.app.sub'), { type: 'relay', relayProtocol: 'tls' });
  };
  const ada = await joinRoom('Ada');
  let bo = await joinRoom('Bo');
  await decodesOther(ada, 'Ada');
  await decodesOther(bo, 'Bo');
  await bo.close();
  bo = await joinRoom('Bo');
  await decodesOther(bo, 'Bo, back');
  for (const p of [ada, bo]) await p.close();
  // Every allocation ends with its connection: none is left once the pages have gone.
  const freed = await waitFor(async () => {
    const page = await openPage(browser, PAGES);
    const s = await relayStats(page, HTTP);
    await page.close();
    return s.turn.allocations_tls === 0 ? s : null;
  }, 15000, 1000);
  assert.ok(freed, 'TURN allocations left after every client closed');
  console.log(`TURN/TLS allocations made: ${freed.turn.allocated_tls}; sessions connected by transport: ${JSON.stringify(freed.transports_connected)}`);
});
