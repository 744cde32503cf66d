// Network changes through real Chromium: a WHEP viewer behind a proxy that moves to a new source
// port mid-call (a NAT rebinding) keeps its call once it answers volna's consent check there
// (decoding pauses for at most 2 s), while media from the new address before that is ignored and counted;
// and an ICE restart over WHIP PATCH (RFC 9725 §4.3) keeps media flowing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Netns, isRoot, repo, startVolna, startPages, launchChromium, openPage, relayStats, waitFor, sleep } from './lib.mjs';

const HTTP = '127.0.0.1:18400';
const MEDIA_PORT = 15400;
const PROXY_PORT = 15499;
const PAGES = 'http://127.0.0.1:18401';
const bin = (name) => join(repo, 'target', 'debug', name);
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let ns, browser, pub, viewer;

before(async () => {
  if (skip) return;
  ns = new Netns('net');
  await startVolna(ns, { http: HTTP, media: `127.0.0.1:${MEDIA_PORT}` });
  await startPages(ns, PAGES.slice(7));
  browser = await launchChromium(ns);
  pub = await openPage(browser, PAGES);
  viewer = await openPage(browser, PAGES);
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (ns) await ns.cleanup();
});

const frames = () => viewer.evaluate(() => window.inbound()).then((s) => s.framesDecoded);

test('NAT rebinding: the viewer keeps its call, unauthenticated media from the new address is ignored', { skip, timeout: 60000 }, async () => {
  await pub.evaluate((u) => window.publish(u), `http://${HTTP}/whip/net`);
  const REBIND = 6;
  const proxy = ns.spawn([bin('volna-impair'), '--listen', `127.0.0.1:${PROXY_PORT}`, '--target', `127.0.0.1:${MEDIA_PORT}`,
    '--rebind-after', String(REBIND), '--seconds', String(REBIND + 10)]);
  const t0 = Date.now();
  await sleep(200);
  assert.equal(proxy.exitCode, null, `volna-impair runs: ${proxy.output}`);
  await viewer.evaluate((u, via) => window.view(u, false, via), `http://${HTTP}/whep/net`, `127.0.0.1 ${PROXY_PORT}`);
  assert.ok(await waitFor(async () => (await frames()) > 30, 5000), 'the viewer decodes before the rebinding');
  const before = await relayStats(pub, HTTP);
  await sleep(Math.max(0, t0 + REBIND * 1000 - Date.now()));
  // From the rebinding on: when does decoding go on? One sample every 50 ms of what volna and the
  // viewer see, so that a slow recovery shows where its time went.
  const rebound = Date.now();
  const s0 = await viewer.evaluate(() => window.inbound());
  // The viewer's next RTCP comes from the new port: volna sends a consent check there, and moves
  // the session when Chromium answers it (without that, Chromium's own next check, up to 2.5 s
  // later, would move it).
  // What a user sees is the longest pause in decoding (the frame rate drops on a busy machine, so
  // a count of frames would measure the encoder too).
  let movedMs = null;
  let backMs = null;
  let lastFrameAt = rebound;
  let longestPause = 0;
  let last = s0;
  while (Date.now() - rebound < 4000 || (backMs === null && Date.now() - rebound < 10000)) {
    if (movedMs === null && (await relayStats(pub, HTTP)).path_switches > before.path_switches) movedMs = Date.now() - rebound;
    const s = await viewer.evaluate(() => window.inbound());
    const at = Date.now();
    if (s.framesDecoded > last.framesDecoded) {
      longestPause = Math.max(longestPause, at - lastFrameAt);
      lastFrameAt = at;
    }
    last = s;
    if (backMs === null && movedMs !== null && s.framesDecoded > s0.framesDecoded + 10) backMs = at - rebound;
    await sleep(50);
  }
  longestPause = Math.max(longestPause, Date.now() - lastFrameAt);
  const after = await relayStats(pub, HTTP);
  const seen = (k) => `${k} ${last[k] - s0[k]}`;
  console.log(`rebinding: path moved after ${movedMs} ms, 10 more frames after ${backMs} ms, longest pause in decoding ${longestPause} ms; ` +
    `consent checks ${after.consent_checks - before.consent_checks}; viewer: ${['nackCount', 'pliCount', 'keyFramesDecoded', 'freezeCount'].map(seen).join(', ')}, ${last.framesPerSecond} fps`);
  assert.ok(movedMs !== null, 'the session moved to the new address');
  assert.ok(backMs !== null, `decoding goes on after the rebinding: ${s0.framesDecoded} -> ${last.framesDecoded} frames`);
  assert.ok(after.consent_checks > before.consent_checks, 'volna checked the new address itself');
  assert.ok(longestPause <= 2000, `the call continues within 2 s of the rebinding: decoding paused for ${longestPause} ms`);
  // The viewer's RTCP from the new port before its first check there is not accepted.
  assert.ok(after.junk_datagrams > before.junk_datagrams, `datagrams from the new address before its check were dropped and counted: ${before.junk_datagrams} -> ${after.junk_datagrams}`);
  await waitFor(() => proxy.exitCode !== null, 12000);
  const stats = JSON.parse(proxy.output.trim().split('\n').at(-1));
  assert.equal(stats.media_before_check, 0, `volna sent nothing but STUN to the new address before Chromium's STUN came from there: ${proxy.output}`);
});

test('ICE restart over WHIP PATCH: the publisher restarts ICE and the viewer keeps decoding', { skip, timeout: 30000 }, async () => {
  // (The first viewer's proxy has stopped: a direct viewer watches now.)
  viewer = await openPage(browser, PAGES);
  await viewer.evaluate((u) => window.view(u), `http://${HTTP}/whep/net`);
  assert.ok(await waitFor(async () => (await frames()) > 30, 5000), 'the viewer decodes before the restart');
  const before = await relayStats(pub, HTTP);
  const status = await pub.evaluate(() => window.restartIce());
  assert.equal(status, 200);
  const connected = await waitFor(() => pub.evaluate(() => window.pc.iceConnectionState === 'connected' || window.pc.iceConnectionState === 'completed'), 5000, 100);
  assert.ok(connected, 'the publisher is connected again');
  const after = await relayStats(pub, HTTP);
  assert.ok(after.ice_restarts > before.ice_restarts, 'volna counted the restart');
  const f0 = await frames();
  assert.ok(await waitFor(async () => (await frames()) > f0 + 30, 5000, 100), 'the viewer keeps decoding after the restart');
  // Bad requests: a fragment without credentials, and an unknown session.
  const bad = await pub.evaluate(async () => {
    const r = await fetch(window.session, { method: 'PATCH', headers: { 'Content-Type': 'application/trickle-ice-sdpfrag' }, body: 'a=end-of-candidates\r\n' });
    return [r.status, await r.text()];
  });
  assert.equal(bad[0], 400, bad[1]);
  const unknown = await pub.evaluate(async () => {
    const u = window.session.replace(/session\/[0-9a-f]+$/, 'session/00000000000000000000000000000000');
    const r = await fetch(u, { method: 'PATCH', headers: { 'Content-Type': 'application/trickle-ice-sdpfrag' }, body: 'a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n' });
    return r.status;
  });
  assert.equal(unknown, 404);
});
