//! Data-path threads: every accepted connection of the node proxy and the gateway is served
//! start to end on one thread running a single-threaded tokio runtime of its own, as each
//! of nginx's worker processes serves its connections.
//!
//! On tokio's shared multi-threaded runtime, a request's socket events were often picked
//! up by one worker and its task run by the other: every request paid futex and eventfd
//! wake-ups between the threads (about half a wake-up per request in `perf trace`), and
//! its memory moved between the cores' caches. Here a connection's downstream socket, its
//! upstream connections (the pool is driven by the request's own task, see
//! `upstream::pool`) and its timers all live on the thread that accepted it from the
//! listener's hand-off, so a request wakes no other thread. Only the hand-off itself, once
//! per connection, crosses threads.
//!
//! A connection goes to the thread with the fewest open connections (round robin among
//! equals). The threads are started when the first connection arrives, one per CPU
//! (`BOSUN_DATA_PATH_THREADS=N` overrides; 0 serves connections on the shared runtime as
//! before), and live as long as the process.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;
use tokio::sync::mpsc;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections handed to this thread that have not ended.
    open: Arc<AtomicUsize>,
}

struct Workers {
    threads: Vec<Worker>,
    next: AtomicUsize,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// 1 + this thread's index on a data-path thread, 0 on any other thread.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Which thread's share of per-thread state (such as idle upstream connections) the
/// calling thread uses: 1 + its index on a data-path thread, 0 on any other; below
/// [`slot_count`].
pub fn slot() -> usize {
    SLOT.with(Cell::get) % slot_count()
}

/// How many [`slot`]s there are: the data-path threads and one for every other thread.
pub fn slot_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| thread_count() + 1)
}

/// How many data-path threads to run: `BOSUN_DATA_PATH_THREADS`, else one per CPU; 0
/// serves connections on the shared runtime.
fn thread_count() -> usize {
    std::env::var("BOSUN_DATA_PATH_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(64)
}

impl Workers {
    fn start(count: usize) -> Workers {
        let mut threads = Vec::new();
        for i in 0..count {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!("data-path runtime: {e}");
                    break;
                }
            };
            let spawned = std::thread::Builder::new()
                .name(format!("bosun-data-{i}"))
                .spawn(move || {
                    SLOT.set(i + 1);
                    rt.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(job);
                        }
                    })
                });
            match spawned {
                Ok(_) => threads.push(Worker {
                    jobs: tx,
                    open: Arc::new(AtomicUsize::new(0)),
                }),
                Err(e) => {
                    tracing::warn!("data-path thread: {e}");
                    break;
                }
            }
        }
        if threads.len() < count {
            tracing::warn!(
                started = threads.len(),
                "not every data-path thread could be started; without any, connections are served on the shared runtime"
            );
        }
        Workers {
            threads,
            next: AtomicUsize::new(0),
        }
    }

    /// See [`spawn_connection`].
    fn connection<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let peer = stream.peer_addr().ok();
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(?peer, "accepted connection: {e}");
                return;
            }
        };
        self.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(s) => serve(s).await,
                Err(e) => tracing::debug!(?peer, "accepted connection: {e}"),
            }
        })
    }

    fn spawn<F>(&self, conn: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let n = self.threads.len();
        if n == 0 {
            tokio::spawn(conn);
            return;
        }
        // Fewest open connections; scanning from a rotating start spreads ties.
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let w = (0..n)
            .map(|k| &self.threads[(first + k) % n])
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
            .unwrap_or(&self.threads[first]);
        w.open.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard(w.open.clone());
        let job: Job = Box::pin(async move {
            let _guard = guard;
            conn.await
        });
        if let Err(mpsc::error::SendError(job)) = w.jobs.send(job) {
            // The thread is gone (it panicked): serve here rather than drop the connection.
            tokio::spawn(job);
        }
    }
}

/// Decrements a worker's open count when the connection's future ends or is dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves an accepted connection on a data-path thread: the stream leaves the accepting
/// runtime (`TcpStream::into_std`) and joins the chosen thread's (`TcpStream::from_std`),
/// where `serve` runs from its first poll, so upstream connections and timers it makes
/// are that thread's too. Without data-path threads (none could be started) it is
/// spawned on the caller's runtime.
pub fn spawn_connection<F, Fut>(stream: TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    WORKERS
        .get_or_init(|| Workers::start(thread_count()))
        .connection(stream, serve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_are_served_on_data_path_threads_spread_by_open_count() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (names_tx, mut names_rx) = mpsc::unbounded_channel();
        // Kept until the end: a worker thread ends, and drops its connections, when its
        // `Workers` is dropped.
        let workers = Arc::new(Workers::start(2));
        assert_eq!(workers.threads.len(), 2);
        let w = workers.clone();
        let accept = tokio::spawn(async move {
            for _ in 0..2 {
                let (s, _) = l.accept().await.unwrap();
                let names_tx = names_tx.clone();
                w.connection(s, move |mut s| async move {
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    names_tx.send(name.clone()).unwrap();
                    // Echo until the client closes: the connection stays open meanwhile.
                    let mut buf = [0u8; 16];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        s.write_all(&buf[..n]).await.unwrap();
                    }
                });
            }
        });
        let mut clients = Vec::new();
        let mut names = HashSet::new();
        for _ in 0..2 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            names.insert(names_rx.recv().await.unwrap());
            clients.push(c);
        }
        accept.await.unwrap();
        assert!(
            names.iter().all(|n| n.starts_with("bosun-data-")),
            "served on {names:?}"
        );
        // Both connections are open at once, so they went to different threads.
        assert_eq!(names.len(), 2, "served on {names:?}");
        assert!(
            workers
                .threads
                .iter()
                .all(|t| t.open.load(Ordering::Relaxed) == 1)
        );
        drop(clients);
        // Each connection's end is counted.
        for _ in 0..100 {
            if workers
                .threads
                .iter()
                .all(|t| t.open.load(Ordering::Relaxed) == 0)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("open connections were not counted down");
    }
}
