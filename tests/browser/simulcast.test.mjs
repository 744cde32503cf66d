// Weak links with real Chromium: a simulcast publisher (three layers) and two viewers, one of them
// in its own namespace behind a veth whose relay-side egress is capped with tbf. The capped viewer
// gets a layer its link carries, then audio only, and the top layer again when the cap lifts; the
// uncapped viewer stays on the top layer throughout. Then the same with one VP9 stream, and one
// AV1 stream, carrying spatial and temporal layers (SVC), thinned by the relay per viewer.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Netns, isRoot, startVolna, startPages, launchChromium, openPage, relayStats, waitFor, sleep } from './lib.mjs';

const RELAY_IP = '10.77.0.1';
const VIEWER_IP = '10.77.0.2';
const HTTP = `${RELAY_IP}:18280`;
const MEDIA = `${RELAY_IP}:15200`;
// Pages are served on loopback in each namespace (a secure context, for getUserMedia).
const PAGES = 'http://127.0.0.1:18281';
const DEV = 'sa0';
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

// 15 frames a second: the encoders and decoders of three pages take half what they would at
// 30, so a machine with two cores (and a share of them taken by its host) does not starve them;
// the layers' rates are what the encoder targets, the same at either.
const FPS = 15;
const ENCODINGS = [
  // The low layer uses about what it may, so that 150 kbps cannot carry it with audio.
  { rid: 'q', scaleResolutionDownBy: 2, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 1.5, maxBitrate: 400_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 900_000 },
];

let relayNs, viewerNs, browserA, browserB, pub, near, far;

const log = (...a) => process.env.VOLNA_LOG && console.error(...a);

function cap(rate) {
  relayNs.exec(['tc', 'qdisc', 'replace', 'dev', DEV, 'root', 'tbf', 'rate', rate, 'burst', '16kbit', 'latency', '200ms']);
}

function uncap() {
  relayNs.exec(['tc', 'qdisc', 'del', 'dev', DEV, 'root']);
}

/**
 * Freezes the capped viewer has beyond the uncapped one's over the same seconds: pauses a link
 * causes, not those of a machine too busy to decode in time (which both viewers see). `a` and `b`
 * are `[far, near]` inbound stats at the start and the end.
 */
function extraFreezes([farA, nearA], [farB, nearB]) {
  return (farB.freezeCount - farA.freezeCount) - Math.max(0, nearB.freezeCount - nearA.freezeCount);
}

/** The top layer's width as the publisher encodes it now. */
async function topWidth() {
  const out = await pub.evaluate(() => window.outbound());
  return Math.max(0, ...out.map((o) => o.frameWidth));
}

before(async () => {
  if (skip) return;
  relayNs = new Netns('sim');
  viewerNs = new Netns('simv');
  relayNs.link(viewerNs, { devA: DEV, devB: 'sb0', a: RELAY_IP, b: VIEWER_IP });
  // The defaults: pause_video is on.
  await startVolna(relayNs, { http: HTTP, media: MEDIA });
  await startPages(relayNs, PAGES.slice(7));
  await startPages(viewerNs, PAGES.slice(7));
  browserA = await launchChromium(relayNs);
  browserB = await launchChromium(viewerNs);
  pub = await openPage(browserA, PAGES);
  near = await openPage(browserA, PAGES);
  far = await openPage(browserB, PAGES);
});

after(async () => {
  for (const b of [browserA, browserB]) if (b) await b.close().catch(() => {});
  if (viewerNs) await viewerNs.cleanup();
  if (relayNs) await relayNs.cleanup();
});

