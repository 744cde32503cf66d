// Helpers for the end-to-end tests: a network namespace per test file, the relay and the clients
// started inside it, and polling with deadlines. Everything started here is stopped in `cleanup`.
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, writeFileSync, chmodSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, '..', '..');
export const volnaBin = process.env.VOLNA_BIN || join(repo, 'target', 'debug', 'volna');
export const clientBin = process.env.VOLNA_CLIENT_BIN || join(repo, 'target', 'debug', 'volna-client');

export function isRoot() {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

export class Netns {
  constructor(tag, { veth } = {}) {
    this.name = `volna-${tag}-${process.pid}`;
    this.procs = [];
    this.dirs = [];
    execFileSync('ip', ['netns', 'add', this.name]);
    this.exec(['ip', 'link', 'set', 'lo', 'up']);
    if (veth) {
      // libnice-based clients skip loopback: give them an address of their own on a veth pair.
      this.exec(['ip', 'link', 'add', 'vt0', 'type', 'veth', 'peer', 'name', 'vt1']);
      this.exec(['ip', 'addr', 'add', `${veth}/24`, 'dev', 'vt0']);
      this.exec(['ip', 'link', 'set', 'vt0', 'up']);
      this.exec(['ip', 'link', 'set', 'vt1', 'up']);
    }
  }

  /** A veth pair from this namespace (address `a` on `devA`) to `other` (address `b`). */
  link(other, { devA, devB, a, b }) {
    this.exec(['ip', 'link', 'add', devA, 'type', 'veth', 'peer', 'name', devB]);
    this.exec(['ip', 'link', 'set', devB, 'netns', other.name]);
    this.exec(['ip', 'addr', 'add', `${a}/24`, 'dev', devA]);
    this.exec(['ip', 'link', 'set', devA, 'up']);
    other.exec(['ip', 'addr', 'add', `${b}/24`, 'dev', devB]);
    other.exec(['ip', 'link', 'set', devB, 'up']);
  }

  /**
   * Puts this namespace on `hub`'s bridge (made on first use), with address `addr` (a /24) on
   * its end `dev`; `hubDev` names the bridge's end.
   */
  attach(hub, { addr, hubDev, dev = 'eth0' }) {
    if (!hub.bridged) {
      hub.exec(['ip', 'link', 'add', 'br0', 'type', 'bridge']);
      hub.exec(['ip', 'link', 'set', 'br0', 'up']);
      hub.bridged = true;
    }
    hub.exec(['ip', 'link', 'add', hubDev, 'type', 'veth', 'peer', 'name', dev]);
    hub.exec(['ip', 'link', 'set', dev, 'netns', this.name]);
    hub.exec(['ip', 'link', 'set', hubDev, 'master', 'br0']);
    hub.exec(['ip', 'link', 'set', hubDev, 'up']);
    this.exec(['ip', 'addr', 'add', `${addr}/24`, 'dev', dev]);
    this.exec(['ip', 'link', 'set', dev, 'up']);
  }

  exec(argv) {
    return execFileSync('ip', ['netns', 'exec', this.name, ...argv], { encoding: 'utf8' });
  }

  spawn(argv, { log } = {}) {
    const p = spawn('ip', ['netns', 'exec', this.name, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    p.output = '';
    const keep = (d) => {
      p.output += d.toString();
      if (log) process.stderr.write(`[${log}] ${d}`);
    };
    p.stdout.on('data', keep);
    p.stderr.on('data', keep);
    this.procs.push(p);
    return p;
  }

  tempDir() {
    const d = mkdtempSync(join(tmpdir(), 'volna-test-'));
    this.dirs.push(d);
    return d;
  }

  async cleanup() {
    for (const p of this.procs.reverse()) {
      if (p.exitCode === null) p.kill('SIGKILL');
    }
    await sleep(200);
    try {
      execFileSync('ip', ['netns', 'del', this.name]);
    } catch (e) {
      process.stderr.write(`netns del ${this.name}: ${e}\n`);
    }
    for (const d of this.dirs) rmSync(d, { recursive: true, force: true });
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value or `ms` passes; returns the last value. */
export async function waitFor(fn, ms, every = 250) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(every);
  }
  return last;
}

/** Starts volna in the namespace and waits for /health. */
export async function startVolna(ns, { http, media, extra = [], https = false }) {
  const p = ns.spawn([volnaBin, '--http', http, '--media', media, ...extra], { log: process.env.VOLNA_LOG ? 'volna' : undefined });
  const ok = await waitFor(() => {
    if (p.exitCode !== null) throw new Error(`volna exited: ${p.output}`);
    try {
      // (With https, its certificate is the test's own: not checked.)
      const url = `${https ? 'https' : 'http'}://${http}/health`;
      return ns.exec(['curl', '-fsS', ...(https ? ['-k'] : []), url]).includes('ok');
    } catch {
      return false;
    }
  }, 15000);
  if (!ok) throw new Error(`volna did not start: ${p.output}`);
  return p;
}

/** Serves pages/ from inside the namespace on a second origin (so CORS is exercised). */
export async function startPages(ns, addr) {
  const [host, port] = addr.split(':');
  const p = ns.spawn(['python3', '-m', 'http.server', port, '--bind', host, '--directory', join(here, 'pages')]);
  const ok = await waitFor(() => {
    try {
      return ns.exec(['curl', '-fsS', `http://${addr}/index.html`]).includes('volna');
    } catch {
      return false;
    }
  }, 10000);
  if (!ok) throw new Error(`page server did not start: ${p.output}`);
  return p;
}

/** Launches Debian's Chromium inside the namespace, driven over a pipe. */
export async function launchChromium(ns, { args = [] } = {}) {
  const dir = ns.tempDir();
  const wrapper = join(dir, 'chromium-in-netns');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns.name} /usr/bin/chromium "$@"\n`);
  chmodSync(wrapper, 0o755);
  return puppeteer.launch({
    executablePath: wrapper,
    pipe: true,
    headless: true,
    userDataDir: join(dir, 'profile'),
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-quic',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required',
      ...args,
    ],
  });
}

/**
 * Launches Debian's Firefox ESR inside the namespace, driven over WebDriver BiDi. Firefox gathers
 * no ICE candidates when the namespace has only loopback: give it an address on a veth pair (both
 * ends in the namespace) and a default route. Its BiDi socket listens on the namespace's loopback:
 * a forwarder on this side's loopback, on the same port, reaches it through `ip netns exec`.
 * `prefs` are added to the profile's.
 */
export async function launchFirefox(ns, { prefs = {} } = {}) {
  const dir = ns.tempDir();
  const wrapper = join(dir, 'firefox-in-netns');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns.name} /usr/bin/firefox-esr "$@"\n`);
  chmodSync(wrapper, 0o755);
  const bridge = createServer((sock) => {
    const relay = `const s = require('net').connect(${bridge.address().port}, '127.0.0.1');
      process.stdin.pipe(s); s.pipe(process.stdout);
      s.on('error', () => process.exit(1)); s.on('close', () => process.exit(0));`;
    const p = spawn('ip', ['netns', 'exec', ns.name, process.execPath, '-e', relay], { stdio: ['pipe', 'pipe', 'ignore'] });
    sock.pipe(p.stdin);
    p.stdout.pipe(sock);
    sock.on('error', () => p.kill('SIGKILL'));
    sock.on('close', () => p.kill('SIGKILL'));
    p.on('exit', () => sock.destroy());
    p.stdin.on('error', () => {});
  });
  await new Promise((r) => bridge.listen(0, '127.0.0.1', r));
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: wrapper,
    headless: true,
    debuggingPort: bridge.address().port,
    userDataDir: join(dir, 'profile'),
    extraPrefsFirefox: {
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.autoplay.default': 0,
      'media.peerconnection.ice.obfuscate_host_addresses': false,
      'app.update.enabled': false,
      'app.update.auto': false,
      'datareporting.healthreport.uploadEnabled': false,
      'datareporting.policy.dataSubmissionEnabled': false,
      'toolkit.telemetry.enabled': false,
      'browser.safebrowsing.malware.enabled': false,
      'browser.safebrowsing.phishing.enabled': false,
      'browser.safebrowsing.downloads.enabled': false,
      'network.captive-portal-service.enabled': false,
      ...prefs,
    },
  }).catch((e) => {
    bridge.close();
    throw e;
  });
  browser.on('disconnected', () => bridge.close());
  return browser;
}

export async function openPage(browser, origin) {
  const page = await browser.newPage();
  page.on('console', (m) => {
    if (process.env.VOLNA_LOG) process.stderr.write(`[page] ${m.text()}\n`);
  });
  await page.goto(`${origin}/index.html`);
  return page;
}

export async function relayStats(page, http) {
  return page.evaluate(async (u) => (await fetch(u)).json(), `http://${http}/stats`);
}

/** The chosen local candidate of the RTCPeerConnection `expr` evaluates to in `page`: its
 * `protocol` (udp, tcp), `type` (host, relay…) and, for a relay, `relayProtocol` (the way to
 * the TURN server); null before a pair is chosen. */
export const localCandidate = (page, expr) => page.evaluate(async (e) => {
  // eslint-disable-next-line no-eval
  const pc = eval(e);
  const stats = await pc.getStats();
  let out = null;
  stats.forEach((s) => {
    if (s.type !== 'transport' || !s.selectedCandidatePairId) return;
    const c = stats.get(stats.get(s.selectedCandidatePairId).localCandidateId);
    out = { protocol: c.protocol, type: c.candidateType, relayProtocol: c.relayProtocol };
  });
  return out;
}, expr);
