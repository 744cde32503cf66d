// A real browser's call through volna: Chromium publishes over WHIP, a second Chromium page watches
// over WHEP, junk on the media port does not disturb the call, and DELETE ends both sides.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Netns, isRoot, startVolna, startPages, launchChromium, openPage, relayStats, waitFor, sleep } from './lib.mjs';

const HTTP = '127.0.0.1:18080';
const MEDIA = '127.0.0.1:15000';
const PAGES = 'http://127.0.0.1:18081';
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let ns, browser, pub, viewer;

before(async () => {
  if (skip) return;
  ns = new Netns('whip');
  await startVolna(ns, { http: HTTP, media: MEDIA });
  await startPages(ns, PAGES.slice(7));
  browser = await launchChromium(ns);
  pub = await openPage(browser, PAGES);
  viewer = await openPage(browser, PAGES);
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (ns) await ns.cleanup();
});

test('Chromium publishes with WHIP and a second Chromium watches with WHEP', { skip }, async () => {
  const p = await pub.evaluate((u) => window.publish(u), `http://${HTTP}/whip/room1`);
  assert.match(p.location, /\/whip\/room1\/session\/[0-9a-f]{32}$/);
  assert.ok(p.publisher, 'publisher id header exposed through CORS');
  const v = await viewer.evaluate((u) => window.view(u), `http://${HTTP}/whep/room1`);
  assert.match(v.location, /\/whep\/room1\/session\//);
  assert.equal(v.publisher, p.publisher, 'WHEP without a publisher picks the most recent one');

  const stats = await waitFor(async () => {
    const s = await viewer.evaluate(() => window.inbound());
    return s.framesDecoded >= 30 && s.audioPackets >= 100 ? s : null;
  }, 10000);
  const last = await viewer.evaluate(() => window.inbound());
  assert.ok(stats, `within 10 s the viewer decodes >= 30 frames and receives >= 100 audio packets; got ${JSON.stringify(last)}`);
  assert.ok(last.frameWidth > 0, 'decoded video has a size');

  // The viewer negotiated transport-wide sequence numbers: its transport-cc feedback reaches
  // volna and shapes its bandwidth estimate.
  const fed = await waitFor(async () => {
    const s = await relayStats(viewer, HTTP);
    return s.viewer_estimates.find((e) => e.transport_cc && e.kbps > 0) ?? null;
  }, 5000);
  assert.ok(fed, 'the viewer sends transport-cc feedback that volna reads');
  // The viewer would take more than the initial estimate (300 kbps): probes (padding on its RTX
  // stream) find the room, and the estimate grows to twice that and more.
  const grown = await waitFor(async () => {
    const s = await relayStats(viewer, HTTP);
    const e = s.viewer_estimates.find((x) => x.transport_cc);
    return s.probes > 0 && e && e.kbps >= 600 ? { probes: s.probes, kbps: e.kbps } : null;
  }, 15000);
  const last2 = await relayStats(viewer, HTTP);
  assert.ok(grown, `probes sent and the estimate past 600 kbps; got probes ${last2.probes}, ${JSON.stringify(last2.viewer_estimates)}`);
});

test('junk datagrams on the media port are dropped and counted, the call goes on', { skip }, async () => {
  const before = await relayStats(viewer, HTTP);
  const framesBefore = (await viewer.evaluate(() => window.inbound())).framesDecoded;
  // Random bytes, a truncated STUN header, a fake DTLS record, a fake SRTP packet, from new ports.
  const script = `
    const dgram = require('node:dgram');
    const s = dgram.createSocket('udp4');
    const crypto = require('node:crypto');
    const pkts = [];
    for (let i = 0; i < 50; i++) pkts.push(crypto.randomBytes(1 + (i * 37) % 1400));
    pkts.push(Buffer.from([0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42]));
    pkts.push(Buffer.concat([Buffer.from([22, 0xfe, 0xfd]), crypto.randomBytes(60)]));
    pkts.push(Buffer.concat([Buffer.from([0x80, 96]), crypto.randomBytes(200)]));
    pkts.push(Buffer.alloc(0));
    let n = 0;
    for (const p of pkts) s.send(p, ${MEDIA.split(':')[1]}, '127.0.0.1', () => { if (++n === pkts.length) s.close(); });
  `;
  ns.exec(['node', '-e', script]);
  const after = await waitFor(async () => {
    const s = await relayStats(viewer, HTTP);
    return s.junk_datagrams >= before.junk_datagrams + 50 ? s : null;
  }, 5000);
  assert.ok(after, 'junk datagrams are counted');
  await sleep(2000);
  const framesAfter = (await viewer.evaluate(() => window.inbound())).framesDecoded;
  assert.ok(framesAfter >= framesBefore + 20, `video keeps decoding (${framesBefore} -> ${framesAfter})`);
});

test('DELETE of the WHIP session ends the viewer and frees both sessions', { skip }, async () => {
  const s0 = await relayStats(viewer, HTTP);
  assert.equal(s0.sessions, 2);
  assert.equal(await pub.evaluate(() => window.hangUp()), 200);

  const freed = await waitFor(async () => {
    const s = await relayStats(viewer, HTTP);
    return s.sessions === 0 && s.publishers === 0 && s.viewers === 0 && s.rooms === 0 ? s : null;
  }, 5000);
  assert.ok(freed, 'relay holds no session, publisher, viewer or room');

  const ended = await waitFor(async () => {
    const ev = await viewer.evaluate(() => window.events);
    return ev.includes('dtls:closed') || ev.includes('pc:closed') || ev.includes('pc:failed') || (ev.includes('video:ended') && ev.includes('audio:ended')) ? ev : null;
  }, 5000);
  const ev = await viewer.evaluate(() => window.events);
  assert.ok(ended, `viewer's connection ends; events: ${JSON.stringify(ev)}`);
  // getStats figures can trail the wire by a moment: let them settle, then they must not move.
  await sleep(1000);
  const a = (await viewer.evaluate(() => window.inbound())).videoPackets;
  await sleep(1000);
  const b = (await viewer.evaluate(() => window.inbound())).videoPackets;
  assert.equal(a, b, 'no more media reaches the viewer');
});