test('a viewer capped at 300 kbps decodes the low layer while the other keeps the top one, and climbs back when the cap lifts', { skip }, async () => {
  await pub.evaluate((u, e, f) => window.publishSimulcast(u, e, [960, 540], f), `http://${HTTP}/whip/sim`, ENCODINGS, FPS);
  // All three layers reach the relay, each on its own SSRC.
  const layers = await waitFor(async () => {
    const out = await pub.evaluate(() => window.outbound());
    return out.length === 3 && out.every((o) => o.framesEncoded > 30) ? out : null;
  }, 15000);
  assert.ok(layers, `the publisher sends three layers: ${JSON.stringify(await pub.evaluate(() => window.outbound()))}`);
  await near.evaluate((u) => window.view(u), `http://${HTTP}/whep/sim`);
  cap('300kbit');
  await far.evaluate((u) => window.view(u), `http://${HTTP}/whep/sim`);

  const top = await waitFor(async () => {
    const w = await topWidth();
    const n = await near.evaluate(() => window.inbound());
    log('settle', w, JSON.stringify(n), JSON.stringify(await far.evaluate(() => window.inbound())));
    return w >= 960 && n.frameWidth === w ? w : null;
  }, 30000);
  assert.ok(top, `the uncapped viewer decodes the top layer (${await topWidth()} wide): ${JSON.stringify(await near.evaluate(() => window.inbound()))}`);

  // 20 s on the capped link: decoding all along (10 of the 15 frames a second), at a smaller
  // size, with at most one freeze the link caused.
  await sleep(5000);
  const start = await far.evaluate(() => window.inbound());
  const nearStart = await near.evaluate(() => window.inbound());
  const widths = [];
  for (let i = 0; i < 20; i++) {
    await sleep(1000);
    const f = await far.evaluate(() => window.inbound());
    widths.push(f.frameWidth);
    log('capped', JSON.stringify(f), JSON.stringify((await relayStats(near, HTTP)).viewer_estimates));
  }
  const end = await far.evaluate(() => window.inbound());
  const nearEnd = await near.evaluate(() => window.inbound());
  assert.ok(widths.every((w) => w > 0 && w < top), `the capped viewer decodes a lower layer: widths ${widths}`);
  assert.ok(end.framesDecoded - start.framesDecoded >= 20 * 10, `it keeps decoding: ${start.framesDecoded} -> ${end.framesDecoded}`);
  const extra = extraFreezes([start, nearStart], [end, nearEnd]);
  assert.ok(extra <= 1, `at most one freeze in 20 s beyond the uncapped viewer's: ${start.freezeCount} -> ${end.freezeCount} (uncapped: ${nearStart.freezeCount} -> ${nearEnd.freezeCount})`);
  // (Where a stalled decoder made its estimate dip for a moment, it is back on it within 5 s.)
  const kept = nearEnd.frameWidth === top || await waitFor(async () => (await near.evaluate(() => window.inbound())).frameWidth === top, 5000, 500);
  assert.ok(kept, `the uncapped viewer stays on the top layer: ${JSON.stringify(await near.evaluate(() => window.inbound()))}`);

  uncap();
  const back = await waitFor(async () => {
    const f = await far.evaluate(() => window.inbound());
    log('uncapped', JSON.stringify(f));
    return f.frameWidth === top ? f : null;
  }, 10000, 500);
  assert.ok(back, `within 10 s of the cap lifting the viewer is on the top layer: ${JSON.stringify(await far.evaluate(() => window.inbound()))}, ${JSON.stringify((await relayStats(near, HTTP)).viewer_estimates)}`);
});

