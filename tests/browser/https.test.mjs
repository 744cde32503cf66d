// The demo page over HTTPS and its room protocol over WSS, served by volna itself ([http]
// tls_cert and tls_key, a self-signed certificate made here with openssl; Chromium told to accept
// it): two participants join and decode each other's audio and video.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Netns, isRoot, launchChromium, startVolna, waitFor } from './lib.mjs';

const HTTP = '127.0.0.1:18120';
const MEDIA = '127.0.0.1:15040';
const ROOM = 'secure';
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let ns, browser;

before(async () => {
  if (skip) return;
  ns = new Netns('https');
  const dir = ns.tempDir();
  const [cert, key, config] = ['cert.pem', 'key.pem', 'volna.toml'].map((f) => join(dir, f));
  ns.exec(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost']);
  writeFileSync(config, `[http]\ntls_cert = "${cert}"\ntls_key = "${key}"\n[quic]\nenabled = false\n`);
  await startVolna(ns, { http: HTTP, media: MEDIA, extra: ['--config', config], https: true });
  browser = await launchChromium(ns, { args: ['--ignore-certificate-errors'] });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (ns) await ns.cleanup();
});

test('two participants call each other through the demo page over HTTPS and WSS', { skip, timeout: 60000 }, async () => {
  const pages = [];
  for (const name of ['Ada', 'Brook']) {
    const page = await browser.newPage();
    await page.goto(`https://${HTTP}/?room=${ROOM}`);
    await page.evaluate((room, n) => window.app.join(room, n), ROOM, name);
    pages.push(page);
  }
  for (const page of pages) {
    // A secure context: the camera opened, and the room protocol runs over wss://.
    const where = await page.evaluate(() => ({ secure: window.isSecureContext, ws: window.app.ws.url }));
    assert.equal(where.secure, true);
    assert.ok(where.ws.startsWith(`wss://${HTTP}/rtc`), where.ws);
    const got = await waitFor(async () => {
      const list = await page.evaluate(() => window.app.inbound());
      const video = list.some((t) => t.kind === 'video' && t.framesDecoded > 10);
      const audio = list.some((t) => t.kind === 'audio' && t.packetsReceived > 50);
      return video && audio ? list : null;
    }, 20000, 500);
    assert.ok(got, `decodes the other's audio and video: ${JSON.stringify(await page.evaluate(() => window.app.inbound()))}`);
  }
});
