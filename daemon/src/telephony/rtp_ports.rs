//! RTP/RTCP port pairs from the configured range: an even RTP port and the odd RTCP port
//! above it, both bound before the SDP answer names them.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// Hands out port pairs round-robin, so a port just released is not reused at once (late
/// packets of the old call must not land in a new one).
#[derive(Debug)]
pub struct RtpPorts {
    bind_ip: IpAddr,
    first: u16,
    pairs: u16,
    state: Mutex<PortState>,
}

#[derive(Debug)]
struct PortState {
    next: u16,
    in_use: Vec<bool>,
}

/// A bound RTP/RTCP socket pair; its ports return to the pool on drop.
#[derive(Debug)]
pub struct RtpSockets {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pool: Arc<RtpPorts>,
    index: u16,
}

impl RtpSockets {
    pub fn rtp_port(&self) -> u16 {
        self.pool.first + self.index * 2
    }
}

impl Drop for RtpSockets {
    fn drop(&mut self) {
        let mut s = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = s.in_use.get_mut(self.index as usize) {
            *slot = false;
        }
    }
}

impl RtpPorts {
    pub fn new(bind_ip: IpAddr, port_min: u16, port_max: u16) -> Arc<Self> {
        let first = port_min + port_min % 2;
        let pairs = if port_max > first {
            // Only whole (even RTP, odd RTCP) pairs count.
            let ports = u32::from(port_max) - u32::from(first) + 1;
            (ports / 2) as u16
        } else {
            0
        };
        Arc::new(Self {
            bind_ip,
            first,
            pairs,
            state: Mutex::new(PortState {
                next: 0,
                in_use: vec![false; pairs as usize],
            }),
        })
    }

    /// Binds the next free pair; ports another process holds are skipped.
    pub async fn allocate(self: &Arc<Self>) -> Option<RtpSockets> {
        for _ in 0..self.pairs {
            let index = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let index = s.next;
                s.next = (s.next + 1) % self.pairs.max(1);
                if s.in_use[index as usize] {
                    continue;
                }
                s.in_use[index as usize] = true;
                index
            };
            let port = self.first + index * 2;
            let rtp = UdpSocket::bind(SocketAddr::new(self.bind_ip, port)).await;
            let rtcp = UdpSocket::bind(SocketAddr::new(self.bind_ip, port + 1)).await;
            match (rtp, rtcp) {
                (Ok(rtp), Ok(rtcp)) => {
                    return Some(RtpSockets {
                        rtp,
                        rtcp,
                        pool: self.clone(),
                        index,
                    })
                }
                _ => {
                    tracing::debug!(port, "RTP port pair busy, trying the next");
                    let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    s.in_use[index as usize] = false;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pairs_are_even_odd_released_on_drop_and_exhaustible() {
        let pool = RtpPorts::new("127.0.0.1".parse().unwrap(), 41001, 41006);
        let a = pool.allocate().await.unwrap();
        let b = pool.allocate().await.unwrap();
        assert_eq!(a.rtp_port() % 2, 0);
        assert_eq!(a.rtcp.local_addr().unwrap().port(), a.rtp_port() + 1);
        assert_ne!(a.rtp_port(), b.rtp_port());
        assert!(
            pool.allocate().await.is_none(),
            "41002..41005 holds two pairs"
        );
        let freed = a.rtp_port();
        drop(a);
        assert_eq!(pool.allocate().await.unwrap().rtp_port(), freed);
    }
}
