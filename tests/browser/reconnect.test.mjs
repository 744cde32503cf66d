// Calls that come back by themselves: two demo pages in a call lose all media (UDP to and from the
// relay dropped with nftables) for longer than the relay's consent timeout. The relay ends their
// media connections and sends `408 media_lost`; each page shows it, joins again with its `resume`
// secret and publishes again. Within 10 s of the network coming back both decode each other
// again, and neither ever saw the other leave: only `participant_reconnecting`, then back.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Netns, isRoot, startVolna, launchChromium, waitFor, sleep } from './lib.mjs';

const HTTP = '127.0.0.1:18420';
const MEDIA_PORT = 15420;
const ROOM = 'again';
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let ns, browser;

before(async () => {
  if (skip) return;
  ns = new Netns('reconnect');
  // A short consent timeout, so a few seconds without UDP end the media connections.
  const config = join(ns.tempDir(), 'volna.toml');
  writeFileSync(config, '[media]\nconsent_timeout_secs = 3\nreconnect_secs = 10\n');
  await startVolna(ns, { http: HTTP, media: `127.0.0.1:${MEDIA_PORT}`, extra: ['--config', config] });
  browser = await launchChromium(ns);
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (ns) await ns.cleanup();
});

async function open(name) {
  const page = await browser.newPage();
  page.on('console', (m) => process.env.VOLNA_LOG && process.stderr.write(`[${name}] ${m.text()}\n`));
  await page.goto(`http://${HTTP}/?room=${ROOM}`);
  const id = await page.evaluate((r, n) => window.app.join(r, n).then((j) => j.participant.id), ROOM, name);
  return { page, id, name };
}

/** Frames decoded from `other`'s video on `peer`'s page. */
const framesFrom = (peer, other) => peer.page.evaluate(async (id) => (await window.app.inbound())
  .filter((t) => t.kind === 'video' && t.track && t.track.startsWith(`${id}-`))
  .reduce((n, t) => n + t.framesDecoded, 0), other.id);

const events = (peer, type) => peer.page.evaluate((t) => window.app.events.filter((e) => e.type === t), type);

test('media lost for longer than the consent timeout: both pages come back by themselves within 10 s', { skip, timeout: 90000 }, async () => {
  const x = await open('Xan');
  const y = await open('Yun');
  for (const [a, b] of [[x, y], [y, x]]) {
    assert.ok(await waitFor(async () => (await framesFrom(a, b)) > 20, 10000), `${a.name} decodes ${b.name}`);
  }
  // UDP to and from the relay's media port is dropped for 6 s (the consent timeout is 3 s).
  ns.exec(['nft', 'add', 'table', 'inet', 'cut']);
  ns.exec(['nft', 'add', 'chain', 'inet', 'cut', 'out', '{ type filter hook output priority 0 ; }']);
  // (One UDP port per worker, from MEDIA_PORT up.)
  const ports = `${MEDIA_PORT}-${MEDIA_PORT + 15}`;
  ns.exec(['nft', 'add', 'rule', 'inet', 'cut', 'out', 'udp', 'dport', ports, 'drop']);
  ns.exec(['nft', 'add', 'rule', 'inet', 'cut', 'out', 'udp', 'sport', ports, 'drop']);
  await sleep(6000);
  const lost = await Promise.all([x, y].map((p) => events(p, 'error')));
  ns.exec(['nft', 'delete', 'table', 'inet', 'cut']);
  const back = Date.now();
  for (const [p, errs] of [[x, lost[0]], [y, lost[1]]]) {
    assert.ok(errs.some((e) => e.code === 408 && e.reason === 'media_lost'), `${p.name} was told its media was lost: ${JSON.stringify(errs)}`);
  }
  for (const p of [x, y]) {
    const shown = (await events(p, 'status')).map((e) => e.text);
    assert.ok(shown.some((t) => /media_lost/.test(t)), `${p.name}'s page said the connection was lost: ${JSON.stringify(shown)}`);
  }
  // Both come back and decode each other again within 10 s.
  // (After coming back the receiving connection is new: its frame count starts from 0.)
  for (const [a, b] of [[x, y], [y, x]]) {
    const ok = await waitFor(async () => (await events(a, 'recovered')).length > 0 && (await framesFrom(a, b)) > 20, 10000 - (Date.now() - back), 250);
    assert.ok(ok, `${a.name} decodes ${b.name} again within 10 s (frames now ${await framesFrom(a, b)}; ${JSON.stringify(await events(a, 'recovered'))})`);
  }
  console.log(`both decode each other again ${Date.now() - back} ms after the network came back`);
  for (const [a, b] of [[x, y], [y, x]]) {
    const how = await events(a, 'recovered');
    assert.equal(how.at(-1).how, 'resumed', `${a.name} came back as the same participant`);
    const left = (await events(a, 'participant_left')).filter((e) => e.participant === b.id);
    assert.deepEqual(left, [], `${a.name} never saw ${b.name} leave`);
    assert.equal(await a.page.evaluate(() => window.app.me.id), a.id, 'same participant id');
  }
});

test('ICE restart in the room protocol: both connections restart and media goes on', { skip, timeout: 30000 }, async () => {
  const x = await open('Xia');
  const y = await open('Yoko');
  for (const [a, b] of [[x, y], [y, x]]) {
    assert.ok(await waitFor(async () => (await framesFrom(a, b)) > 20, 10000), `${a.name} decodes ${b.name}`);
  }
  const ufrags = () => x.page.evaluate(() => [window.app.pub, window.app.sub].map((pc) => pc.remoteDescription.sdp.match(/a=ice-ufrag:(\S+)/)[1]));
  const before = await ufrags();
  await x.page.evaluate(() => window.app.restartIce());
  // The receiving connection's restart comes as a new offer: wait for its new credentials.
  const after = await waitFor(async () => {
    const u = await ufrags();
    return u[0] !== before[0] && u[1] !== before[1] ? u : null;
  }, 5000, 100);
  assert.ok(after, `volna's credentials changed on both connections: ${JSON.stringify(before)} -> ${JSON.stringify(await ufrags())}`);
  const connected = await waitFor(() => x.page.evaluate(() => [window.app.pub, window.app.sub].every((pc) => pc.connectionState === 'connected')), 5000, 100);
  assert.ok(connected, 'both connections are connected after the restart');
  const [fx, fy] = [await framesFrom(x, y), await framesFrom(y, x)];
  assert.ok(await waitFor(async () => (await framesFrom(x, y)) > fx + 20 && (await framesFrom(y, x)) > fy + 20, 5000, 200), 'both keep decoding each other');
  for (const p of [x, y]) {
    const errs = await events(p, 'error');
    assert.deepEqual(errs, [], `${p.name} got no errors`);
  }
  for (const p of [x, y]) await p.page.evaluate(() => window.app.leave());
});
