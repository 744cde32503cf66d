//! What a load test drives: a relay reached only through its public signalling API (WHIP/WHEP for
//! volna, the VideoRoom HTTP API for Janus), running as its own process so its CPU time and memory
//! can be read from /proc.

/// The SDP side of a load-test client, as the signalling of a target needs it. Some relays take
/// the client's offer (WHIP/WHEP), others send their own offer to subscribers (Janus VideoRoom).
pub trait SdpEndpoint {
    /// An offer from the client (sendonly for publishers, recvonly for subscribers).
    fn offer(&mut self) -> String;
    /// Applies the relay's answer to [`SdpEndpoint::offer`].
    fn accept_answer(&mut self, sdp: &str) -> Result<(), String>;
    /// Applies an offer from the relay and returns the client's answer.
    fn answer_offer(&mut self, sdp: &str) -> Result<String, String>;
}

/// A relay under test.
pub trait Target {
    /// Short name for reports ("volna", "janus").
    fn name(&self) -> &'static str;
    /// Address the clients bind their UDP sockets on (where the relay can reach them).
    fn client_ip(&self) -> std::net::IpAddr;
    /// Process id of the relay, for CPU-seconds and peak RSS from /proc.
    fn pid(&self) -> u32;
    /// Every process of the relay (several for a cluster): CPU-seconds and peak RSS are summed.
    fn pids(&self) -> Vec<u32> {
        vec![self.pid()]
    }
    /// The next `publish` or `subscribe` is for participant `index` (a cluster sends each
    /// participant to one of its nodes).
    fn place(&mut self, _index: usize) {}
    /// A cluster's relay links so far: bytes sent, and simulcast bytes held back.
    fn link_bytes(&self) -> Option<crate::report::LinkBytes> {
        None
    }
    /// Makes a room able to hold `publishers` publishers (a no-op where rooms are implicit).
    fn create_room(&mut self, room: &str, publishers: usize) -> Result<(), String>;
    /// Publishes the client's media into `room`; returns an id that subscribers pass to
    /// [`Target::subscribe`].
    fn publish(
        &mut self,
        room: &str,
        display: &str,
        client: &mut dyn SdpEndpoint,
    ) -> Result<String, String>;
    /// Subscribes a client to one publisher's media.
    fn subscribe(
        &mut self,
        room: &str,
        publisher: &str,
        client: &mut dyn SdpEndpoint,
    ) -> Result<(), String>;
    /// Stops the relay process (also on drop).
    fn stop(&mut self);
}
