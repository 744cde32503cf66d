// Users whose UDP is blocked: Chromium in a namespace of its own, whose nftables drop every UDP
// packet to the relay, still gets its calls over ICE-TCP (the relay's passive TCP candidates,
// RFC 6544): a WHIP→WHEP call (time to first frame printed next to the same call over UDP before
// the block) and a demo-page room call, each decoding video and receiving audio, with the chosen
// candidate pair on TCP; then a five-minute call over ICE-TCP on a link capped at 1 Mbit/s.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Netns, isRoot, startVolna, startPages, launchChromium, openPage, relayStats, waitFor, localCandidate } from './lib.mjs';

const RELAY = '10.78.0.1';
const HTTP = `${RELAY}:18140`;
const MEDIA = `${RELAY}:15060`;
const PAGES = 'http://127.0.0.1:18141';
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let relay, client, browser;

before(async () => {
  if (skip) return;
  relay = new Netns('tcpr');
  client = new Netns('tcpc');
  relay.link(client, { devA: 'tr0', devB: 'tc0', a: RELAY, b: '10.78.0.2' });
  await startVolna(relay, { http: HTTP, media: MEDIA, extra: ['--quic', `${RELAY}:0`] });
  await startPages(client, PAGES.slice(7));
  // The demo page needs a secure context for the camera; this origin is plain HTTP.
  browser = await launchChromium(client, { args: [`--unsafely-treat-insecure-origin-as-secure=http://${HTTP}`] });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (client) await client.cleanup();
  if (relay) await relay.cleanup();
});

/** The protocol of a page's chosen candidate pair (`udp` or `tcp`), read from `expr`'s pc. */
const pairProtocol = async (page, expr) => (await localCandidate(page, expr))?.protocol ?? null;

/** WHIP publish and WHEP view from two pages; the ms to the viewer's first decoded frame. */
async function call(room) {
  const pub = await openPage(browser, PAGES);
  const viewer = await openPage(browser, PAGES);
  await pub.evaluate((u) => window.publish(u), `http://${HTTP}/whip/${room}`);
  const start = Date.now();
  await viewer.evaluate((u) => window.view(u), `http://${HTTP}/whep/${room}`);
  const first = await waitFor(async () => ((await viewer.evaluate(() => window.inbound())).framesDecoded > 0 ? Date.now() - start : null), 20000, 100);
  assert.ok(first, `first frame: ${JSON.stringify(await viewer.evaluate(() => window.inbound()))}`);
  const decoded = await waitFor(async () => {
    const s = await viewer.evaluate(() => window.inbound());
    return s.framesDecoded >= 30 && s.audioPackets >= 100 ? s : null;
  }, 20000, 250);
  assert.ok(decoded, `decodes: ${JSON.stringify(await viewer.evaluate(() => window.inbound()))}`);
  const protos = [await pairProtocol(pub, 'window.pc'), await pairProtocol(viewer, 'window.pc')];
  await pub.close();
  await viewer.close();
  return { first, protos, decoded };
}

let blocked = false;

/** From the first call on, no UDP packet from the client reaches the relay. */
function blockUdp() {
  if (blocked) return;
  const rules = join(client.tempDir(), 'block.nft');
  writeFileSync(rules, `table inet volna_block {
  chain out {
    type filter hook output priority 0;
    ip daddr ${RELAY} meta l4proto udp counter drop
  }
}
`);
  client.exec(['nft', '-f', rules]);
  blocked = true;
}

test('UDP blocked: WHIP→WHEP and a room call connect over ICE-TCP and decode', { skip, timeout: 120000 }, async () => {
  const udp = await call('baseline');
  assert.deepEqual(udp.protos, ['udp', 'udp']);

  blockUdp();
  const tcp = await call('blocked');
  assert.deepEqual(tcp.protos, ['tcp', 'tcp']);
  console.log(`time to first frame: UDP ${udp.first} ms, ICE-TCP ${tcp.first} ms (UDP blocked)`);
  const dropped = client.exec(['nft', 'list', 'table', 'inet', 'volna_block']);
  assert.match(dropped, /counter packets [1-9]/, 'the block dropped the UDP the browser tried');

  // The demo page's room call, two participants.
  const pages = [];
  for (const name of ['Ada', 'Bo']) {
    const p = await browser.newPage();
    await p.goto(`http://${HTTP}/?room=tcp`);
    await p.evaluate((n) => window.app.join('tcp', n), name);
    pages.push(p);
  }
  for (const [i, p] of pages.entries()) {
    const ok = await waitFor(async () => {
      const list = await p.evaluate(() => window.app.inbound());
      const v = list.find((t) => t.kind === 'video' && t.framesDecoded >= 30);
      const a = list.find((t) => t.kind === 'audio' && t.packetsReceived >= 100);
      return v && a ? list : null;
    }, 20000, 500);
    assert.ok(ok, `participant ${i} decodes the other over TCP: ${JSON.stringify(await p.evaluate(() => window.app.inbound()))}`);
    assert.equal(await pairProtocol(p, 'window.app.pub'), 'tcp');
    assert.equal(await pairProtocol(p, 'window.app.sub'), 'tcp');
  }
  const stats = await relayStats(pages[0], HTTP);
  assert.ok(stats.tcp.in_use >= 4, `the relay's sessions use TCP: ${JSON.stringify(stats.tcp)}`);
  for (const p of pages) await p.close();
});

