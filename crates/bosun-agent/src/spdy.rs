//! The server side of SPDY/3.1 as Kubernetes streaming uses it (`Upgrade: SPDY/3.1`, what
//! kubectl's exec and port-forward speak, also tunneled inside a WebSocket by newer kubectl):
//! the client opens streams (SYN_STREAM with a `streamtype` header), the server accepts each
//! with a SYN_REPLY, both send DATA frames and half-close with FIN.
//!
//! Header blocks are zlib streams primed with SPDY's dictionary, one stream per direction for
//! the whole session, each block ended by a sync flush. Flow control is not enforced: Go's
//! spdystream (the peer) neither sends nor honours WINDOW_UPDATE.

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status CANCEL.
const CANCEL: u32 = 5;
/// Largest DATA frame sent (the format allows 16 MiB; small frames interleave streams).
const MAX_DATA: usize = 32 * 1024;
/// Largest frame accepted from the peer.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The zlib dictionary of SPDY/3 header blocks (draft-mbelshe-httpbis-spdy-00, 2.6.10.1):
/// length-prefixed header words, then a run of common values.
pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412\
        413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved \
        Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal \
        Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul \
        Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,\
        image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
        text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,\
        utf-,*,enq=0.";
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
});

/// Encodes header blocks: one zlib stream for the session's whole direction.
struct HeaderEncoder(Compress);

impl HeaderEncoder {
    fn new() -> std::io::Result<Self> {
        let mut c = Compress::new(Compression::best(), true);
        c.set_dictionary(&DICTIONARY)
            .map_err(std::io::Error::other)?;
        Ok(Self(c))
    }

    fn encode(&mut self, headers: &[(&str, &str)]) -> std::io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start = self.0.total_in();
        loop {
            let used = (self.0.total_in() - start) as usize;
            out.reserve(256);
            self.0
                .compress_vec(&raw[used..], &mut out, FlushCompress::Sync)
                .map_err(std::io::Error::other)?;
            // The sync flush is complete once all input is in and output room was left.
            if (self.0.total_in() - start) as usize == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Decodes header blocks of the peer's direction.
struct HeaderDecoder(Decompress);

impl HeaderDecoder {
    fn new() -> Self {
        Self(Decompress::new(true))
    }

    fn decode(&mut self, block: &[u8]) -> std::io::Result<Vec<(String, String)>> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.0.total_in();
        loop {
            let used = (self.0.total_in() - start) as usize;
            if used == block.len() && raw.len() < raw.capacity() {
                break;
            }
            if raw.len() > MAX_FRAME {
                return Err(bad("header block too large"));
            }
            raw.reserve(1024);
            match self
                .0
                .decompress_vec(&block[used..], &mut raw, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| bad(&e.to_string()))?;
                }
                Err(e) => return Err(bad(&e.to_string())),
            }
        }
        let mut p = &raw[..];
        let take_u32 = |p: &mut &[u8]| -> std::io::Result<usize> {
            if p.len() < 4 {
                return Err(bad("short header block"));
            }
            let n = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            *p = &p[4..];
            Ok(n)
        };
        let n = take_u32(&mut p)?;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let field = |p: &mut &[u8]| -> std::io::Result<String> {
                let len = take_u32(p)?;
                if p.len() < len {
                    return Err(bad("short header block"));
                }
                let s = String::from_utf8_lossy(&p[..len]).into_owned();
                *p = &p[len..];
                Ok(s)
            };
            let k = field(&mut p)?;
            let v = field(&mut p)?;
            for one in v.split('\0') {
                out.push((k.to_ascii_lowercase(), one.to_string()));
            }
        }
        Ok(out)
    }
}

enum Out {
    Reply(u32),
    Data(u32, Bytes, bool),
    Rst(u32),
    Ping(u32),
    GoAway,
}