test('at 150 kbps the capped viewer gets audio only, without a gap, and video again when the cap lifts', { skip }, async () => {
  const s0 = await relayStats(near, HTTP);
  cap('150kbit');
  // Video stops reaching the capped viewer (paused at the relay, not starved at the link).
  const paused = await waitFor(async () => {
    const s = await relayStats(near, HTTP);
    const a = await far.evaluate(() => window.inbound());
    await sleep(1500);
    const b = await far.evaluate(() => window.inbound());
    log('150', JSON.stringify(b), JSON.stringify(s.viewer_estimates), s.paused_tracks);
    return s.paused_tracks > s0.paused_tracks && b.videoPackets === a.videoPackets ? b : null;
  }, 20000, 0);
  assert.ok(paused, `video paused for the capped viewer: ${JSON.stringify(await far.evaluate(() => window.inbound()))}`);
  // 10 s of audio only: every packet arrives and next to nothing is concealed.
  const a = await far.evaluate(() => window.inbound());
  const sa = await relayStats(near, HTTP);
  await sleep(10000);
  const b = await far.evaluate(() => window.inbound());
  const sb = await relayStats(near, HTTP);
  log('pauses', sa.paused_tracks, sb.paused_tracks, sa.probes, sb.probes);
  log('audio only', JSON.stringify(a), JSON.stringify(b), JSON.stringify(await pub.evaluate(() => window.outbound())));
  const packets = b.audioPackets - a.audioPackets;
  const concealed = (b.concealedSamples - a.concealedSamples) / Math.max(1, b.totalSamplesReceived - a.totalSamplesReceived);
  assert.ok(packets >= 450, `audio flows: ${packets} packets in 10 s`);
  assert.ok(concealed < 0.02, `audio is continuous: ${(concealed * 100).toFixed(2)}% concealed`);
  // (Probes, padding on the video's RTX stream, may still arrive: no frames do.)
  assert.equal(b.framesDecoded, a.framesDecoded, 'no video while the link cannot carry it');
  const nearNow = await near.evaluate(() => window.inbound());
  assert.ok(nearNow.framesDecoded > 0 && nearNow.frameWidth > 0, 'the other viewer still has video');

  uncap();
  const resumed = await waitFor(async () => {
    const f = await far.evaluate(() => window.inbound());
    log('resume', JSON.stringify(f));
    return f.framesDecoded >= b.framesDecoded + 30 ? f : null;
  }, 15000, 500);
  assert.ok(resumed, `video resumes when the cap lifts: ${JSON.stringify(await far.evaluate(() => window.inbound()))}`);
});

test('at 50 kbps the capped viewer still hears the call: audio re-encoded at a low bitrate', { skip }, async () => {
  const s0 = await relayStats(near, HTTP);
  // Opus from Chromium takes about 60 kbps on the wire (headers included); 12 kbps Opus about 40.
  cap('50kbit');
  try {
    const low = await waitFor(async () => {
      const s = await relayStats(near, HTTP);
      log('40', JSON.stringify(s.viewer_estimates), s.transcoded_packets);
      return s.transcoded_packets > s0.transcoded_packets + 50 ? s : null;
    }, 20000, 500);
    assert.ok(low, 'the capped viewer gets re-encoded audio');
    await sleep(2000);
    const a = await far.evaluate(() => window.inbound());
    await sleep(10000);
    const b = await far.evaluate(() => window.inbound());
    log('40 audio', JSON.stringify(a), JSON.stringify(b));
    const packets = b.audioPackets - a.audioPackets;
    const concealed = (b.concealedSamples - a.concealedSamples) / Math.max(1, b.totalSamplesReceived - a.totalSamplesReceived);
    assert.ok(packets >= 450, `audio flows: ${packets} packets in 10 s`);
    assert.ok(concealed < 0.05, `audio is continuous: ${(concealed * 100).toFixed(2)}% concealed`);
    const near1 = await near.evaluate(() => window.inbound());
    assert.ok(near1.audioLevel > 0 || near1.audioPackets > 0, 'the other viewer hears the original');
  } finally {
    uncap();
  }
  // With room again the viewer gets the original Opus (and video) back.
  const resumed = await waitFor(async () => {
    const s1 = await relayStats(near, HTTP);
    await sleep(1000);
    const s2 = await relayStats(near, HTTP);
    return s2.transcoded_packets === s1.transcoded_packets ? s2 : null;
  }, 20000, 0);
  assert.ok(resumed, 'no more re-encoding once the link has room');
  const video = await waitFor(async () => {
    const a = await far.evaluate(() => window.inbound());
    await sleep(1000);
    const b = await far.evaluate(() => window.inbound());
    return b.framesDecoded > a.framesDecoded + 10 ? b : null;
  }, 20000, 0);
  assert.ok(video, 'and its video');
});

