//! Upgrading bosun in place without refusing a connection: the running process hands its
//! listening sockets (see [`crate::listen`]) to the next one over a Unix socket in the
//! data dir, with `SCM_RIGHTS`, as Envoy and pingora do.
//!
//! 1. The new process connects to `DATA_DIR/handoff.sock` and asks for the sockets; the
//!    old one sends a duplicate of each (in batches, with its key), then `end`.
//! 2. The new process serves on them as soon as its caches are loaded. Both accept from
//!    the same kernel queues meanwhile, so nothing is refused.
//! 3. The new process sends `drain`: the old one stops accepting, finishes what is in
//!    flight and exits; its end of the connection closes when it is gone, which tells the
//!    new process that the store is free.
//!
//! If the new process dies or gives up before `drain`, the old one simply keeps serving.
//! Messages are `SOCK_SEQPACKET` records, so each arrives whole with its descriptors (the
//! sockets are driven through tokio's Unix socket types, which only wrap the descriptor).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

use crate::listen::Key;

/// The socket's file name inside the data dir.
pub const SOCKET_NAME: &str = "handoff.sock";
const HELLO: &[u8] = b"bosun-handoff/1 listeners";
const DRAIN: &[u8] = b"drain";
/// Descriptors per record (the kernel takes at most 253 per message).
const BATCH: usize = 64;
/// Room for one record's text: `keys` and up to BATCH socket keys as JSON.
const RECORD: usize = 16 * 1024;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?)
}

fn stream(fd: OwnedFd) -> io::Result<UnixStream> {
    UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))
}

