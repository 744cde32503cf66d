//! The worker's packet buffers, reused so that forwarding does not allocate.
//!
//! [`RecvPool`] hands out receive slots in large blocks; a received datagram becomes a `BytesMut`
//! view of its slot, is decrypted in place and frozen into the `Bytes` that every receiver and the
//! retransmit cache share. Each receive starts where the last datagram taken ended, so a block
//! (64 KiB, one full receive batch) holds as many datagrams as fit, not one batch: at a few
//! datagrams per wake-up it holds dozens, not one each. A block is reused once every packet in it
//! has been dropped, so one kept packet keeps its whole block; the caches let packets go by age
//! (see `core::cache`), which bounds what a slow stream among busy ones (or junk) can hold: at
//! most one block per packet it has cached, and what the last second's traffic filled.
//! [`SendBatch`] is one flat buffer of outgoing datagrams, each protected where it lies, sent
//! with one system call per batch and then cleared (its capacity stays).

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};

/// Room for one datagram: a full Ethernet-MTU packet and then some.
pub const SLOT: usize = 2048;
/// Slots handed to one batched receive.
pub const RECV_BATCH: usize = 32;
/// Slots per block: one receive batch.
const BLOCK_SLOTS: usize = RECV_BATCH;
/// Bytes per block: the most memory one kept packet holds.
pub const BLOCK_BYTES: usize = BLOCK_SLOTS * SLOT;
/// A receive into a block's free tail needs room for this many datagrams; a block with less
/// left is done.
const MIN_SLOTS: usize = 4;

pub struct RecvPool {
    blocks: Vec<BytesMut>,
    cur: usize,
    /// Bytes of the prepared region already handed out as packets (or skipped).
    pos: usize,
    allocated_blocks: u64,
}

impl Default for RecvPool {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvPool {
    pub fn new() -> Self {
        let mut p = RecvPool {
            blocks: Vec::with_capacity(64),
            cur: 0,
            pos: 0,
            allocated_blocks: 0,
        };
        p.grow();
        p
    }

    fn grow(&mut self) {
        let mut b = BytesMut::with_capacity(BLOCK_SLOTS * SLOT);
        // Written once so that every later view of this memory is initialised.
        b.resize(BLOCK_SLOTS * SLOT, 0);
        b.clear();
        self.blocks.push(b);
        self.cur = self.blocks.len() - 1;
        self.allocated_blocks += 1;
    }

    /// Blocks allocated so far (steady state: this stops growing).
    pub fn allocated_blocks(&self) -> u64 {
        self.allocated_blocks
    }

    /// A region of up to `n` slots (n ≤ [`RECV_BATCH`]; fewer, at least [`MIN_SLOTS`] or `n`,
    /// where the current block's free tail is shorter) to receive into; slot `k` is
    /// `region[k * SLOT..(k + 1) * SLOT]`. Follow with [`RecvPool::take`] for each filled slot,
    /// in order.
    pub fn prepare(&mut self, n: usize) -> &mut [u8] {
        let want = n.clamp(1, RECV_BATCH);
        let fits = |b: &BytesMut| (b.capacity() / SLOT).min(want);
        if fits(&self.blocks[self.cur]) < want.min(MIN_SLOTS) {
            // A block whose packets have all been dropped is empty and unique: reclaim it.
            let count = self.blocks.len();
            let reuse = (1..=count)
                .map(|i| (self.cur + i) % count)
                .find(|&j| self.blocks[j].try_reclaim(BLOCK_SLOTS * SLOT));
            match reuse {
                Some(j) => self.cur = j,
                None => self.grow(),
            }
        }
        self.pos = 0;
        let need = fits(&self.blocks[self.cur]) * SLOT;
        let b = &mut self.blocks[self.cur];
        // SAFETY: the block's whole capacity was initialised when it was created (`grow`) and
        // initialised bytes stay so; `take` and the next `prepare` only shorten the view.
        unsafe { b.set_len(need) };
        &mut b[..need]
    }

    /// The datagram of `len` bytes received into slot `k` of the prepared region.
    pub fn take(&mut self, k: usize, len: usize) -> BytesMut {
        let b = &mut self.blocks[self.cur];
        let skip = k * SLOT - self.pos;
        b.advance(skip);
        let len = len.min(SLOT);
        let pkt = b.split_to(len);
        self.pos = k * SLOT + len;
        pkt
    }

    /// Ends a receive: what was prepared and not taken is given back.
    pub fn finish(&mut self) {
        self.blocks[self.cur].clear();
    }
}

#[derive(Clone, Copy)]
struct Item {
    to: SocketAddr,
    start: usize,
    len: usize,
}

/// Outgoing datagrams in one reused buffer.
pub struct SendBatch {
    data: Vec<u8>,
    items: Vec<Item>,
    /// Items before this one are sent.
    next: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> Self {
        SendBatch {
            data: Vec::with_capacity(256 * 1024),
            items: Vec::with_capacity(256),
            next: 0,
        }
    }

    /// The buffer to append one datagram to, and where it starts; finish with
    /// [`SendBatch::commit`] or [`SendBatch::abort`].
    pub fn begin(&mut self) -> (&mut Vec<u8>, usize) {
        let start = self.data.len();
        (&mut self.data, start)
    }

    /// Queues what was appended since `start` for `to`.
    pub fn commit(&mut self, to: SocketAddr, start: usize) {
        let len = self.data.len() - start;
        self.items.push(Item { to, start, len });
    }

