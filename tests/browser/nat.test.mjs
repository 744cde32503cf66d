// A relay behind a 1:1 NAT, as on a cloud VM: it binds a private address (10.77.1.1) and
// advertises the public one (media.advertise = 203.0.113.10), which only a DNAT rule on the way
// in leads to. Chromium, in a namespace of its own whose route goes through the NAT, publishes
// over WHIP and watches over WHEP at the public address: the answer's candidate is the public
// address, ICE and media go through the rule, and the viewer decodes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Netns, isRoot, startVolna, startPages, launchChromium, openPage, waitFor } from './lib.mjs';

const PUBLIC = '203.0.113.10';
const PRIVATE = '10.77.1.1';
const HTTP_PORT = 18130;
const MEDIA_PORT = 15050;
const PAGES = 'http://127.0.0.1:18131';
const skip = isRoot() ? false : 'skipped: needs root (network namespaces)';
if (skip) console.log(skip);

let relay, client, browser;

before(async () => {
  if (skip) return;
  relay = new Netns('natr');
  client = new Netns('natc');
  // client 10.77.0.2 -- 10.77.0.1 relay host, whose own address is the private one.
  relay.link(client, { devA: 'wan0', devB: 'lan0', a: '10.77.0.1', b: '10.77.0.2' });
  client.exec(['ip', 'route', 'add', 'default', 'via', '10.77.0.1']);
  // (A veth pair with both ends here holds it: this kernel has no dummy devices.)
  relay.exec(['ip', 'link', 'add', 'priv0', 'type', 'veth', 'peer', 'name', 'priv1']);
  relay.exec(['ip', 'addr', 'add', `${PRIVATE}/32`, 'dev', 'priv0']);
  relay.exec(['ip', 'link', 'set', 'priv0', 'up']);
  relay.exec(['ip', 'link', 'set', 'priv1', 'up']);
  // The 1:1 NAT: what comes for the public address goes to the private one (replies are
  // translated back by connection tracking); the private address is not reachable from outside
  // but through it.
  const rules = join(relay.tempDir(), 'nat.nft');
  writeFileSync(rules, `table ip volna_nat {
  chain pre {
    type nat hook prerouting priority -100;
    ip daddr ${PUBLIC} dnat to ${PRIVATE}
  }
  chain in {
    type filter hook input priority 0;
    iifname "wan0" ip daddr ${PRIVATE} ct status & dnat == 0 drop
  }
}
`);
  relay.exec(['nft', '-f', rules]);
  const config = join(relay.tempDir(), 'volna.toml');
  writeFileSync(config, `[media]\nadvertise = ["${PUBLIC}"]\n[quic]\nenabled = false\n`);
  await startVolna(relay, { http: `${PRIVATE}:${HTTP_PORT}`, media: `${PRIVATE}:${MEDIA_PORT}`, extra: ['--config', config] });
  await startPages(client, PAGES.slice(7));
  browser = await launchChromium(client);
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (client) await client.cleanup();
  if (relay) await relay.cleanup();
});

test('a relay behind a 1:1 NAT, reached at its advertised public address', { skip, timeout: 60000 }, async () => {
  const base = `http://${PUBLIC}:${HTTP_PORT}`;
  // Nothing reaches the private address from the client's side but through the rule.
  assert.throws(() => client.exec(['curl', '-fsS', '-m', '2', `http://${PRIVATE}:${HTTP_PORT}/health`]));
  assert.match(client.exec(['curl', '-fsS', `${base}/health`]), /ok/);
  const pub = await openPage(browser, PAGES);
  const viewer = await openPage(browser, PAGES);
  await pub.evaluate((u) => window.publish(u), `${base}/whip/nat`);
  await viewer.evaluate((u) => window.view(u), `${base}/whep/nat`);
  const candidates = await viewer.evaluate(() => window.pc.remoteDescription.sdp.split('\r\n').filter((l) => l.startsWith('a=candidate')));
  // The UDP candidate, then the passive ICE-TCP one at the same public address and port number.
  assert.deepEqual(candidates.map((c) => { const f = c.split(' '); return [f[2], f[4], f[5]].join(':'); }), [`udp:${PUBLIC}:${MEDIA_PORT}`, `tcp:${PUBLIC}:${MEDIA_PORT}`]);
  const decoded = await waitFor(async () => {
    const s = await viewer.evaluate(() => window.inbound());
    return s.framesDecoded > 30 ? s : null;
  }, 20000, 500);
  assert.ok(decoded, `the viewer decodes: ${JSON.stringify(await viewer.evaluate(() => window.inbound()))}`);
  // The pair ICE chose: the public address.
  const remote = await viewer.evaluate(async () => {
    const stats = await window.pc.getStats();
    let pair;
    stats.forEach((s) => { if (s.type === 'transport') pair = stats.get(s.selectedCandidatePairId); });
    return pair && stats.get(pair.remoteCandidateId).address;
  });
  assert.equal(remote, PUBLIC);
});
