// volna demo client: the room protocol (docs/protocol.md) with one publishing and one receiving
// RTCPeerConnection. `window.app` is the state, for people in devtools and for the tests.
'use strict';

const app = {
  ws: null, me: null, room: null,
  // ?bundle=balanced tries the other bundle policy (both work with volna).
  bundlePolicy: new URLSearchParams(location.search).get('bundle') || 'max-bundle',
  pub: null, sub: null, local: null,
  participants: new Map(), // id -> { info, tile, stream }
  tracks: {},              // subscriber mid -> track id
  events: [],              // every event received, in order
  speaker: null,
};
window.app = app;

const $ = (id) => document.getElementById(id);
let nextId = 1;
// Offers are applied one after another, in the order they came.
let offers = Promise.resolve();
const pending = new Map();

function request(msg) {
  if (!app.ws || app.ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error('not connected'));
  const id = nextId++;
  app.ws.send(JSON.stringify({ ...msg, id }));
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

function tile(id, label) {
  let t = document.querySelector(`.tile[data-id="${id}"]`);
  if (!t) {
    t = document.createElement('div');
    t.className = 'tile';
    t.dataset.id = id;
    t.innerHTML = '<video autoplay playsinline></video><span class="avatar"></span><span class="label"></span><span class="mic">muted</span><span class="state">reconnecting…</span>';
    t.addEventListener('click', () => app.togglePin(id).catch((e) => console.warn('pin failed', e)));
    $('grid').appendChild(t);
  }
  t.querySelector('.label').textContent = label;
  t.querySelector('.avatar').textContent = (label.trim()[0] || '?').toUpperCase();
  return t;
}

// A line at the top of the call: reconnecting, a lost connection.
function status(text) {
  const el = $('status');
  if (el) el.textContent = text;
  if (text) app.events.push({ type: 'status', text });
}

function refresh() {
  $('count').textContent = `${app.participants.size + 1} in the call`;
  document.querySelectorAll('.tile').forEach((t) => t.classList.toggle('speaking', t.dataset.id === app.speaker));
}

function addParticipant(p) {
  const entry = app.participants.get(p.id) || { stream: new MediaStream() };
  entry.info = p;
  entry.tile = tile(p.id, p.name || p.identity);
  entry.tile.querySelector('video').srcObject = entry.stream;
  entry.tile.classList.toggle('muted', p.tracks.some((t) => t.kind === 'audio' && t.muted));
  // No video, or its camera is off: a letter instead of a black picture.
  entry.tile.classList.toggle('novideo', !p.tracks.some((t) => t.kind === 'video' && !t.muted));
  entry.tile.classList.toggle('reconnecting', !!p.reconnecting);
  app.participants.set(p.id, entry);
  refresh();
}

function removeParticipant(id) {
  if (app.pinned === id) app.pinned = null;
  const p = app.participants.get(id);
  if (p) p.tile.remove();
  app.participants.delete(id);
  refresh();
}

// Peer connections use the node's TURN server (from `joined`) when there is one: for networks
// that let nothing but TLS to one port through.
function pcConfig() {
  return { bundlePolicy: app.bundlePolicy, iceServers: app.iceServers || [] };
}

// The receiving connection: volna offers, we answer. Each remote track belongs to the
// participant named by its stream id (a=msid).
function newSubscriber() {
  const pc = new RTCPeerConnection(pcConfig());
  pc.ontrack = (ev) => {
    const stream = ev.streams[0];
    const owner = stream ? stream.id : null;
    const trackId = app.tracks[ev.transceiver.mid];
    const p = app.participants.get(owner);
    if (p) {
      p.stream.addTrack(ev.track);
      if (ev.track.kind === 'audio') {
        const a = new Audio();
        a.srcObject = new MediaStream([ev.track]);
        a.play().catch(() => {});
        p.audio = a;
      }
      addParticipant(p.info);
    }
    // A stopped m-line ends the track; the BUNDLE tag line is made inactive instead, which
    // removes the track from its stream.
    let done = false;
    const ended = () => {
      if (done) return;
      done = true;
      app.events.push({ type: 'track_ended', track: trackId });
      if (p) p.stream.removeTrack(ev.track);
    };
    ev.track.addEventListener('ended', ended);
    if (stream) stream.addEventListener('removetrack', (e) => { if (e.track === ev.track) ended(); });
  };
  return pc;
}

async function onOffer(msg) {
  app.tracks = msg.tracks;
  const pc = app.sub;
  try {
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
  } catch (e) {
    // An offer we cannot apply: say so, and take the new connection volna offers next.
    app.events.push({ type: 'offer_failed', message: e.message });
    console.error('offer failed', e);
    pc.close();
    app.sub = watch(newSubscriber());
    await request({ type: 'offer_failed', reason: e.message });
    return;
  }
  // volna is ICE-lite: it needs no candidates from us, the answer can go at once.
  await request({ type: 'answer', sdp: pc.localDescription.sdp });
}

// The relay says which simulcast layers of our track anyone needs: encode only those.
async function onLayers(msg) {
  const t = app.pub && app.pub.getTransceivers().find((x) => `${app.me.id}-${x.mid}` === msg.track);
  if (!t) return;
  const params = t.sender.getParameters();
  if (!params.encodings || params.encodings.length < 2) return;
  let changed = false;
  for (const e of params.encodings) {
    const on = msg.active.includes(e.rid);
    if (e.active !== on) {
      e.active = on;
      changed = true;
    }
  }
  if (changed) await t.sender.setParameters(params);
}

function onMessage(ev) {
  const msg = JSON.parse(ev.data);
  app.events.push(msg);
  if (msg.id !== undefined && pending.has(msg.id)) {
    const p = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.type === 'error') p.reject(new Error(`${msg.code} ${msg.reason}: ${msg.message}`));
    else p.resolve(msg);
    return;
  }
  switch (msg.type) {
    case 'participant_joined': addParticipant(msg.participant); break;
    case 'participant_left': removeParticipant(msg.participant); break;
    case 'track_published': {
      const p = app.participants.get(msg.participant);
      if (p) { p.info.tracks.push(msg.track); addParticipant(p.info); }
      break;
    }
    case 'track_unpublished': {
      const p = app.participants.get(msg.participant);
      if (p) { p.info.tracks = p.info.tracks.filter((t) => t.id !== msg.track); addParticipant(p.info); }
      break;
    }
    case 'participant_reconnecting':
    case 'participant_reconnected': {
      const p = app.participants.get(msg.participant);
      if (p) { p.info.reconnecting = msg.type === 'participant_reconnecting'; addParticipant(p.info); }
      break;
    }
    case 'mute': {
      const p = app.participants.get(msg.participant);
      const t = p && p.info.tracks.find((x) => x.id === msg.track);
      if (t) { t.muted = msg.muted; addParticipant(p.info); }
      break;
    }
    case 'active_speaker': app.speaker = msg.participant; refresh(); break;
    case 'offer': offers = offers.then(() => onOffer(msg)).catch((e) => console.error('answer failed', e)); break;
    case 'layers': onLayers(msg).catch((e) => console.error('layers failed', e)); break;
    case 'error':
      console.warn('server error', msg);
      if (msg.code === 408) {
        // Our media connection was lost: say so, and come back.
        status(`Connection lost (${msg.reason}), reconnecting…`);
        recover(msg.reason);
      } else if (msg.code === 410) {
        // Removed, or the room was closed: the call is over, no coming back.
        app.leaving = true;
        [app.pub, app.sub].forEach((pc) => pc && pc.close());
        [app.local, app.extra].forEach((s) => s && s.getTracks().forEach((t) => t.stop()));
        status(msg.reason === 'room_closed' ? 'The room was closed.' : 'You were removed from the room.');
      }
      break;
    case 'room_metadata': app.metadata = msg.metadata; break;
    default: break;
  }
}