async fn send(conn: &UnixStream, text: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(BATCH))];
    loop {
        conn.writable().await?;
        let r = conn.try_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
                return Err(io::Error::other("too many descriptors for one record"));
            }
            let iov = [io::IoSlice::new(text)];
            rustix::net::sendmsg(conn, &iov, &mut control, SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        });
        match r {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One record and the descriptors that came with it; `None` at end of stream.
async fn recv(conn: &UnixStream) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; RECORD];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(BATCH))];
    loop {
        conn.readable().await?;
        let r = conn.try_io(Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let msg = rustix::net::recvmsg(conn, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
                .map_err(io::Error::from)?;
            let mut fds = Vec::new();
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(rights) = m {
                    fds.extend(rights);
                }
            }
            if msg.flags.contains(rustix::net::ReturnFlags::TRUNC)
                || msg.flags.contains(rustix::net::ReturnFlags::CTRUNC)
            {
                return Err(io::Error::other("handoff record truncated"));
            }
            Ok((msg.bytes, fds))
        });
        match r {
            Ok((0, _)) => return Ok(None),
            Ok((n, fds)) => return Ok(Some((buf[..n].to_vec(), fds))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The old process's side: answers the next process's request.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this server created.
    file: (u64, u64),
}

/// Keeps the connection to the new process open until this process exits: its closing is
/// the signal that the old process is gone.
static HELD: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

impl Server {
    /// Listens on `path` (a leftover file from a killed process is replaced).
    pub fn bind(path: &Path) -> io::Result<Server> {
        let fd = seqpacket()?;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let addr = SocketAddrUnix::new(path)?;
        rustix::net::bind(&fd, &addr)?;
        // Only the owner (root, as bosun) may take the sockets over.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        rustix::net::listen(&fd, 4)?;
        Ok(Server {
            listener: UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))?,
            path: path.to_path_buf(),
            file: file_id(path).ok_or_else(|| io::Error::other("handoff socket vanished"))?,
        })
    }

    /// Serves requests until one ends with `drain` (returns Ok). A request that ends
    /// otherwise (the new process failed) changes nothing here.
    pub async fn wait_for_takeover(&self) -> io::Result<()> {
        loop {
            let (conn, _) = self.listener.accept().await?;
            match self.handle(&conn).await {
                Ok(true) => {
                    if file_id(&self.path).is_some_and(|id| id == self.file) {
                        let _ = std::fs::remove_file(&self.path);
                    }
                    HELD.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(OwnedFd::from(conn.into_std()?));
                    return Ok(());
                }
                Ok(false) => tracing::warn!("upgrade: the new process gave up; still serving"),
                Err(e) => tracing::warn!("upgrade: handing over failed: {e}; still serving"),
            }
        }
    }

    /// Sends the sockets; true when the new process then asks this one to drain.
    async fn handle(&self, conn: &UnixStream) -> io::Result<bool> {
        match recv(conn).await? {
            Some((hello, _)) if hello == HELLO => {}
            _ => return Err(io::Error::other("unexpected handoff request")),
        }
        let sockets = crate::listen::for_handover()?;
        tracing::info!(
            sockets = sockets.len(),
            "upgrade: handing the listening sockets to a new bosun process"
        );
        let mut it = sockets.into_iter().peekable();
        while it.peek().is_some() {
            let batch: Vec<(Key, OwnedFd)> = it.by_ref().take(BATCH).collect();
            let keys: Vec<String> = batch.iter().map(|(k, _)| k.to_string()).collect();
            let fds: Vec<OwnedFd> = batch.into_iter().map(|(_, f)| f).collect();
            let text = format!(
                "keys {}",
                serde_json::to_string(&keys).map_err(io::Error::other)?
            );
            send(conn, text.as_bytes(), &fds).await?;
        }
        send(conn, format!("end {}", std::process::id()).as_bytes(), &[]).await?;
        match recv(conn).await? {
            Some((m, _)) if m == DRAIN => Ok(true),
            _ => Ok(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only while the file is still ours: after a handover it is the new process's.
        if file_id(&self.path).is_some_and(|id| id == self.file) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The new process's side: the sockets received, and the connection that tells the old
/// process to drain.
pub struct Takeover {
    conn: UnixStream,
    pub sockets: Vec<(Key, OwnedFd)>,
    /// The old process.
    pub pid: u32,
}

/// Asks the bosun process serving `path` for its sockets; `None` when no process answers
/// there (nothing running, or a file left by a killed one).
pub async fn take_over(path: &Path) -> io::Result<Option<Takeover>> {
    let fd = seqpacket()?;
    let addr = SocketAddrUnix::new(path)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        Err(Errno::NOENT) | Err(Errno::CONNREFUSED) => return Ok(None),
        // Unix sockets connect at once or not at all: a full queue means someone else is
        // taking over right now.
        Err(Errno::AGAIN) => {
            return Err(io::Error::other(
                "another process is taking over from the running bosun",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let conn = stream(fd)?;
    send(&conn, HELLO, &[]).await?;
    let mut sockets = Vec::new();
    loop {
        let Some((text, fds)) = recv(&conn).await? else {
            return Err(io::Error::other(
                "the running bosun closed the handoff before sending its sockets",
            ));
        };
        let text = String::from_utf8_lossy(&text);
        if let Some(pid) = text.strip_prefix("end ") {
            let pid = pid
                .parse()
                .map_err(|_| io::Error::other("bad handoff end record"))?;
            return Ok(Some(Takeover { conn, sockets, pid }));
        }
        let keys: Vec<String> = text
            .strip_prefix("keys ")
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| io::Error::other("bad handoff record"))?;
        if keys.len() != fds.len() {
            return Err(io::Error::other(
                "handoff record with the wrong number of sockets",
            ));
        }
        for (k, fd) in keys.iter().zip(fds) {
            let key: Key = k.parse().map_err(io::Error::other)?;
            sockets.push((key, fd));
        }
    }
}

impl Takeover {
    /// Tells the old process to stop accepting and drain, and waits until it has exited.
    pub async fn drain_old(self) -> io::Result<()> {
        send(&self.conn, DRAIN, &[]).await?;
        // Nothing more is sent; end of stream means the old process is gone.
        while recv(&self.conn).await?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bosun-handoff-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(SOCKET_NAME)
    }

    #[tokio::test]
    async fn nothing_to_take_over_without_a_live_server() {
        let path = temp_path("none");
        assert!(take_over(&path).await.unwrap().is_none());
        // A file left by a killed process.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(take_over(&path).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn sockets_are_handed_over_and_a_failed_takeover_changes_nothing() {
        let path = temp_path("live");
        let l = crate::listen::tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let server = Server::bind(&path).unwrap();
        let serving = tokio::spawn(async move { server.wait_for_takeover().await });

        let mut t = take_over(&path).await.unwrap().expect("a server answers");
        assert_eq!(t.pid, std::process::id());
        let i = t
            .sockets
            .iter()
            .position(|(k, _)| k.addr == addr && k.proto == crate::listen::Proto::Tcp)
            .expect("the listener was handed over");
        // The received descriptor is the same listening socket.
        let (_, fd) = t.sockets.swap_remove(i);
        let received = std::net::TcpListener::from(fd);
        received.set_nonblocking(false).unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_, peer) = received.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());

        // The new process gives up before `drain`: the old one keeps serving requests.
        drop(t);
        let again = take_over(&path).await.unwrap().expect("still serving");
        drop(again);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!serving.is_finished());
        serving.abort();
        drop(l);
    }
}
