// WHIP/WHEP client used by the browser tests: plain RTCPeerConnection, non-trickle ICE.
'use strict';

// Waits for ICE gathering to end, or `window.gatherCapMs` at most: an ICE-lite relay needs none
// of the client's candidates, and a TURN server behind a firewall that drops packets keeps
// gathering going for tens of seconds.
async function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return;
  await new Promise((resolve) => {
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
    if (window.gatherCapMs) setTimeout(resolve, window.gatherCapMs);
  });
}

// `answerVia` ('ip port') puts the relay's candidates at another address: an impairment proxy
// in front of it.
async function negotiate(pc, url, answerVia) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp' },
    body: pc.localDescription.sdp,
  });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`${url}: ${res.status} ${text}`);
  const sdp = answerVia ? text.replace(/^(a=candidate:\S+ \d+ \S+ \d+) \S+ \d+ /gm, `$1 ${answerVia} `) : text;
  await pc.setRemoteDescription({ type: 'answer', sdp });
  // After a redirect (a cluster node that does not take the session), Location is relative to
  // where the request ended up.
  return { location: new URL(res.headers.get('Location'), res.url || url).href, publisher: res.headers.get('X-Volna-Publisher') };
}

window.events = [];

// The ICE servers a WHIP/WHEP endpoint names in its OPTIONS response's Link headers
// (rel="ice-server", RFC 9725 §4.6), as RTCIceServer entries.
window.linkIceServers = async (url) => {
  const res = await fetch(url, { method: 'OPTIONS' });
  const links = (res.headers.get('Link') || '').split(/,(?=\s*<)/).map((l) => l.trim()).filter(Boolean);
  const out = [];
  for (const l of links) {
    const m = /^<([^>]+)>(.*)$/.exec(l);
    if (!m || !/;\s*rel="ice-server"/.test(m[2])) continue;
    const param = (k) => {
      const p = new RegExp(`;\\s*${k}="((?:[^"\\\\]|\\\\.)*)"`).exec(m[2]);
      return p ? p[1].replace(/\\(.)/g, '$1') : undefined;
    };
    out.push({ urls: m[1], username: param('username'), credential: param('credential') });
  }
  return out;
};

// RTCConfiguration of the next connections (`iceServers`, `iceTransportPolicy`).
window.rtcConfig = {};

// `videoCodec` (e.g. 'video/VP9') is put first in the offer when given.
window.publish = async (url, videoCodec) => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', ...window.rtcConfig });
  for (const track of stream.getTracks()) {
    const t = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    if (videoCodec && track.kind === 'video') {
      const all = RTCRtpSender.getCapabilities('video').codecs;
      const first = all.filter((c) => c.mimeType.toLowerCase() === videoCodec.toLowerCase());
      if (first.length === 0) throw new Error(`this browser cannot send ${videoCodec}`);
      t.setCodecPreferences([...first, ...all.filter((c) => !first.includes(c))]);
    }
  }
  window.pc = pc;
  const r = await negotiate(pc, url);
  window.session = r.location;
  return r;
};

// Simulcast: the camera (960×540 at 30 fps unless `size` and `fps` say) sent as the given
// encodings (rid, scaleResolutionDownBy, maxBitrate).
window.publishSimulcast = async (url, encodings, size = [960, 540], fps = 30) => {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: true,
    video: { width: size[0], height: size[1], frameRate: fps },
  });
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', ...window.rtcConfig });
  for (const track of stream.getTracks()) {
    const init = { direction: 'sendonly', streams: [stream] };
    if (track.kind === 'video') init.sendEncodings = encodings;
    pc.addTransceiver(track, init);
  }
  window.pc = pc;
  const r = await negotiate(pc, url);
  window.session = r.location;
  return r;
};

// SVC: the camera (960×540 at 30 fps unless told) sent as one encoding with spatial and
// temporal layers (`mode`, e.g. 'L3T3_KEY'), in `codec` ('video/VP9' or 'video/AV1').
window.publishSvc = async (url, mode, codec, width = 960, height = 540, fps = 30) => {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: true,
    video: { width, height, frameRate: fps },
  });
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', ...window.rtcConfig });
  for (const track of stream.getTracks()) {
    const init = { direction: 'sendonly', streams: [stream] };
    if (track.kind === 'video') init.sendEncodings = [{ scalabilityMode: mode }];
    const t = pc.addTransceiver(track, init);
    if (track.kind === 'video') {
      const all = RTCRtpSender.getCapabilities('video').codecs;
      const first = all.filter((c) => c.mimeType.toLowerCase() === codec.toLowerCase());
      if (first.length === 0) throw new Error(`this browser cannot send ${codec}`);
      t.setCodecPreferences([...first, ...all.filter((c) => !first.includes(c))]);
    }
  }
  window.pc = pc;
  const r = await negotiate(pc, url);
  window.session = r.location;
  return r;
};