/// One stream the peer opened.
pub struct Stream {
    pub id: u32,
    pub headers: Vec<(String, String)>,
    /// DATA from the peer; ends at its FIN (or a reset).
    pub rx: mpsc::Receiver<Bytes>,
    pub out: StreamWriter,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends on one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    tx: mpsc::Sender<Out>,
}

impl StreamWriter {
    /// Sends bytes; false when the session is gone.
    pub async fn write(&self, mut data: Bytes) -> bool {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA));
            if self
                .tx
                .send(Out::Data(self.id, chunk, false))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Half-closes the stream (FIN).
    pub async fn close(&self) {
        let _ = self.tx.send(Out::Data(self.id, Bytes::new(), true)).await;
    }

    pub async fn reset(&self) {
        let _ = self.tx.send(Out::Rst(self.id)).await;
    }
}

/// A server session: the streams the peer opens arrive on `incoming`.
pub struct Session {
    pub incoming: mpsc::Receiver<Stream>,
    tx: mpsc::Sender<Out>,
    reader: tokio::task::JoinHandle<()>,
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl Session {
    /// Starts a session over an upgraded connection.
    pub fn serve<IO>(io: IO) -> std::io::Result<Session>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (tx, out_rx) = mpsc::channel::<Out>(256);
        let (in_tx, incoming) = mpsc::channel::<Stream>(64);
        let enc = HeaderEncoder::new()?;
        let writer = tokio::spawn(write_loop(wr, out_rx, enc));
        let reader = tokio::spawn(read_loop(rd, tx.clone(), in_tx));
        Ok(Session {
            incoming,
            tx,
            reader,
            writer: Some(writer),
        })
    }

    /// Ends the session: GOAWAY, then everything queued is flushed and the connection closed.
    pub async fn close(mut self) {
        let _ = self.tx.send(Out::GoAway).await;
        self.reader.abort();
        drop(std::mem::replace(&mut self.tx, mpsc::channel(1).0));
        self.incoming.close();
        if let Some(w) = self.writer.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), w).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    let len = payload.len() as u32;
    f.push(flags);
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

