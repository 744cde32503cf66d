// Each video codec volna negotiates, end to end: Chromium publishes with the codec first in its
// offer, a second page watches over WHEP and decodes it (keyframe detection per codec included).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Netns, isRoot, startVolna, startPages, launchChromium, openPage, relayStats, waitFor } from './lib.mjs';

const HTTP = '127.0.0.1:18100';
const MEDIA = '127.0.0.1:15020';
const PAGES = 'http://127.0.0.1:18101';
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let ns, browser;

before(async () => {
  if (skip) return;
  ns = new Netns('codecs');
  await startVolna(ns, { http: HTTP, media: MEDIA });
  await startPages(ns, PAGES.slice(7));
  browser = await launchChromium(ns);
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (ns) await ns.cleanup();
});

for (const codec of ['video/VP9', 'video/H264', 'video/AV1']) {
  test(`${codec} from Chromium reaches a WHEP viewer and decodes`, { skip }, async () => {
    const room = codec.split('/')[1].toLowerCase();
    const pub = await openPage(browser, PAGES);
    const viewer = await openPage(browser, PAGES);
    await pub.evaluate((u, c) => window.publish(u, c), `http://${HTTP}/whip/${room}`, codec);
    await viewer.evaluate((u) => window.view(u), `http://${HTTP}/whep/${room}`);
    const ok = await waitFor(async () => {
      const s = await viewer.evaluate(() => window.inbound());
      return s.framesDecoded >= 30 ? s : null;
    }, 10000);
    const last = await viewer.evaluate(() => window.inbound());
    assert.ok(ok, `viewer decodes ${codec}; got ${JSON.stringify(last)}`);
    assert.equal(last.codec.toLowerCase(), codec.toLowerCase(), 'the viewer receives the publisher codec');
    assert.equal(await pub.evaluate(() => window.hangUp()), 200);
    await pub.close();
    await viewer.close();
    const freed = await waitFor(async () => {
      const p = await browser.newPage();
      const s = await p.goto(`${PAGES}/index.html`).then(() => relayStats(p, HTTP));
      await p.close();
      return s.sessions === 0 ? s : null;
    }, 5000);
    assert.ok(freed, 'sessions freed');
  });
}
