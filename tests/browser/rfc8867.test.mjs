// RFC 8867 §5.1 over real sockets: a Chromium simulcast publisher, and a Chromium viewer whose
// traffic to volna goes through `volna-impair --profile rfc8867-5.1` (1, 2.5, 0.6 and 1 Mbps from
// 0, 40, 60 and 80 s, 50 ms one-way delay). Every half second it records the link's capacity,
// volna's estimate for the viewer and what the viewer's transport received; the trace is rendered
// by `volna-load --scenario rfc8867-5.1 --trace` into a report and a plot. With
// VOLNA_RFC8867_OUT=DIR they are kept there (docs/load/rfc8867-chromium holds one such run).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Netns, isRoot, repo, startVolna, startPages, launchChromium, openPage, relayStats, waitFor, sleep } from './lib.mjs';

const HTTP = '127.0.0.1:18380';
const MEDIA_PORT = 15300;
const PROXY_PORT = 15399;
const PAGES = 'http://127.0.0.1:18381';
// The load-test tools, built by `cargo build --workspace --bins` beside volna.
const bin = (name) => join(repo, 'target', 'debug', name);
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

// 960×540 at the top: Chromium's fake camera needs about 600 kbps for it, so from 40 s the flow is
// limited by what it has to send, not by the link.
const SIZE = [960, 540];
const ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];
const WIDTHS = [240, 480, 960];
// The §5.1 script: capacity in kbps from each start time in seconds.
const SCRIPT = [[0, 1000], [40, 2500], [60, 600], [80, 1000]];
const capacityAt = (t) => SCRIPT.filter(([from]) => t >= from).at(-1)[1];
const SECONDS = 100;

const log = (...a) => process.env.VOLNA_LOG && console.error(...a);

let ns, browser, pub, viewer;

