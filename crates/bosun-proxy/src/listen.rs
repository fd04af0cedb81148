//! Listening sockets of the node's traffic components (node proxy, gateway, DNS, API).
//!
//! Port sharing: the gateway listens on `0.0.0.0:80` and a Service's cluster IP listener
//! on `VIP:80`. Linux refuses that pair unless both sockets set `SO_REUSEPORT` (plain
//! `SO_REUSEADDR` does not cover a listening socket); with it, the kernel delivers a
//! connection to the most specific listener, so `VIP:80` reaches the Service and every
//! other address reaches the gateway, whichever was bound first. `SO_REUSEPORT` alone would
//! also let a second process bind the very same `address:port` and silently take half of
//! its connections, so [`tcp`] first refuses an address that is already listening.
//!
//! Handover: every socket opened here is remembered (as a duplicate descriptor) so that
//! an upgrade can pass them all to the next bosun process ([`crate::handoff`]); sockets
//! received that way are [`inherit`]ed and returned by [`tcp`] / [`udp`] instead of
//! binding anew, so connections waiting in their queues are never refused or reset.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;
use std::sync::{LazyLock, Mutex, MutexGuard};

use tokio::net::{TcpListener, TcpSocket};

/// Transport of a listening socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

/// What a socket listens on: `tcp 10.96.0.10:80`, `udp 10.42.0.1:53`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub proto: Proto,
    pub addr: SocketAddr,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{p} {}", self.addr)
    }
}

impl FromStr for Key {
    type Err = String;
    fn from_str(s: &str) -> Result<Key, String> {
        let (p, a) = s
            .split_once(' ')
            .ok_or_else(|| format!("bad socket key {s:?}"))?;
        let proto = match p {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(format!("bad socket protocol in {s:?}")),
        };
        let addr = a
            .parse()
            .map_err(|e| format!("bad address in {s:?}: {e}"))?;
        Ok(Key { proto, addr })
    }
}

#[derive(Default)]
struct Registry {
    /// Received from the previous process, not taken yet.
    inherited: HashMap<Key, OwnedFd>,
    /// Duplicates of the sockets this process listens on, to hand over.
    open: HashMap<Key, OwnedFd>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

static SERVING: LazyLock<tokio::sync::watch::Sender<std::collections::BTreeSet<&'static str>>> =
    LazyLock::new(|| tokio::sync::watch::channel(Default::default()).0);

/// Records that `component` accepts on its sockets with its caches loaded.
pub fn serving(component: &'static str) {
    SERVING.send_modify(|s| {
        s.insert(component);
    });
}

/// Waits until every one of `components` is [`serving`].
pub async fn wait_serving(components: &[&str]) {
    let mut rx = SERVING.subscribe();
    let _ = rx
        .wait_for(|s| components.iter().all(|c| s.contains(c)))
        .await;
}

/// Offers sockets received from the previous process; [`tcp`] and [`udp`] take them.
pub fn inherit(sockets: impl IntoIterator<Item = (Key, OwnedFd)>) {
    registry().inherited.extend(sockets);
}

/// Closes inherited sockets nobody took (their Service went away during the handover).
pub fn release_inherited() -> Vec<Key> {
    let mut r = registry();
    let keys: Vec<Key> = r.inherited.keys().copied().collect();
    r.inherited.clear();
    keys
}

/// Duplicates of every socket this process listens on, for the next process.
pub fn for_handover() -> io::Result<Vec<(Key, OwnedFd)>> {
    let r = registry();
    let mut out = Vec::with_capacity(r.open.len());
    for (k, fd) in &r.open {
        out.push((*k, fd.try_clone()?));
    }
    out.sort_by_key(|(k, _)| *k);
    Ok(out)
}

/// Stops handing over a socket this process closed (a Service went away).
pub fn forget(key: Key) {
    registry().open.remove(&key);
}

fn remember(key: Key, fd: impl AsFd) -> io::Result<()> {
    let dup = fd.as_fd().try_clone_to_owned()?;
    registry().open.insert(key, dup);
    Ok(())
}

fn take_inherited(key: Key) -> Option<OwnedFd> {
    registry().inherited.remove(&key)
}

/// Binds and listens on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT` (see the module
/// docs), or takes the socket inherited for it; fails with `AddrInUse` if something else
/// already listens on exactly `addr`.
pub fn tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(tcp_std(addr)?)
}

/// [`tcp`] as a non-blocking std listener (for servers that take one).
pub fn tcp_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let key = Key {
        proto: Proto::Tcp,
        addr,
    };
    if let Some(fd) = take_inherited(key) {
        let l = std::net::TcpListener::from(fd);
        l.set_nonblocking(true)?;
        remember(key, &l)?;
        return Ok(l);
    }
    if addr.port() != 0 && listening(addr)? {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{addr}: address already in use (another process listens on it)"),
        ));
    }
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Rebinding right after a Service is recreated must not wait for TIME_WAIT.
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(addr)?;
    let l = s.listen(1024)?.into_std()?;
    let key = Key {
        proto: Proto::Tcp,
        addr: l.local_addr()?,
    };
    remember(key, &l)?;
    Ok(l)
}