test('with 5% random loss on its link the viewer hears continuous audio (RED) and video does not freeze', { skip }, async () => {
  // nftables drops one in twenty UDP packets the relay sends towards the viewer's namespace.
  relayNs.exec(['nft', 'add', 'table', 'inet', 'volna_loss']);
  relayNs.exec(['nft', 'add', 'chain', 'inet', 'volna_loss', 'out', '{ type filter hook output priority 0; }']);
  relayNs.exec(['nft', 'add', 'rule', 'inet', 'volna_loss', 'out', 'oifname', DEV, 'meta', 'l4proto', 'udp', 'numgen', 'random', 'mod', '100', '<', '5', 'drop']);
  try {
    // The loss is measured and audio switches to RED within a few seconds.
    const red = await waitFor(async () => (await relayStats(near, HTTP)).red_packets > 0, 10000);
    assert.ok(red, 'audio goes to the lossy viewer as RED');
    await sleep(2000);
    const a = await far.evaluate(() => window.inbound());
    const nearA = await near.evaluate(() => window.inbound());
    await sleep(20000);
    const b = await far.evaluate(() => window.inbound());
    const nearB = await near.evaluate(() => window.inbound());
    log('loss', JSON.stringify(a), JSON.stringify(b));
    const concealed = (b.concealedSamples - a.concealedSamples) / Math.max(1, b.totalSamplesReceived - a.totalSamplesReceived);
    assert.ok(concealed < 0.02, `audio concealment under 2%: ${(concealed * 100).toFixed(2)}%`);
    assert.ok(b.framesDecoded - a.framesDecoded >= 20 * 10, `video keeps decoding: ${a.framesDecoded} -> ${b.framesDecoded}`);
    const extra = extraFreezes([a, nearA], [b, nearB]);
    assert.ok(extra <= 1, `at most one freeze in 20 s beyond the other viewer's: ${a.freezeCount} -> ${b.freezeCount} (other: ${nearA.freezeCount} -> ${nearB.freezeCount})`);
  } finally {
    relayNs.exec(['nft', 'delete', 'table', 'inet', 'volna_loss']);
  }
});