before(async () => {
  if (skip) return;
  ns = new Netns('rfc');
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

test('RFC 8867 5.1 through the impairment proxy: the estimate follows the capacity, and video keeps playing', { skip, timeout: 240_000 }, async () => {
  await pub.evaluate((u, e, size) => window.publishSimulcast(u, e, size), `http://${HTTP}/whip/rfc`, ENCODINGS, SIZE);
  const sending = await waitFor(async () => {
    const out = await pub.evaluate(() => window.outbound());
    return out.length === 3 && out.every((o) => o.framesEncoded > 30);
  }, 15000);
  assert.ok(sending, 'the publisher sends three layers');
  // The proxy says when its script starts (a busy machine may take a while to start it): samples
  // are timed from then. The viewer connects right after.
  const proxy = ns.spawn([bin('volna-impair'), '--listen', `127.0.0.1:${PROXY_PORT}`, '--target', `127.0.0.1:${MEDIA_PORT}`,
    '--profile', 'rfc8867-5.1', '--seconds', String(SECONDS + 15)]);
  assert.ok(await waitFor(() => proxy.output.includes('volna-impair: started'), 5000, 10), `volna-impair starts: ${proxy.output}`);
  const t0 = Date.now();
  assert.equal(proxy.exitCode, null, `volna-impair runs: ${proxy.output}`);
  const r = await viewer.evaluate((u, via) => window.view(u, false, via), `http://${HTTP}/whep/rfc`, `127.0.0.1 ${PROXY_PORT}`);
  const resource = new URL(r.location).pathname.split('/').at(-1);

  const samples = [];
  const frames = [];
  let lastBytes = await viewer.evaluate(() => window.transportBytes());
  let lastAt = Date.now();
  // A sample every half second of the proxy's script, labelled with its nominal time.
  for (let tick = 1; tick <= SECONDS * 2; tick++) {
    await sleep(Math.max(0, t0 + tick * 500 - Date.now()));
    const [bytes, stats, inbound] = await Promise.all([
      viewer.evaluate(() => window.transportBytes()),
      relayStats(pub, HTTP),
      viewer.evaluate(() => window.inbound()),
    ]);
    const now = Date.now();
    const t = tick / 2;
    const estimate = stats.viewer_estimates.find((e) => e.resource === resource);
    const sample = {
      t,
      // The capacity over the half second the sample covers.
      capacity_kbps: capacityAt(t - 0.25),
      estimate_kbps: estimate ? estimate.kbps : 0,
      delivered_kbps: Math.round(((bytes - lastBytes) * 8) / (now - lastAt)),
      layer: WIDTHS.indexOf(inbound.frameWidth),
    };
    samples.push(sample);
    frames.push({ t, framesDecoded: inbound.framesDecoded, freezeCount: inbound.freezeCount });
    log('rfc8867', JSON.stringify(sample), inbound.frameWidth);
    [lastBytes, lastAt] = [bytes, now];
  }

  const out = process.env.VOLNA_RFC8867_OUT || ns.tempDir();
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'trace.json'), JSON.stringify(samples, null, 1));
  execFileSync(bin('volna-load'), ['--scenario', 'rfc8867-5.1', '--trace', join(out, 'trace.json'), '--out', out]);
  const report = readFileSync(join(out, 'report.md'), 'utf8');
  log(report);
  assert.match(report, /\| 40–60 s \| 2500 \|/, `the report has its phases: ${report}`);

  const during = (from, to) => samples.filter((s) => s.t >= from && s.t < to);
  const max = (l, f) => Math.max(...l.map(f));
  const mean = (l, f) => l.reduce((a, s) => a + f(s), 0) / l.length;
  // Steady at 1 Mbps: the estimate is near the capacity, not over it. How near is a figure (the
  // report's): 950–1000 kbps on a quiet machine, 530–750 where the host takes a third of the CPU
  // time and the browser's stalls read as queueing. Asserted: not over, and not collapsed.
  const first = mean(during(30, 40), (s) => s.estimate_kbps);
  console.log(`estimate at 1 Mbps, 30–40 s: ${first.toFixed(0)} kbps on average`);
  assert.ok(first >= 450 && first <= 1300, `estimate at 1 Mbps, 30–40 s: ${first.toFixed(0)} kbps`);
  const share = (l, f) => l.filter(f).length / l.length;
  // At 2.5 Mbps the top layer fits with room: the estimate holds (it probes only for what the
  // layers could use), and the top layer is what arrives (most of the time: a passing dip, or
  // the publisher's own CPU adaptation, may take it away for a while).
  const held = mean(during(42, 60), (s) => s.estimate_kbps);
  assert.ok(held >= 800, `estimate at 2.5 Mbps: ${held.toFixed(0)} kbps on average`);
  const top = share(during(50, 60), (s) => s.layer === 2);
  assert.ok(top >= 0.6, `the top layer at 2.5 Mbps: ${(top * 100).toFixed(0)}% of the time`);
  // The drop to 0.6 Mbps is followed within 2 s, and the estimate stays near it.
  const followed = max(during(62, 63), (s) => s.estimate_kbps);
  assert.ok(followed <= 900, `estimate 2 s after the drop to 0.6 Mbps: ${followed} kbps; ${JSON.stringify(during(59, 64))}`);
  const dropped = during(62, 80);
  const near = mean(dropped, (s) => s.estimate_kbps);
  assert.ok(near >= 350 && near <= 800, `and near it until 80 s: ${near.toFixed(0)} kbps on average`);
  // Back at 1 Mbps the estimate climbs back.
  const back = max(during(80, SECONDS), (s) => s.estimate_kbps);
  assert.ok(back >= 800, `estimate after the rise back to 1 Mbps: up to ${back} kbps`);
  // Video keeps playing in every phase, with few freezes.
  for (const [from, to] of [[0, 40], [40, 60], [60, 80], [80, SECONDS]]) {
    const f = frames.filter((x) => x.t >= from && x.t < to);
    const decoded = f.at(-1).framesDecoded - f[0].framesDecoded;
    assert.ok(decoded >= (to - from) * 5, `${from}–${to} s: ${decoded} frames decoded`);
  }
  const freezes = frames.at(-1).freezeCount - frames[0].freezeCount;
  assert.ok(freezes <= 4, `freezes over the run: ${freezes}`);
});