// A click on a tile pins its video (shown large; the relay gives it the first share of a short
// link), a second click unpins it.
app.pinned = null;
app.togglePin = async (id) => {
  const p = app.participants.get(id);
  const video = p && p.info.tracks.find((t) => t.kind === 'video');
  // (Your own tile, or one without video: nothing to pin.)
  if (!video && app.pinned !== id) return;
  const pin = app.pinned !== id ? id : null;
  await request({ type: 'pin', tracks: pin ? [video.id] : [] });
  app.pinned = pin;
  document.querySelectorAll('.tile').forEach((t) => t.classList.toggle('pinned', t.dataset.id === app.pinned));
};

// Opens the socket and joins the room (with `resume`, comes back as the same participant),
// following a cluster node's `redirect` to another node (docs/protocol.md).
async function connect(resume) {
  for (let hops = 0; ; hops++) {
    const joined = await connectTo(app.server || defaultServer(), resume);
    if (joined.type !== 'redirect') return joined;
    if (hops >= 3) throw new Error('too many redirects');
    app.events.push({ type: 'redirected', url: joined.url, node: joined.node });
    app.server = joined.url;
  }
}

function defaultServer() {
  const url = new URL('/rtc', location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

async function connectTo(url, resume) {
  const { room, name, token } = app.creds;
  const ws = new WebSocket(url);
  app.ws = ws;
  ws.onmessage = onMessage;
  ws.onclose = () => {
    if (app.ws !== ws) return;
    app.events.push({ type: 'socket_closed' });
    // Nothing will answer what is still waiting.
    for (const p of pending.values()) p.reject(new Error('connection closed'));
    pending.clear();
    if (app.me && !app.leaving) recover('socket closed');
  };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('cannot reach the server')); });
  const joinMsg = { type: 'join', v: 1, room, name };
  if (token) joinMsg.token = token;
  if (resume) joinMsg.resume = resume;
  const joined = await request(joinMsg);
  if (joined.type === 'redirect') {
    // The server closes this socket; the join goes to the other node.
    app.ws = null;
    ws.onclose = null;
    ws.close();
    return joined;
  }
  app.me = joined.participant;
  app.room = room;
  app.resume = joined.resume;
  app.fallbacks = joined.fallbacks || [];
  app.iceServers = joined.ice_servers || [];
  // The receiving connection waits for volna's offer from before the join: give it the TURN
  // servers too (and their fresh credentials after a rejoin).
  if (app.sub && !app.sub.remoteDescription) app.sub.setConfiguration(pcConfig());
  app.speaker = joined.active_speaker || null;
  app.metadata = joined.metadata ?? null;
  // Whoever is not listed has left meanwhile.
  const present = new Set(joined.participants.map((p) => p.id));
  [...app.participants.keys()].filter((id) => !present.has(id)).forEach(removeParticipant);
  joined.participants.forEach(addParticipant);
  return joined;
}

