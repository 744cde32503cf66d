// Rooms across nodes: three volna nodes and Debian's redis-server, each in a network namespace
// of its own on one bridge, and Chromium in another. Media crosses nodes over the relay links
// (docs/cluster.md): a WHIP publisher on node 1 is watched over WHEP on nodes 2 and 3, and two
// demo-page participants on node 1 and two on node 2 each decode the other three.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Netns, isRoot, startVolna, startPages, launchChromium, openPage, waitFor } from './lib.mjs';

const REDIS = '10.79.0.5';
const NODES = ['10.79.0.11', '10.79.0.12', '10.79.0.13'];
const http = (i) => `${NODES[i]}:18150`;
const PAGES = 'http://127.0.0.1:18151';
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let hub, store, client, browser;
const nodes = [];

before(async () => {
  if (skip) return;
  hub = new Netns('clhub');
  store = new Netns('clredis');
  store.attach(hub, { addr: REDIS, hubDev: 'hr' });
  const redis = store.spawn(['redis-server', '--port', '6379', '--bind', REDIS, '--save', '', '--appendonly', 'no', '--protected-mode', 'no']);
  const up = await waitFor(() => redis.output.includes('Ready to accept connections'), 10000, 100);
  if (!up) throw new Error(`redis-server did not start: ${redis.output}`);
  for (const [i, ip] of NODES.entries()) {
    const ns = new Netns(`cln${i + 1}`);
    ns.attach(hub, { addr: ip, hubDev: `hn${i + 1}` });
    await startVolna(ns, {
      http: http(i),
      media: `${ip}:15070`,
      extra: ['--redis', `redis://${REDIS}:6379`, '--node-id', `n${i + 1}`, '--relay', `${ip}:7000`, '--quic', `${ip}:0`],
    });
    nodes.push(ns);
  }
  client = new Netns('clc');
  client.attach(hub, { addr: '10.79.0.20', hubDev: 'hc' });
  await startPages(client, PAGES.slice(7));
  // The demo page needs a secure context for the camera; these origins are plain HTTP.
  const origins = NODES.map((_, i) => `http://${http(i)}`).join(',');
  browser = await launchChromium(client, { args: [`--unsafely-treat-insecure-origin-as-secure=${origins}`] });
  // All three know each other before the calls start.
  const seen = await waitFor(() => {
    const c = JSON.parse(client.exec(['curl', '-fsS', `http://${http(0)}/cluster`]));
    return c.nodes.length === 3;
  }, 10000, 250);
  assert.ok(seen, 'three live nodes');
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  for (const ns of [client, ...nodes, store, hub]) if (ns) await ns.cleanup();
});

test('a WHIP publisher on node 1, WHEP viewers on nodes 2 and 3: both decode', { skip, timeout: 90000 }, async () => {
  const pub = await openPage(browser, PAGES);
  await pub.evaluate((u) => window.publish(u), `http://${http(0)}/whip/stage`);
  const viewers = [];
  for (const i of [1, 2]) {
    const v = await openPage(browser, PAGES);
    await v.evaluate((u) => window.view(u), `http://${http(i)}/whep/stage`);
    viewers.push(v);
  }
  for (const [k, v] of viewers.entries()) {
    const ok = await waitFor(async () => {
      const s = await v.evaluate(() => window.inbound());
      return s.framesDecoded >= 30 && s.audioPackets >= 100 ? s : null;
    }, 30000, 500);
    assert.ok(ok, `viewer on node ${k + 2} decodes: ${JSON.stringify(await v.evaluate(() => window.inbound()))}`);
  }
  const c = JSON.parse(client.exec(['curl', '-fsS', `http://${http(0)}/cluster`]));
  const peers = c.links.map((l) => l.peer).sort();
  assert.deepEqual(peers, ['n2', 'n3'], JSON.stringify(c.links));
  assert.ok(c.links.every((l) => l.datagrams_sent > 100), `media crossed the links: ${JSON.stringify(c.links)}`);
  for (const p of [pub, ...viewers]) await p.close();
});

test('two participants on node 1 and two on node 2 each decode the other three', { skip, timeout: 90000 }, async () => {
  const pages = [];
  for (const [name, i] of [['Ada', 0], ['Bo', 0], ['Cy', 1], ['Di', 1]]) {
    const p = await browser.newPage();
    await p.goto(`http://${http(i)}/?room=span`);
    await p.evaluate((n) => window.app.join('span', n), name);
    pages.push(p);
  }
  for (const [k, p] of pages.entries()) {
    const ok = await waitFor(async () => {
      const list = await p.evaluate(() => window.app.inbound());
      const videos = list.filter((t) => t.kind === 'video' && t.framesDecoded >= 30).length;
      const audios = list.filter((t) => t.kind === 'audio' && t.packetsReceived >= 100).length;
      return videos >= 3 && audios >= 3;
    }, 40000, 500);
    assert.ok(ok, `participant ${k} decodes the other three: ${JSON.stringify(await p.evaluate(() => window.app.inbound()))}`);
  }
  // Each sees the other three by name.
  const names = await pages[0].evaluate(() => [...window.app.participants.values()].map((p) => p.info.name).sort());
  assert.deepEqual(names, ['Bo', 'Cy', 'Di']);
  for (const p of pages) await p.close();
});
