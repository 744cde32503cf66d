// Network changes through real Chromium: a WHEP viewer behind a proxy that moves to a new source
// port mid-call (a NAT rebinding) keeps its call once it answers volna's consent check there
// (within 2 s), while media from the new address before that is ignored and counted;
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
  // From the rebinding on: when does decoding go on?
  const rebound = Date.now();
  const f0 = await frames();
  // The viewer's next RTCP comes from the new port: volna sends a consent check there, and moves
  // the session when Chromium answers it (without that, Chromium's own next check, up to 2.5 s
  // later, would move it).
  const moved = await waitFor(async () => (await relayStats(pub, HTTP)).path_switches > before.path_switches, 4000, 50);
  const movedMs = Date.now() - rebound;
  assert.ok(moved, 'the session moved to the new address within 4 s');
  const back = await waitFor(async () => (await frames()) > f0 + 10, 8000, 50);
  const backMs = Date.now() - rebound;
  const after = await relayStats(pub, HTTP);
  assert.ok(back, `decoding goes on after the rebinding: ${f0} -> ${await frames()} frames`);
  console.log(`rebinding: path moved after ${movedMs} ms, decoding went on after ${backMs} ms; consent checks ${after.consent_checks - before.consent_checks}`);
  assert.ok(after.consent_checks > before.consent_checks, 'volna checked the new address itself');
  assert.ok(backMs <= 2000, `the call continues within 2 s of the rebinding: ${backMs} ms`);
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