// A connection whose state goes `failed` starts recovery.
function watch(pc) {
  pc.addEventListener('connectionstatechange', () => {
    if ((pc === app.pub || pc === app.sub) && pc.connectionState === 'failed') recover('connection failed');
  });
  return pc;
}

// Getting the call back after a failure: an ICE restart while the socket is up, else (or when
// that does not work within 5 s) joining again with `resume`, with backoff. The others see us
// reconnecting meanwhile, not leaving.
async function recover(why) {
  if (app.recovering || app.leaving) return;
  app.recovering = true;
  app.events.push({ type: 'recovering', why });
  status(`Reconnecting… (${why})`);
  try {
    if (why === 'connection failed' && app.ws && app.ws.readyState === WebSocket.OPEN) {
      try {
        await app.restartIce();
        const ok = await until(() => [app.pub, app.sub].every((pc) => !pc || pc.connectionState === 'connected'), 5000);
        if (ok) {
          app.events.push({ type: 'recovered', how: 'ice_restart' });
          status('');
          return;
        }
      } catch (e) {
        console.warn('ICE restart failed', e);
      }
    }
    for (const delay of [0, 500, 1000, 2000, 4000, 8000]) {
      await new Promise((r) => setTimeout(r, delay));
      if (app.leaving) return;
      try {
        await rejoin();
        status('');
        return;
      } catch (e) {
        console.warn('rejoin failed', e);
        // This node may be gone: the next try goes to another node of the cluster, where we
        // join as a new participant (the others saw us leave) and publish again.
        if (app.fallbacks && app.fallbacks.length) {
          app.server = app.fallbacks.shift();
          app.events.push({ type: 'fallback', url: app.server });
        }
      }
    }
    status('The connection is lost. Reload the page to join again.');
  } finally {
    app.recovering = false;
  }
}