// AV1 is encoded in software and costs far more CPU: at 960×540 a busy machine makes Chromium drop
// a spatial layer (L3T3 to L2T3) mid-test. It is published at 640×360 with two spatial layers
// (Chromium gives 640×360 no third one).
for (const [codec, MODE, FULL, HEIGHT] of [['VP9', 'L3T3_KEY', 960, 540], ['AV1', 'L2T3_KEY', 640, 360]]) {
test(`SVC: a viewer capped at 300 kbps decodes the smaller ${codec} layers of one stream while the other gets the full picture, and climbs back when the cap lifts`, { skip }, async () => {
  // The call before ends; an SVC one starts, with fresh pages.
  for (const p of [pub, near, far]) await p.evaluate(() => window.hangUp()).catch(() => {});
  pub = await openPage(browserA, PAGES);
  near = await openPage(browserA, PAGES);
  far = await openPage(browserB, PAGES);
  const [svcPub, svcNear, svcFar] = [pub, near, far];
  const room = `svc${codec}`;
  await svcPub.evaluate((u, c, w, h, m, f) => window.publishSvc(u, m, `video/${c}`, w, h, f), `http://${HTTP}/whip/${room}`, codec, FULL, HEIGHT, MODE, FPS);
  const sending = await waitFor(async () => {
    const [o] = await svcPub.evaluate(() => window.outbound());
    log('svc publisher', JSON.stringify(o));
    return o && o.framesEncoded > 30 && o.frameWidth === FULL ? o : null;
  }, 20000, 500);
  assert.ok(sending, `the publisher sends ${codec} ${MODE} at ${FULL} wide: ${JSON.stringify(await svcPub.evaluate(() => window.outbound()))}`);
  assert.equal(sending.scalabilityMode, MODE);
  await svcNear.evaluate((u) => window.view(u, true), `http://${HTTP}/whep/${room}`);
  cap('300kbit');
  await svcFar.evaluate((u) => window.view(u, true), `http://${HTTP}/whep/${room}`);
  const full = await waitFor(async () => {
    const n = await svcNear.evaluate(() => window.inbound());
    log('svc settle', JSON.stringify(n), JSON.stringify(await svcFar.evaluate(() => window.inbound())));
    return n.frameWidth === FULL && n.codec === `video/${codec}` ? n : null;
  }, 30000, 500);
  assert.ok(full, `the uncapped viewer decodes the full picture: ${JSON.stringify(await svcNear.evaluate(() => window.inbound()))}`);

  await sleep(5000);
  const start = await svcFar.evaluate(() => window.inbound());
  const nearStart = await svcNear.evaluate(() => window.inbound());
  const widths = [];
  for (let i = 0; i < 15; i++) {
    await sleep(1000);
    const f = await svcFar.evaluate(() => window.inbound());
    widths.push(f.frameWidth);
    log('svc capped', JSON.stringify(f), JSON.stringify((await relayStats(svcNear, HTTP)).viewer_estimates));
  }
  const end = await svcFar.evaluate(() => window.inbound());
  const nearEnd = await svcNear.evaluate(() => window.inbound());
  assert.equal(end.codec, `video/${codec}`);
  assert.ok(widths.every((w) => w > 0 && w < FULL), `the capped viewer decodes a smaller spatial layer: widths ${widths}`);
  // (A lower temporal layer may halve the frame rate: at least 5 of the 15 a second.)
  assert.ok(end.framesDecoded - start.framesDecoded >= 15 * 5, `it keeps decoding: ${start.framesDecoded} -> ${end.framesDecoded}`);
  // Freezes are a figure here, not a claim: a key picture the other viewer's switch asks for
  // comes in a burst that a 300 kbit queue of 200 ms cannot always hold, and on a machine whose
  // host takes a third of its CPU time that count swings from run to run.
  const extra = extraFreezes([start, nearStart], [end, nearEnd]);
  console.log(`${codec} SVC, capped viewer: ${end.framesDecoded - start.framesDecoded} frames and ${extra} freezes beyond the uncapped viewer's in 15 s (${start.freezeCount} -> ${end.freezeCount}, uncapped ${nearStart.freezeCount} -> ${nearEnd.freezeCount})`);
  // A viewer has the top layer when it decodes the width the publisher sends now (a busy machine
  // may make the encoder shed a spatial layer for CPU, L3T3 becoming L2T3: the top is then
  // smaller, and the relay must not shrink it further).
  const hasTop = async (viewer, what) => {
    const [o] = await svcPub.evaluate(() => window.outbound());
    const n = await viewer.evaluate(() => window.inbound());
    log(what, JSON.stringify(o), JSON.stringify(n), JSON.stringify((await relayStats(svcNear, HTTP)).viewer_estimates));
    return o && n.frameWidth === o.frameWidth ? n : null;
  };
  const kept = await waitFor(() => hasTop(svcNear, 'svc kept'), 5000, 500);
  assert.ok(kept, `the uncapped viewer keeps the full picture: ${JSON.stringify(await svcNear.evaluate(() => window.inbound()))}, sent ${JSON.stringify(await svcPub.evaluate(() => window.outbound()))}`);

  uncap();
  const back = await waitFor(() => hasTop(svcFar, 'svc uncapped'), 10000, 500);
  assert.ok(back, `within 10 s of the cap lifting the viewer gets the full picture: ${JSON.stringify(await svcFar.evaluate(() => window.inbound()))}, sent ${JSON.stringify(await svcPub.evaluate(() => window.outbound()))}`);
});
}
