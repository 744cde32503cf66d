// A second, independent WebRTC stack: GStreamer webrtcbin publishes over WHIP, Chromium watches
// over WHEP. webrtcbin (libnice) ignores loopback, so this namespace has a veth address and the
// relay's media listener is bound to it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Netns, isRoot, startVolna, startPages, launchChromium, openPage, waitFor, repo } from './lib.mjs';

const ADDR = '10.231.0.1';
const HTTP = `${ADDR}:18090`;
const MEDIA = `${ADDR}:15010`;
const PAGES = `http://127.0.0.1:18091`;
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let ns, browser;

before(async () => {
  if (skip) return;
  ns = new Netns('gst', { veth: ADDR });
  await startVolna(ns, { http: HTTP, media: MEDIA });
  await startPages(ns, PAGES.slice(7));
  browser = await launchChromium(ns);
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (ns) await ns.cleanup();
});

test('GStreamer webrtcbin publishes over WHIP and Chromium watches over WHEP', { skip }, async () => {
  const gst = ns.spawn(['/usr/bin/python3', join(repo, 'tests', 'browser', 'gst_whip_publish.py'), `http://${HTTP}/whip/gst`, '25']);
  const located = await waitFor(() => {
    if (gst.exitCode !== null) throw new Error(`GStreamer publisher exited: ${gst.output}`);
    return gst.output.includes('location: /whip/gst/session/');
  }, 15000);
  assert.ok(located, `GStreamer got a WHIP answer: ${gst.output}`);

  const viewer = await openPage(browser, PAGES);
  await viewer.evaluate((u) => window.view(u), `http://${HTTP}/whep/gst`);
  const ok = await waitFor(async () => {
    const s = await viewer.evaluate(() => window.inbound());
    return s.framesDecoded >= 30 && s.audioPackets >= 100 ? s : null;
  }, 10000);
  const last = await viewer.evaluate(() => window.inbound());
  assert.ok(ok, `viewer decodes GStreamer's video and receives its audio; got ${JSON.stringify(last)}; gst: ${gst.output}`);
});