    /// Drops what was appended since `start`.
    pub fn abort(&mut self, start: usize) {
        self.data.truncate(start);
    }

    /// Queues a copy of `datagram`.
    pub fn push(&mut self, to: SocketAddr, datagram: &[u8]) {
        let (buf, start) = self.begin();
        buf.extend_from_slice(datagram);
        self.commit(to, start);
    }

    /// Datagrams not sent yet.
    pub fn len(&self) -> usize {
        self.items.len() - self.next
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th datagram not sent yet.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let it = self.items.get(self.next + i)?;
        Some((it.to, &self.data[it.start..it.start + it.len]))
    }

    /// Takes out the pending datagrams `f` accepts (it sends them another way: an ICE-TCP
    /// connection); the others stay, in order.
    pub fn divert(&mut self, mut f: impl FnMut(SocketAddr, &[u8]) -> bool) {
        let mut keep = self.next;
        for i in self.next..self.items.len() {
            let it = self.items[i];
            if !f(it.to, &self.data[it.start..it.start + it.len]) {
                self.items[keep] = it;
                keep += 1;
            }
        }
        self.items.truncate(keep);
        self.consume(0);
    }

    /// Marks the first `n` pending datagrams sent; an empty batch rewinds its buffer.
    pub fn consume(&mut self, n: usize) {
        self.next = (self.next + n).min(self.items.len());
        if self.next == self.items.len() {
            self.items.clear();
            self.data.clear();
            self.next = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_pool_reuses_blocks_once_packets_are_dropped() {
        let mut pool = RecvPool::new();
        let mut kept = Vec::new();
        // Fill several blocks while keeping every packet: blocks must grow.
        for round in 0..40u8 {
            let region = pool.prepare(RECV_BATCH);
            for k in 0..RECV_BATCH {
                region[k * SLOT] = round;
                region[k * SLOT + 1] = k as u8;
            }
            for k in 0..RECV_BATCH {
                let p = pool.take(k, 100 + k);
                assert_eq!(p.len(), 100 + k);
                assert_eq!((p[0], p[1]), (round, k as u8));
                kept.push(p.freeze());
            }
            pool.finish();
        }
        let grown = pool.allocated_blocks();
        assert!(grown >= 5, "40 × 32 slots need several blocks, got {grown}");
        // Drop them all: the same rounds again must not allocate any block.
        drop(kept);
        for _ in 0..200 {
            let slots = pool.prepare(RECV_BATCH).len() / SLOT;
            for k in (0..slots).step_by(3).take(4) {
                drop(pool.take(k, 60));
            }
            pool.finish();
        }
        assert_eq!(pool.allocated_blocks(), grown);
    }

    /// A receive that gets one small datagram leaves the rest of the block to the next: 300
    /// receives of one 200-byte datagram each, all kept (as caches keep them), fill one block
    /// and part of a second, not 300 blocks (19 MiB).
    #[test]
    fn receives_share_a_block() {
        let mut pool = RecvPool::new();
        let mut kept = Vec::new();
        for i in 0..300u16 {
            let region = pool.prepare(RECV_BATCH);
            assert!(region.len() >= MIN_SLOTS * SLOT, "room for a batch");
            region[..2].copy_from_slice(&i.to_be_bytes());
            let p = pool.take(0, 200);
            assert_eq!(
                &p[..2],
                &i.to_be_bytes(),
                "each datagram where it was received"
            );
            kept.push(p.freeze());
            pool.finish();
        }
        assert!(
            pool.allocated_blocks() <= 2,
            "{} blocks for 60 kB of datagrams",
            pool.allocated_blocks()
        );
        for (i, p) in kept.iter().enumerate() {
            assert_eq!(p[..2], (i as u16).to_be_bytes(), "none overwritten");
        }
    }

    /// Diverted datagrams leave the batch; the rest keep their order, also past ones sent.
    #[test]
    fn send_batch_divert() {
        let (a, t): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let mut b = SendBatch::new();
        for (to, d) in [(a, b"a0"), (t, b"t0"), (a, b"a1"), (t, b"t1"), (a, b"a2")] {
            b.push(to, d);
        }
        b.consume(1);
        let mut diverted = Vec::new();
        b.divert(|to, d| (to == t).then(|| diverted.push(d.to_vec())).is_some());
        assert_eq!(diverted, [b"t0".to_vec(), b"t1".to_vec()]);
        let left: Vec<_> = (0..b.len()).map(|i| b.get(i).unwrap().1.to_vec()).collect();
        assert_eq!(left, [b"a1".to_vec(), b"a2".to_vec()]);
        b.divert(|_, _| true);
        assert!(b.is_empty());
        b.push(a, b"again");
        assert_eq!(b.get(0).unwrap().1, b"again");
    }

    #[test]
    fn send_batch_items_and_rewind() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "[::1]:2".parse().unwrap();
        let mut s = SendBatch::new();
        s.push(a, b"one");
        let (buf, start) = s.begin();
        buf.extend_from_slice(b"two!");
        s.commit(b, start);
        let (buf, start) = s.begin();
        buf.extend_from_slice(b"dropped");
        s.abort(start);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(0), Some((a, &b"one"[..])));
        assert_eq!(s.get(1), Some((b, &b"two!"[..])));
        s.consume(1);
        assert_eq!(s.get(0), Some((b, &b"two!"[..])));
        s.consume(1);
        assert!(s.is_empty());
        assert_eq!(s.data.len(), 0);
        assert!(s.data.capacity() >= 256 * 1024);
    }
}
