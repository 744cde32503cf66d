//! Batched UDP for the media workers: many datagrams per system call in both directions.
//!
//! Receiving uses quinn-udp (`recvmmsg` on Linux) into [`RecvPool`] slots. GRO is switched off:
//! it only coalesces equal-sized datagrams of one flow, which media seldom are (each frame ends
//! with a shorter packet), and it would need 64 KiB per slot, defeating the pooled slots; the
//! batch of `recvmmsg` gives the saving instead. Sending uses `sendmmsg` directly, because a
//! fan-out batch goes to many destinations and quinn-udp sends one destination per call (GSO).

use std::io;
use std::io::IoSliceMut;
use std::net::SocketAddr;

use bytes::BytesMut;
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tracing::debug;

use super::buffers::{RecvPool, SendBatch, RECV_BATCH, SLOT};

/// Datagrams handed to one `sendmmsg`.
#[cfg(target_os = "linux")]
const SEND_BATCH: usize = 64;
/// Kernel socket buffers: a burst of a large room must not overflow them.
const SOCKET_BUFFER: usize = 4 << 20;

pub struct BatchSocket {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
}

impl BatchSocket {
    /// Wraps a bound socket; call from inside the worker's runtime.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        #[cfg(target_os = "linux")]
        set_int_option(&socket, libc::SOL_UDP, libc::UDP_GRO, 0);
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER);
        Ok(BatchSocket {
            socket: tokio::net::UdpSocket::from_std(socket)?,
            state,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Receives what is waiting (up to one batch) into `pool` and hands each datagram to `f`.
    /// `Err(WouldBlock)` when nothing was waiting.
    pub fn try_recv(
        &self,
        pool: &mut RecvPool,
        mut f: impl FnMut(SocketAddr, BytesMut),
    ) -> io::Result<usize> {
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        let n = {
            let region = pool.prepare(RECV_BATCH);
            let slots = region.len() / SLOT;
            let mut chunks = region.chunks_mut(SLOT);
            let mut iovs: [IoSliceMut<'_>; RECV_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            let r = self.socket.try_io(Interest::READABLE, || {
                self.state.recv(
                    UdpSockRef::from(&self.socket),
                    &mut iovs[..slots],
                    &mut meta[..slots],
                )
            });
            match r {
                Ok(n) => n,
                Err(e) => {
                    pool.finish();
                    return Err(e);
                }
            }
        };
        for (k, m) in meta.iter().enumerate().take(n) {
            let mut pkt = pool.take(k, m.len);
            // With GRO (should the kernel apply it anyway) one slot holds several datagrams.
            while m.stride > 0 && pkt.len() > m.stride {
                f(m.addr, pkt.split_to(m.stride));
            }
            f(m.addr, pkt);
        }
        pool.finish();
        Ok(n)
    }

    /// Sends every queued datagram, waiting for the socket when its buffer is full. A datagram
    /// the kernel refuses (e.g. an unreachable peer) is logged and dropped.
    pub async fn send(&self, batch: &mut SendBatch) {
        while !batch.is_empty() {
            match self
                .socket
                .try_io(Interest::WRITABLE, || send_some(&self.socket, batch))
            {
                Ok(n) => batch.consume(n.max(1)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.socket.writable().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if let Some((to, _)) = batch.get(0) {
                        debug!(peer = %to, error = %e, "send failed");
                    }
                    batch.consume(1);
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn set_int_option(socket: &std::net::UdpSocket, level: libc::c_int, name: libc::c_int, v: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket, a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        debug!(error = %io::Error::last_os_error(), "setsockopt");
    }
}

/// One `sendmmsg` of up to 64 pending datagrams; returns how many the kernel took (the caller
/// marks them sent with [`SendBatch::consume`]).
#[cfg(target_os = "linux")]
pub fn send_some(socket: &impl std::os::fd::AsRawFd, batch: &SendBatch) -> io::Result<usize> {
    let n = batch.len().min(SEND_BATCH);
    // SAFETY (zeroed): plain C structs for which all-zero is a valid value.
    let mut names: [libc::sockaddr_storage; SEND_BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        let Some((to, data)) = batch.get(i) else {
            break;
        };
        let name_len = write_sockaddr(&mut names[i], to);
        iovs[i] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = name_len;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
    }
    // SAFETY: `hdrs[..n]` point at `names`, `iovs` and the batch's buffer, all alive for the call;
    // the kernel only reads the iovec memory.
    let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), n as u32, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(not(target_os = "linux"))]
pub fn send_some(socket: &tokio::net::UdpSocket, batch: &SendBatch) -> io::Result<usize> {
    let (to, data) = batch.get(0).ok_or(io::ErrorKind::InvalidInput)?;
    socket.try_send_to(data, to).map(|_| 1)
}

#[cfg(target_os = "linux")]
fn write_sockaddr(out: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of datagrams to two receivers goes out in one call and arrives intact, and a
    /// batch receive hands each one back with its source.
    #[tokio::test]
    async fn batch_send_and_receive_over_loopback() {
        let a = BatchSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let b = BatchSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let c = BatchSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let (ab, ac) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut batch = SendBatch::new();
        for i in 0..100u32 {
            let to = if i % 2 == 0 { ab } else { ac };
            let mut d = i.to_be_bytes().to_vec();
            d.resize(100 + i as usize, 7);
            batch.push(to, &d);
        }
        a.send(&mut batch).await;
        assert!(batch.is_empty());
        let mut pool = RecvPool::new();
        for (sock, parity) in [(&b, 0u32), (&c, 1)] {
            let mut got = Vec::new();
            while got.len() < 50 {
                sock.readable().await.unwrap();
                let _ = sock.try_recv(&mut pool, |from, pkt| {
                    assert_eq!(from, a.local_addr().unwrap());
                    got.push(pkt.freeze());
                });
            }
            for (j, p) in got.iter().enumerate() {
                let i = 2 * j as u32 + parity;
                assert_eq!(&p[..4], &i.to_be_bytes(), "order and content");
                assert_eq!(p.len(), 100 + i as usize);
            }
        }
    }
}