// Five minutes (VOLNA_TCP_CALL_SECONDS to change) of a WHIP→WHEP call over ICE-TCP with both
// directions of the client's link capped at 1 Mbit/s: the publisher's estimate settles under
// the cap, TCP's own congestion control never sees a queue it must back off from for long, and
// the viewer's video never stops for more than a second.
const CALL_SECONDS = Number(process.env.VOLNA_TCP_CALL_SECONDS || 300);

test(`${CALL_SECONDS} s over ICE-TCP behind 1 Mbit/s: no freeze longer than 1 s`, { skip, timeout: (CALL_SECONDS + 90) * 1000 }, async () => {
  blockUdp();
  const cap = ['tbf', 'rate', '1mbit', 'burst', '32kbit', 'latency', '400ms'];
  client.exec(['tc', 'qdisc', 'replace', 'dev', 'tc0', 'root', ...cap]);
  relay.exec(['tc', 'qdisc', 'replace', 'dev', 'tr0', 'root', ...cap]);
  try {
    const pub = await openPage(browser, PAGES);
    const viewer = await openPage(browser, PAGES);
    await pub.evaluate((u) => window.publish(u), `http://${HTTP}/whip/capped`);
    await viewer.evaluate((u) => window.view(u), `http://${HTTP}/whep/capped`);
    const started = await waitFor(async () => (await viewer.evaluate(() => window.inbound())).framesDecoded >= 10, 20000, 200);
    assert.ok(started, `decoding: ${JSON.stringify(await viewer.evaluate(() => window.inbound()))}`);
    assert.deepEqual([await pairProtocol(pub, 'window.pc'), await pairProtocol(viewer, 'window.pc')], ['tcp', 'tcp']);
    // In the page: every 100 ms, the time since video last advanced; the longest such stall.
    await viewer.evaluate(() => {
      const s = { longest: 0, at: performance.now(), frames: 0, samples: 0 };
      window.stall = s;
      setInterval(async () => {
        const { framesDecoded } = await window.inbound();
        const now = performance.now();
        s.samples += 1;
        if (framesDecoded > s.frames) {
          s.longest = Math.max(s.longest, now - s.at);
          s.frames = framesDecoded;
          s.at = now;
        }
      }, 100);
    });
    const first = await viewer.evaluate(() => window.inbound());
    await new Promise((r) => setTimeout(r, CALL_SECONDS * 1000));
    const last = await viewer.evaluate(() => window.inbound());
    const stall = await viewer.evaluate(() => ({ ...window.stall, open: performance.now() - window.stall.at }));
    const longest = Math.max(stall.longest, stall.open);
    const fps = (last.framesDecoded - first.framesDecoded) / CALL_SECONDS;
    console.log(`ICE-TCP at 1 Mbit/s for ${CALL_SECONDS} s: ${last.framesDecoded - first.framesDecoded} frames (${fps.toFixed(1)}/s), longest stall ${Math.round(longest)} ms, Chromium freezes ${last.freezeCount - first.freezeCount}, audio packets ${last.audioPackets - first.audioPackets}`);
    assert.ok(longest <= 1000, `no freeze longer than 1 s: longest ${Math.round(longest)} ms over ${stall.samples} samples`);
    assert.ok(fps >= 10, `video kept going: ${fps.toFixed(1)} frames a second`);
    assert.ok(last.audioPackets - first.audioPackets >= CALL_SECONDS * 40, 'audio kept going');
    await pub.close();
    await viewer.close();
  } finally {
    client.exec(['tc', 'qdisc', 'del', 'dev', 'tc0', 'root']);
    relay.exec(['tc', 'qdisc', 'del', 'dev', 'tr0', 'root']);
  }
});