async fn write_loop<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Out>, mut enc: HeaderEncoder) {
    let mut wr = std::pin::pin!(wr);
    let mut last_good = 0u32;
    while let Some(first) = rx.recv().await {
        let mut buf = Vec::new();
        let mut next = Some(first);
        // Coalesce what is queued into one write.
        while let Some(o) = next {
            let frame = match o {
                Out::Reply(id) => {
                    last_good = last_good.max(id);
                    let Ok(block) = enc.encode(&[]) else {
                        return;
                    };
                    let mut p = id.to_be_bytes().to_vec();
                    p.extend_from_slice(&block);
                    control(SYN_REPLY, 0, &p)
                }
                Out::Data(id, data, fin) => {
                    let mut f = Vec::with_capacity(8 + data.len());
                    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                    f.push(if fin { FLAG_FIN } else { 0 });
                    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                    f.extend_from_slice(&data);
                    f
                }
                Out::Rst(id) => {
                    let mut p = id.to_be_bytes().to_vec();
                    p.extend_from_slice(&CANCEL.to_be_bytes());
                    control(RST_STREAM, 0, &p)
                }
                Out::Ping(id) => control(PING, 0, &id.to_be_bytes()),
                Out::GoAway => {
                    let mut p = last_good.to_be_bytes().to_vec();
                    p.extend_from_slice(&0u32.to_be_bytes());
                    control(GOAWAY, 0, &p)
                }
            };
            buf.extend_from_slice(&frame);
            next = if buf.len() < 64 * 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

async fn read_loop<R: AsyncRead>(rd: R, tx: mpsc::Sender<Out>, incoming: mpsc::Sender<Stream>) {
    let mut rd = std::pin::pin!(rd);
    let mut dec = HeaderDecoder::new();
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut head = [0u8; 8];
    loop {
        if rd.read_exact(&mut head).await.is_err() {
            return;
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return;
        }
        let mut payload = vec![0u8; len];
        if rd.read_exact(&mut payload).await.is_err() {
            return;
        }
        let word = |i: usize| {
            payload
                .get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0)
        };
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if let Some(s) = streams.get(&id) {
                if !payload.is_empty() && s.send(Bytes::from(payload)).await.is_err() {
                    // The consumer is gone; later DATA on it is dropped.
                }
                if flags & FLAG_FIN != 0 {
                    streams.remove(&id);
                }
            }
            continue;
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        match kind {
            SYN_STREAM => {
                let id = word(0) & 0x7fff_ffff;
                let Some(block) = payload.get(10..) else {
                    return;
                };
                let Ok(headers) = dec.decode(block) else {
                    return;
                };
                let (dtx, drx) = mpsc::channel(32);
                if flags & FLAG_FIN == 0 {
                    streams.insert(id, dtx);
                }
                if tx.send(Out::Reply(id)).await.is_err() {
                    return;
                }
                let s = Stream {
                    id,
                    headers,
                    rx: drx,
                    out: StreamWriter { id, tx: tx.clone() },
                };
                if incoming.send(s).await.is_err() {
                    return;
                }
            }
            HEADERS | SYN_REPLY => {
                // Keep the decompressor in step with the peer.
                let Some(block) = payload.get(4..) else {
                    return;
                };
                if dec.decode(block).is_err() {
                    return;
                }
            }
            RST_STREAM => {
                streams.remove(&(word(0) & 0x7fff_ffff));
            }
            PING => {
                let _ = tx.send(Out::Ping(word(0))).await;
            }
            GOAWAY => return,
            SETTINGS | WINDOW_UPDATE => {}
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b",enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_through_one_zlib_stream() {
        let mut enc = HeaderEncoder::new().expect("encoder");
        let mut dec = HeaderDecoder::new();
        for i in 0..3 {
            let port = format!("80{i}");
            let block = enc
                .encode(&[("streamtype", "data"), ("port", &port)])
                .expect("encode");
            let h = dec.decode(&block).expect("decode");
            assert_eq!(
                h,
                vec![
                    ("streamtype".to_string(), "data".to_string()),
                    ("port".to_string(), port)
                ]
            );
        }
    }

    #[tokio::test]
    async fn streams_open_carry_data_and_half_close() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut session = Session::serve(server).expect("session");
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut enc = HeaderEncoder::new().expect("encoder");
        let block = enc.encode(&[("streamtype", "stdin")]).expect("encode");
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&block);
        cwr.write_all(&control(SYN_STREAM, 0, &p))
            .await
            .expect("syn");
        let mut data = 1u32.to_be_bytes().to_vec();
        data.push(FLAG_FIN);
        data.extend_from_slice(&[0, 0, 2]);
        data.extend_from_slice(b"hi");
        cwr.write_all(&data).await.expect("data");
        let mut s = session.incoming.recv().await.expect("stream");
        assert_eq!(s.header("streamtype"), Some("stdin"));
        assert_eq!(s.rx.recv().await.as_deref(), Some(&b"hi"[..]));
        assert!(s.rx.recv().await.is_none(), "FIN ends the stream");
        assert!(s.out.write(Bytes::from_static(b"out")).await);
        s.out.close().await;
        // SYN_REPLY, then DATA "out", then the empty FIN frame.
        let mut head = [0u8; 8];
        crd.read_exact(&mut head).await.expect("reply");
        assert_eq!(u16::from_be_bytes([head[2], head[3]]), SYN_REPLY);
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut rest = vec![0; len];
        crd.read_exact(&mut rest).await.expect("reply body");
        let mut frame = [0u8; 11];
        crd.read_exact(&mut frame).await.expect("data");
        assert_eq!(&frame[..4], &1u32.to_be_bytes());
        assert_eq!(&frame[8..], b"out");
        crd.read_exact(&mut head).await.expect("fin");
        assert_eq!(head[4], FLAG_FIN);
    }
}
