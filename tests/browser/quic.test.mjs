// RTP over QUIC bridged to WebRTC: a native QUIC client's libopus tone is heard by a Chromium
// WHEP viewer, and a Chromium WHIP publisher is received and decoded by the native client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Netns, isRoot, startVolna, startPages, launchChromium, openPage, waitFor, clientBin } from './lib.mjs';

const HTTP = '127.0.0.1:18120';
const MEDIA = '127.0.0.1:15040';
const QUIC = '127.0.0.1:14433';
const PAGES = 'http://127.0.0.1:18121';
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let ns, browser, hash;

before(async () => {
  if (skip) return;
  ns = new Netns('quic');
  await startVolna(ns, { http: HTTP, media: MEDIA, extra: ['--quic', QUIC] });
  hash = ns.exec(['curl', '-fsS', `http://${HTTP}/quic/cert-hash`]).trim();
  await startPages(ns, PAGES.slice(7));
  browser = await launchChromium(ns);
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (ns) await ns.cleanup();
});

test('a QUIC publisher\'s Opus tone and H.264 video reach a Chromium WHEP viewer', { skip }, async () => {
  assert.match(hash, /^[0-9a-f]{64}$/, 'the certificate hash is served for pinning');
  const pub = ns.spawn([clientBin, 'publish', '--quic', QUIC, '--cert-hash', hash, '--room', 'tone', '--tone', '440', '--seconds', '20', '--video']);
  const viewer = await openPage(browser, PAGES);
  const published = await waitFor(async () => {
    if (pub.exitCode !== null) throw new Error(`volna-client exited: ${pub.output}`);
    const s = await viewer.evaluate(async (u) => (await fetch(u)).json(), `http://${HTTP}/stats`);
    return s.publishers >= 1;
  }, 10000);
  assert.ok(published, 'the QUIC publisher is in the room');
  await viewer.evaluate((u) => window.view(u), `http://${HTTP}/whep/tone`);
  const ok = await waitFor(async () => {
    const s = await viewer.evaluate(() => window.inbound());
    return s.audioPackets >= 100 && s.audioLevel > 0 && s.framesDecoded >= 30 ? s : null;
  }, 10000);
  const last = await viewer.evaluate(() => window.inbound());
  assert.ok(ok, `viewer hears the tone (packets >= 100, audioLevel > 0) and decodes the video: ${JSON.stringify(last)}`);
  assert.equal(last.codec.toLowerCase(), 'video/h264');
  pub.kill('SIGKILL');
});

test('a Chromium WHIP publisher is received and decoded by volna-client over QUIC', { skip }, async () => {
  const page = await openPage(browser, PAGES);
  await page.evaluate((u) => window.publish(u), `http://${HTTP}/whip/cam`);
  const sub = ns.spawn([clientBin, 'subscribe', '--quic', QUIC, '--cert-hash', hash, '--room', 'cam', '--seconds', '6']);
  const done = await waitFor(() => sub.exitCode !== null, 15000, 200);
  assert.ok(done && sub.exitCode === 0, `volna-client finished: ${sub.output}`);
  const report = JSON.parse(sub.output.trim().split('\n').pop());
  assert.ok(report.audio_packets >= 200, `>= 200 audio packets: ${JSON.stringify(report)}`);
  assert.equal(report.decode_errors, 0, 'no Opus decode errors');
  assert.ok(report.level_dbfs > -60, `decoded audio is not silence: ${report.level_dbfs} dBFS`);
  assert.ok(report.video_packets > 0, 'video packets arrive too');
});