/// A non-blocking UDP socket bound to `addr`, or the one inherited for it.
pub fn udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let key = Key {
        proto: Proto::Udp,
        addr,
    };
    let s = match take_inherited(key) {
        Some(fd) => std::net::UdpSocket::from(fd),
        None => std::net::UdpSocket::bind(addr)?,
    };
    s.set_nonblocking(true)?;
    let key = Key {
        proto: Proto::Udp,
        addr: s.local_addr()?,
    };
    remember(key, &s)?;
    Ok(s)
}

/// Whether a TCP socket listens on exactly `addr`, from `/proc/net/tcp{,6}`.
fn listening(addr: SocketAddr) -> io::Result<bool> {
    let path = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let table = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // No IPv6 in this kernel: nothing listens there.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(listeners_in(&table).any(|a| a == addr))
}

/// The local addresses of the LISTEN rows of a `/proc/net/tcp` or `tcp6` table.
fn listeners_in(table: &str) -> impl Iterator<Item = SocketAddr> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1)?;
        let state = cols.nth(1)?;
        if state != "0A" {
            return None;
        }
        let (ip, port) = local.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The kernel prints each 32-bit word of the address in host byte order.
        let words = (0..ip.len() / 8)
            .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
            .collect::<Option<Vec<u32>>>()?;
        let ip = match words.as_slice() {
            [w] => IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())),
            [a, b, c, d] => {
                let mut bytes = [0u8; 16];
                for (i, w) in [a, b, c, d].into_iter().enumerate() {
                    bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0A00960A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0";
        let got: Vec<SocketAddr> = listeners_in(v4).collect();
        assert_eq!(
            got,
            vec![
                "0.0.0.0:80".parse().unwrap(),
                "10.150.0.10:80".parse().unwrap()
            ]
        );
        let v6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 0A 00000000:00000000";
        let got: Vec<SocketAddr> = listeners_in(v6).collect();
        assert_eq!(got, vec!["[::1]:53".parse().unwrap()]);
    }

    #[test]
    fn keys_round_trip() {
        for k in ["tcp 0.0.0.0:80", "udp 10.42.0.1:53", "tcp [::1]:443"] {
            assert_eq!(k.parse::<Key>().unwrap().to_string(), k);
        }
        assert!("sctp 1.2.3.4:5".parse::<Key>().is_err());
        assert!("tcp nowhere".parse::<Key>().is_err());
    }

    #[tokio::test]
    async fn an_inherited_socket_is_taken_instead_of_binding() {
        let l = tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let key = Key {
            proto: Proto::Tcp,
            addr,
        };
        let handed: Vec<_> = for_handover()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| *k == key)
            .collect();
        assert_eq!(handed.len(), 1);
        // A connection queued before the handover is accepted from the inherited copy.
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        drop(l);
        forget(key);
        inherit(handed);
        let again = tcp(addr).unwrap();
        let (s, _) = again.accept().await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), client.local_addr().unwrap());
    }

    #[tokio::test]
    async fn specific_address_wins_over_wildcard_in_both_bind_orders() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // 127.0.0.0/8 is local as a whole: a stand-in for a Service VIP.
        for vip_first in [false, true] {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = probe.local_addr().unwrap().port();
            drop(probe);
            let vip: SocketAddr = (Ipv4Addr::new(127, 0, 0, 77), port).into();
            let any: SocketAddr = (Ipv4Addr::UNSPECIFIED, port).into();
            let (wild, specific) = if vip_first {
                let s = tcp(vip).unwrap();
                (tcp(any).unwrap(), s)
            } else {
                let w = tcp(any).unwrap();
                (w, tcp(vip).unwrap())
            };
            // A second listener on exactly the same address is refused.
            assert_eq!(tcp(any).unwrap_err().kind(), io::ErrorKind::AddrInUse);
            assert_eq!(tcp(vip).unwrap_err().kind(), io::ErrorKind::AddrInUse);
            let serve = |l: TcpListener, name: &'static [u8]| {
                tokio::spawn(async move {
                    loop {
                        let (mut s, _) = l.accept().await.unwrap();
                        s.write_all(name).await.unwrap();
                    }
                })
            };
            let a = serve(wild, b"gateway");
            let b = serve(specific, b"service");
            for (dst, want) in [
                (vip, &b"service"[..]),
                ((Ipv4Addr::LOCALHOST, port).into(), &b"gateway"[..]),
            ] {
                let mut c = tokio::net::TcpStream::connect(dst).await.unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, want, "vip_first={vip_first} dst={dst}");
            }
            a.abort();
            b.abort();
        }
    }
}