async function until(fn, ms) {
  for (const end = Date.now() + ms; Date.now() < end;) {
    if (fn()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return fn();
}

// New socket and connections; the same participant when the server still has us.
async function rejoin() {
  const old = app.ws;
  app.ws = null;
  if (old) { old.onclose = null; old.close(); }
  [app.pub, app.sub].forEach((pc) => pc && pc.close());
  app.pub = null;
  app.sub = watch(newSubscriber());
  offers = Promise.resolve();
  const before = app.me.id;
  const joined = await connect(app.resume);
  // Not resumed (too late): we are a new participant, and so is our own tile.
  const mine = document.querySelector(`.tile[data-id="${before}"]`);
  if (mine) mine.dataset.id = app.me.id;
  if (!app.watchOnly) app.pub = watch(await publish(app.extra ? app.extra.getVideoTracks() : []));
  app.events.push({ type: 'recovered', how: joined.resumed ? 'resumed' : 'joined_again' });
}

// ICE restart of both connections (room protocol `restart_ice`).
app.restartIce = async () => {
  let sdp;
  if (app.pub) {
    app.pub.restartIce();
    await app.pub.setLocalDescription(await app.pub.createOffer());
    sdp = app.pub.localDescription.sdp;
  }
  const reply = await request(sdp ? { type: 'restart_ice', sdp } : { type: 'restart_ice' });
  if (sdp) await app.pub.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
};

// `opts.publish === false` joins only to watch (as does a token without the publish grant): no
// camera, no publishing connection.
app.join = async (room, name, token, opts = {}) => {
  app.creds = { room, name, token };
  app.leaving = false;
  app.sub = watch(newSubscriber());
  const joined = await connect();
  app.watchOnly = opts.publish === false || !joined.grants.publish;
  if (app.watchOnly) {
    refresh();
    return joined;
  }
  const size = simulcast() ? { width: 640, height: 360 } : { width: 320, height: 240 };
  app.local = await navigator.mediaDevices.getUserMedia({ audio: true, video: size });
  const mine = tile(app.me.id, `${app.me.name || app.me.identity} (you)`);
  mine.querySelector('video').srcObject = app.local;
  mine.querySelector('video').muted = true;
  app.pub = watch(await publish([]));
  refresh();
  return joined;
};

// ?simulcast=1: the camera goes out as two layers (half size and full), each viewer gets the
// one its link carries.
const simulcast = () => new URLSearchParams(location.search).get('simulcast') === '1';

// The publishing connection: we offer the camera and microphone (and `extra` tracks), volna
// answers.
async function publish(extra) {
  const pc = new RTCPeerConnection(pcConfig());
  for (const track of app.local.getTracks()) {
    const init = { direction: 'sendonly', streams: [app.local] };
    if (simulcast() && track.kind === 'video') {
      init.sendEncodings = [
        { rid: 'q', scaleResolutionDownBy: 2, maxBitrate: 150000 },
        { rid: 'f', maxBitrate: 700000 },
      ];
    }
    pc.addTransceiver(track, init);
  }
  for (const track of extra) pc.addTransceiver(track, { direction: 'sendonly', streams: [app.local] });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    const answer = await request({ type: 'publish', sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
  } catch (e) {
    pc.close();
    throw e;
  }
  return pc;
}

// Publishes again on a new connection, with a second video track (a second camera, or a screen)
// when `extraVideo` is set; volna unpublishes the old connection's tracks, which is closed then.
app.republish = async (extraVideo) => {
  if (app.extra) app.extra.getTracks().forEach((t) => t.stop());
  app.extra = extraVideo ? await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } }) : null;
  const old = app.pub;
  app.pub = watch(await publish(app.extra ? app.extra.getVideoTracks() : []));
  if (old) old.close();
};

app.trackId = (kind) => {
  const t = app.pub.getTransceivers().find((x) => x.sender.track && x.sender.track.kind === kind);
  return `${app.me.id}-${t.mid}`;
};

app.setMuted = async (kind, muted) => {
  app.local.getTracks().filter((t) => t.kind === kind).forEach((t) => { t.enabled = !muted; });
  await request({ type: 'mute', track: app.trackId(kind), muted });
  const mine = tile(app.me.id, `${app.me.name || app.me.identity} (you)`);
  mine.classList.toggle(kind === 'audio' ? 'muted' : 'novideo', muted);
};

app.leave = async () => {
  app.leaving = true;
  try { await request({ type: 'leave' }); } catch (e) { console.warn(e); }
  app.ws.close();
  [app.pub, app.sub].forEach((pc) => pc && pc.close());
  [app.local, app.extra].forEach((s) => s && s.getTracks().forEach((t) => t.stop()));
};

/** Send-side figures of the video: per simulcast layer, bytes and frames so far. */
app.outbound = async () => {
  const out = [];
  if (!app.pub) return out;
  (await app.pub.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.push({ rid: s.rid, bytesSent: s.bytesSent, framesEncoded: s.framesEncoded || 0, frameWidth: s.frameWidth || 0 });
    }
  });
  return out;
};

/** Receive-side figures: per remote track, what was decoded. */
app.inbound = async () => {
  const out = [];
  if (!app.sub) return out;
  (await app.sub.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp') {
      out.push({ kind: s.kind, mid: s.mid, track: app.tracks[s.mid], framesDecoded: s.framesDecoded || 0, packetsReceived: s.packetsReceived || 0, frameWidth: s.frameWidth || 0 });
    }
  });
  return out;
};

// The page's own controls.
if (document.getElementById('join')) {
  const params = new URLSearchParams(location.search);
  if (params.get('room')) $('room').value = params.get('room');
  $('join').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('error').textContent = '';
    try {
      await app.join($('room').value.trim(), $('name').value.trim(), $('token').value.trim());
      $('join').style.display = 'none';
      $('call').style.display = 'block';
      $('roomName').textContent = `room ${app.room}`;
    } catch (e) {
      $('error').textContent = e.message;
    }
  });
  let micOff = false;
  let camOff = false;
  $('micBtn').onclick = async () => {
    micOff = !micOff;
    await app.setMuted('audio', micOff);
    $('micBtn').textContent = micOff ? 'Unmute' : 'Mute';
    $('micBtn').classList.toggle('off', micOff);
  };
  $('camBtn').onclick = async () => {
    camOff = !camOff;
    await app.setMuted('video', camOff);
    $('camBtn').textContent = camOff ? 'Start video' : 'Stop video';
    $('camBtn').classList.toggle('off', camOff);
  };
  $('leaveBtn').onclick = async () => {
    await app.leave();
    location.reload();
  };
}
