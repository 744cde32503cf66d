#!/usr/bin/python3
"""A WHIP publisher on GStreamer webrtcbin (a second, non-libwebrtc WebRTC stack).

Usage: gst_whip_publish.py WHIP_URL SECONDS
Sends a VP8 test pattern and an Opus sine tone; prints the Location of the session on success.
"""
import sys
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

PIPELINE = """
webrtcbin name=w bundle-policy=max-bundle
videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=20/1
  ! vp8enc deadline=1 keyframe-max-dist=40 ! rtpvp8pay pt=96
  ! application/x-rtp,media=video,encoding-name=VP8,payload=96 ! w.
audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! opusenc
  ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 ! w.
"""


def main():
    url, seconds = sys.argv[1], float(sys.argv[2])
    Gst.init(None)
    pipe = Gst.parse_launch(PIPELINE)
    w = pipe.get_by_name("w")
    loop = GLib.MainLoop()
    state = {"posted": False, "tries": 0}

    def fail(msg):
        print(f"error: {msg}", file=sys.stderr, flush=True)
        loop.quit()
        sys.exit(1)

    def post_offer():
        if state["posted"]:
            return False
        state["posted"] = True
        offer = w.get_property("local-description").sdp.as_text()
        req = urllib.request.Request(url, data=offer.encode(), method="POST", headers={"Content-Type": "application/sdp"})
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                if res.status != 201:
                    fail(f"WHIP answered {res.status}")
                answer = res.read().decode()
                location = res.headers.get("Location")
        except Exception as e:  # noqa: BLE001 - report any HTTP failure and stop
            fail(f"WHIP POST failed: {e}")
            return False
        _, msg = GstSdp.SDPMessage.new_from_text(answer)
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        w.emit("set-remote-description", desc, Gst.Promise.new())
        print(f"location: {location}", flush=True)
        return False

    def on_gathering(element, _pspec):
        if element.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(post_offer)

    def on_offer(promise, element, _data):
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply else None
        if offer is None or offer.sdp.medias_len() == 0:
            # webrtcbin sometimes produces an empty first offer: ask again.
            state["tries"] += 1
            if state["tries"] > 5:
                fail("webrtcbin produced no usable offer")
            GLib.timeout_add(200, lambda: (create_offer(element), False)[1])
            return
        element.emit("set-local-description", offer, Gst.Promise.new())

    def create_offer(element):
        element.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, element, None))

    w.connect("on-negotiation-needed", create_offer)
    w.connect("notify::ice-gathering-state", on_gathering)
    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message::error", lambda _b, m: fail(m.parse_error()[0].message))
    pipe.set_state(Gst.State.PLAYING)
    GLib.timeout_add(int(seconds * 1000), loop.quit)
    loop.run()
    pipe.set_state(Gst.State.NULL)


if __name__ == "__main__":
    main()