// What each simulcast layer sends now: rid, frame size, bytes and frames so far.
window.outbound = async () => {
  const out = [];
  (await window.pc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.push({ rid: s.rid, scalabilityMode: s.scalabilityMode, frameWidth: s.frameWidth || 0, bytesSent: s.bytesSent, framesEncoded: s.framesEncoded, limitation: s.qualityLimitationReason });
    }
  });
  return out;
};

// `withDescriptor`: also offer to receive the AV1 dependency descriptor (Chromium leaves it out
// of receive-only offers), which SVC streams need. `answerVia`: see `negotiate`.
window.view = async (url, withDescriptor, answerVia) => {
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', ...window.rtcConfig });
  const video = pc.addTransceiver('video', { direction: 'recvonly' });
  if (withDescriptor) {
    const exts = video.getHeaderExtensionsToNegotiate();
    for (const e of exts) {
      if (e.uri.includes('dependency-descriptor')) e.direction = 'recvonly';
    }
    video.setHeaderExtensionsToNegotiate(exts);
  }
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = (ev) => {
    const el = document.getElementById(ev.track.kind === 'video' ? 'v' : 'a');
    el.srcObject = new MediaStream([ev.track]);
    el.play().catch(() => {});
    ev.track.onended = () => window.events.push(`${ev.track.kind}:ended`);
    ev.track.onmute = () => window.events.push(`${ev.track.kind}:mute`);
  };
  pc.onconnectionstatechange = () => window.events.push(`pc:${pc.connectionState}`);
  window.pc = pc;
  const r = await negotiate(pc, url, answerVia);
  window.session = r.location;
  const dtls = pc.getTransceivers()[0].receiver.transport;
  if (dtls) dtls.onstatechange = () => window.events.push(`dtls:${dtls.state}`);
  return r;
};

// Bytes the viewer's transport has received so far (media, repairs, probes; SRTP included).
window.transportBytes = async () => {
  let bytes = 0;
  (await window.pc.getStats()).forEach((s) => {
    if (s.type === 'transport') bytes += s.bytesReceived || 0;
  });
  return bytes;
};

window.inbound = async () => {
  const out = { video: {}, audio: {} };
  const stats = await window.pc.getStats();
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp') out[s.kind] = s;
  });
  let codec = '';
  if (out.video.codecId) codec = stats.get(out.video.codecId)?.mimeType || '';
  return {
    codec,
    framesDecoded: out.video.framesDecoded || 0,
    videoPackets: out.video.packetsReceived || 0,
    audioPackets: out.audio.packetsReceived || 0,
    audioLevel: out.audio.audioLevel || 0,
    frameWidth: out.video.frameWidth || 0,
    freezeCount: out.video.freezeCount || 0,
    keyFramesDecoded: out.video.keyFramesDecoded || 0,
    nackCount: out.video.nackCount || 0,
    pliCount: out.video.pliCount || 0,
    framesPerSecond: out.video.framesPerSecond || 0,
    concealedSamples: out.audio.concealedSamples || 0,
    totalSamplesReceived: out.audio.totalSamplesReceived || 0,
    connectionState: window.pc.connectionState,
  };
};

// ICE restart over WHIP/WHEP PATCH (RFC 9725 §4.3): new local credentials go to the session
// URL as an sdpfrag; the reply's credentials replace volna's in the remote description.
// Returns the PATCH status.
window.restartIce = async () => {
  const pc = window.pc;
  pc.restartIce();
  await pc.setLocalDescription(await pc.createOffer());
  const local = pc.localDescription.sdp;
  const ufrag = local.match(/^a=ice-ufrag:(.*)$/m)[1].trim();
  const pwd = local.match(/^a=ice-pwd:(.*)$/m)[1].trim();
  const mid = pc.getTransceivers()[0].mid;
  const res = await fetch(window.session, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': '*' },
    body: `a=ice-ufrag:${ufrag}\r\na=ice-pwd:${pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:${mid}\r\n`,
  });
  const frag = await res.text();
  if (res.status !== 200) throw new Error(`PATCH: ${res.status} ${frag}`);
  const newUfrag = frag.match(/^a=ice-ufrag:(.*)$/m)[1].trim();
  const newPwd = frag.match(/^a=ice-pwd:(.*)$/m)[1].trim();
  const sdp = pc.remoteDescription.sdp
    .replace(/^a=ice-ufrag:.*$/gm, `a=ice-ufrag:${newUfrag}`)
    .replace(/^a=ice-pwd:.*$/gm, `a=ice-pwd:${newPwd}`);
  await pc.setRemoteDescription({ type: 'answer', sdp });
  return res.status;
};

window.hangUp = async () => {
  const res = await fetch(window.session, { method: 'DELETE' });
  return res.status;
};
