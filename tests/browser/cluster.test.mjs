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

let hub, store, client, browser, redis;
const nodes = [];
const procs = [];
const redisArgs = ['redis-server', '--port', '6379', '--bind', REDIS, '--save', '', '--appendonly', 'no', '--protected-mode', 'no'];

before(async () => {
  if (skip) return;
  hub = new Netns('clhub');
  store = new Netns('clredis');
  store.attach(hub, { addr: REDIS, hubDev: 'hr' });
  await startRedis();
  for (const [i, ip] of NODES.entries()) {
    const ns = new Netns(`cln${i + 1}`);
    ns.attach(hub, { addr: ip, hubDev: `hn${i + 1}` });
    procs[i] = await startVolna(ns, {
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

async function startRedis() {
  redis = store.spawn(redisArgs);
  const up = await waitFor(() => redis.output.includes('Ready to accept connections'), 10000, 100);
  if (!up) throw new Error(`redis-server did not start: ${redis.output}`);
}

/** A demo page of node `i` joined to `room` as `name`. */
async function participant(i, room, name) {
  const p = await browser.newPage();
  await p.goto(`http://${http(i)}/?room=${room}`);
  await p.evaluate((r, n) => window.app.join(r, n), room, name);
  return p;
}

/** Remote videos a page decodes (at least `frames` frames each), and remote audios flowing. */
async function receiving(p, frames = 30) {
  const list = await p.evaluate(() => window.app.inbound());
  return {
    videos: list.filter((t) => t.kind === 'video' && t.framesDecoded >= frames).length,
    audios: list.filter((t) => t.kind === 'audio' && t.packetsReceived >= 50).length,
    frames: list.filter((t) => t.kind === 'video').reduce((n, t) => n + t.framesDecoded, 0),
    list,
  };
}

const curlStatus = (args) => client.exec(['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', ...args]).trim();

after(async () => {
  if (browser) await browser.close().catch(() => {});
  for (const ns of [client, ...nodes, store, hub]) if (ns) await ns.cleanup();
});

// First, while nothing else crosses the links: three simulcast layers at 15 frames a second (as
// in simulcast.test.mjs); a viewer behind 300 kbit/s takes the lowest, one with room the top one.
const ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 2, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 1.5, maxBitrate: 400_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 900_000 },
];

test('simulcast over a link: the layers node 2\'s viewers need cross, and the top one stops within 2 s of its last viewer leaving', { skip, timeout: 120000 }, async () => {
  // The capped viewer: a namespace of its own whose side of the bridge sends at most 300 kbit/s.
  const capped = new Netns('clc2');
  capped.attach(hub, { addr: '10.79.0.21', hubDev: 'hc2' });
  let browser2;
  try {
    hub.exec(['tc', 'qdisc', 'replace', 'dev', 'hc2', 'root', 'tbf', 'rate', '300kbit', 'burst', '16kbit', 'latency', '200ms']);
    await startPages(capped, PAGES.slice(7));
    browser2 = await launchChromium(capped);
    const pub = await openPage(browser, PAGES);
    await pub.evaluate((u, e) => window.publishSimulcast(u, e, [960, 540], 15), `http://${http(0)}/whip/layers`, ENCODINGS);
    const sending = await waitFor(async () => {
      const out = await pub.evaluate(() => window.outbound());
      return out.length === 3 && out.every((o) => o.framesEncoded > 30);
    }, 20000, 500);
    assert.ok(sending, `three layers sent: ${JSON.stringify(await pub.evaluate(() => window.outbound()))}`);
    const near = await openPage(browser, PAGES);
    await near.evaluate((u) => window.view(u), `http://${http(1)}/whep/layers`);
    const far = await openPage(browser2, PAGES);
    await far.evaluate((u) => window.view(u), `http://${http(1)}/whep/layers`);
    const link = () => JSON.parse(client.exec(['curl', '-fsS', `http://${http(0)}/cluster`])).links.find((l) => l.peer === 'n2');
    // Each viewer decodes its own layer of what crossed: the top one, and a smaller one.
    const settled = await waitFor(async () => {
      const [n, f] = [await near.evaluate(() => window.inbound()), await far.evaluate(() => window.inbound())];
      return n.frameWidth >= 960 && f.framesDecoded > 30 && f.frameWidth > 0 && f.frameWidth < 960 ? { n, f } : null;
    }, 40000, 500);
    assert.ok(settled, `near decodes the top layer, far a lower one: ${JSON.stringify(await near.evaluate(() => window.inbound()))} ${JSON.stringify(await far.evaluate(() => window.inbound()))}`);
    // Audio and the three layers cross (the uncapped viewer wants the top one, and the layers
    // below it stay for stepping down).
    const before = link();
    assert.equal(before.streams_sent, 4, JSON.stringify(before));
    await near.evaluate(() => window.hangUp());
    const left = Date.now();
    const fewer = await waitFor(() => {
      const l = link();
      return l.streams_sent < before.streams_sent ? l : null;
    }, 5000, 100);
    const took = Date.now() - left;
    console.log(`the top layer stopped crossing ${took} ms after its last viewer left: ${JSON.stringify(fewer)}`);
    assert.ok(fewer, `the link sends fewer layers: ${JSON.stringify(link())}`);
    assert.ok(took <= 2000, `within 2 s, not ${took} ms`);
    // The capped viewer goes on with what still crosses.
    const f0 = (await far.evaluate(() => window.inbound())).framesDecoded;
    await new Promise((r) => setTimeout(r, 2000));
    const f1 = await far.evaluate(() => window.inbound());
    assert.ok(f1.framesDecoded > f0 + 10, `the capped viewer keeps decoding: ${f0} -> ${JSON.stringify(f1)}`);
    for (const p of [pub, far]) await p.evaluate(() => window.hangUp());
    for (const p of [pub, near, far]) await p.close();
  } finally {
    if (browser2) await browser2.close().catch(() => {});
    await capped.cleanup();
  }
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

test('a speaker on node 1 is the active speaker for a watcher on node 2', { skip, timeout: 60000 }, async () => {
  const ada = await participant(0, 'speak', 'Ada');
  const watcher = await browser.newPage();
  await watcher.goto(`http://${http(1)}/?room=speak`);
  await watcher.evaluate(() => window.app.join('speak', 'Wes', null, { publish: false }));
  const relayed = await waitFor(() => watcher.evaluate(() => [...window.app.participants.values()].find((p) => p.info.name === 'Ada')?.info.id), 10000, 200);
  assert.ok(relayed, 'Ada relayed to node 2');
  // Her audio level crosses the link with her audio: node 2 picks her as the active speaker.
  const spoke = await waitFor(() => watcher.evaluate((id) => window.app.speaker === id, relayed), 10000, 200);
  assert.ok(spoke, `active speaker on node 2: ${await watcher.evaluate(() => window.app.speaker)}`);
  for (const p of [ada, watcher]) await p.close();
});

test('Redis stopped for 30 s: a cross-node call goes on, new sessions get 503, then work again', { skip, timeout: 120000 }, async () => {
  const a = await participant(0, 'outage', 'Ana');
  const b = await participant(1, 'outage', 'Ben');
  for (const p of [a, b]) {
    assert.ok(await waitFor(async () => (await receiving(p)).videos >= 1, 30000, 500), 'decoding before the outage');
  }
  redis.kill('SIGKILL');
  let restarted = false;
  try {
    const start = Date.now();
    const whip = ['-X', 'POST', '-H', 'Content-Type: application/sdp', '--data-binary', 'v=0', `http://${http(0)}/whip/outage`];
    assert.ok(await waitFor(() => curlStatus(whip) === '503', 5000, 200), 'a new WHIP gets 503 without Redis');
    // Each node notices at its own next heartbeat: wait for node 2 too before joining there.
    const down = await waitFor(() => JSON.parse(client.exec(['curl', '-fsS', `http://${http(1)}/cluster`])).redis.connected === false, 5000, 200);
    assert.ok(down, 'node 2 sees Redis gone');
    const refused = await a.evaluate(async (u) => {
      const ws = new WebSocket(u);
      await new Promise((r) => { ws.onopen = r; });
      ws.send(JSON.stringify({ type: 'join', v: 1, room: 'outage', name: 'Late', id: 1 }));
      const m = await new Promise((r) => { ws.onmessage = (e) => r(JSON.parse(e.data)); });
      ws.close();
      return m;
    }, `ws://${http(1)}/rtc`);
    assert.equal(refused.code, 503, JSON.stringify(refused));
    assert.equal(refused.reason, 'cluster_unavailable');
    // Media keeps flowing both ways for the whole outage.
    let before = [await receiving(a), await receiving(b)].map((r) => r.frames);
    while (Date.now() - start < 30000) {
      await new Promise((r) => setTimeout(r, 5000));
      const now = [await receiving(a), await receiving(b)].map((r) => r.frames);
      assert.ok(now[0] > before[0] + 20 && now[1] > before[1] + 20, `frames keep growing without Redis: ${before} -> ${now}`);
      before = now;
    }
    await startRedis();
    restarted = true;
    const c = await waitFor(async () => {
      try {
        return await participant(2, 'outage', 'Cai');
      } catch {
        return null;
      }
    }, 10000, 1000);
    assert.ok(c, 'a new participant joins once Redis is back, no node restarted');
    assert.ok(await waitFor(async () => (await receiving(c)).videos >= 2, 30000, 500), `the newcomer decodes both: ${JSON.stringify((await receiving(c)).list)}`);
    for (const p of [a, b, c]) await p.close();
  } finally {
    // The tests after this one need Redis, whatever happened here.
    if (!restarted) await startRedis();
  }
});

test('SIGKILL of node 2: the others see its participants leave within 3 s, its clients come back elsewhere within 10 s', { skip, timeout: 120000 }, async () => {
  const pages = [await participant(0, 'loss', 'A'), await participant(1, 'loss', 'B'), await participant(2, 'loss', 'C')];
  for (const p of pages) {
    assert.ok(await waitFor(async () => (await receiving(p)).videos >= 2, 30000, 500), `decoding two others: ${JSON.stringify((await receiving(p)).list)}`);
  }
  const idOf = (p, name) => p.evaluate((n) => [...window.app.participants.values()].find((x) => x.info.name === n)?.info.id, name);
  const oldB = await idOf(pages[0], 'B');
  assert.ok(oldB && (await idOf(pages[2], 'B')) === oldB, 'B has the same id on nodes 1 and 3');
  procs[1].kill('SIGKILL');
  const killed = Date.now();
  for (const p of [pages[0], pages[2]]) {
    const gone = await waitFor(() => p.evaluate((id) => !window.app.participants.has(id), oldB), 5000, 100);
    assert.ok(gone, 'B left');
  }
  const left = Date.now() - killed;
  console.log(`node 2 killed: its participant left the others' rooms after ${left} ms`);
  assert.ok(left <= 3000, `within 3 s, not ${left} ms`);
  // B's page reconnects to a fallback node by itself, publishes again and decodes the others.
  const back = await waitFor(async () => {
    const r = await receiving(pages[1], 10);
    const seen = await Promise.all([pages[0], pages[2]].map(async (p) => {
      const id = await idOf(p, 'B');
      const mine = (await receiving(p, 10)).list.filter((t) => t.kind === 'video' && t.framesDecoded >= 10 && id && t.track && t.track.startsWith(id));
      return id && id !== oldB && mine.length > 0;
    }));
    return r.videos >= 2 && seen.every(Boolean);
  }, 10000 - (Date.now() - killed), 250);
  const events = await pages[1].evaluate(() => window.app.events.filter((e) => ['fallback', 'recovered'].includes(e.type)));
  assert.ok(back, `B back with media both ways within 10 s: ${JSON.stringify(events)}`);
  console.log(`node 2's client back with media ${Date.now() - killed} ms after the kill: ${JSON.stringify(events)}`);
  for (const p of pages) await p.close();
});

test('drain: not ready at once, new WHIP redirected, the call goes on, exit 0 when it ends', { skip, timeout: 90000 }, async () => {
  const pub = await openPage(browser, PAGES);
  await pub.evaluate((u) => window.publish(u), `http://${http(2)}/whip/drain`);
  const viewer = await openPage(browser, PAGES);
  await viewer.evaluate((u) => window.view(u), `http://${http(2)}/whep/drain`);
  assert.ok(await waitFor(async () => (await viewer.evaluate(() => window.inbound())).framesDecoded >= 30, 20000, 250), 'decoding on node 3');
  assert.equal(curlStatus(['-X', 'POST', `http://${http(2)}/admin/drain`]), '202');
  assert.equal(curlStatus([`http://${http(2)}/health/ready`]), '503');
  assert.equal(curlStatus([`http://${http(2)}/health`]), '200');
  // A new publisher is sent to node 1 (node 2 is gone) and publishes there.
  const moved = await openPage(browser, PAGES);
  const r = await moved.evaluate((u) => window.publish(u), `http://${http(2)}/whip/drain2`);
  assert.ok(r.location.startsWith(`http://${http(0)}/whip/drain2/session/`), r.location);
  // The call in progress goes on.
  const f0 = (await viewer.evaluate(() => window.inbound())).framesDecoded;
  await new Promise((res) => setTimeout(res, 2000));
  const f1 = (await viewer.evaluate(() => window.inbound())).framesDecoded;
  assert.ok(f1 > f0 + 20, `still decoding while draining: ${f0} -> ${f1}`);
  assert.equal(procs[2].exitCode, null, 'still running with a call');
  // The call ends (both close their connections): the node exits 0.
  for (const p of [pub, viewer]) await p.evaluate(() => window.pc.close());
  const exited = await waitFor(() => procs[2].exitCode !== null, 15000, 200);
  assert.ok(exited, 'node 3 exited after its last call');
  assert.equal(procs[2].exitCode, 0);
  for (const p of [pub, viewer, moved]) await p.close();
});
