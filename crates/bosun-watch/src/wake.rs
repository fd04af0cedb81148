//! Several informers' changes as one wake-up, for a loop that re-reads what it needs from the
//! caches on every pass: only "something changed" matters to it, and changes that arrive while
//! a pass runs fold into one pending wake-up.

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Wakes when any of the followed streams yields; the forwarding tasks end with it.
pub struct Wake {
    rx: mpsc::Receiver<()>,
    /// Dropped at the first wait, so the channel closes when the last stream ends.
    tx: Option<mpsc::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Default for Wake {
    fn default() -> Self {
        Self::new()
    }
}

impl Wake {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Wake {
            rx,
            tx: Some(tx),
            tasks: Vec::new(),
        }
    }

    /// Follows one more stream, typically an informer's `subscribe()`. Streams are added
    /// before the first wait.
    pub fn on<S: Stream + Send + 'static>(mut self, s: S) -> Self {
        let Some(tx) = self.tx.clone() else {
            return self;
        };
        let mut s: BoxStream<'static, S::Item> = s.boxed();
        self.tasks.push(tokio::spawn(async move {
            while s.next().await.is_some() {
                // Full: a wake-up is already pending, which covers this change too.
                let _ = tx.try_send(());
            }
        }));
        self
    }

    /// Waits for a change; `None` once every followed stream has ended.
    pub async fn changed(&mut self) -> Option<()> {
        self.tx = None;
        self.rx.recv().await
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_fold_into_one_wake_up_and_end_with_the_streams() {
        let (a_tx, a_rx) = mpsc::channel::<u32>(8);
        let (b_tx, b_rx) = mpsc::channel::<u32>(8);
        let mut wake = Wake::new()
            .on(tokio_stream_from(a_rx))
            .on(tokio_stream_from(b_rx));
        a_tx.send(1).await.unwrap();
        b_tx.send(2).await.unwrap();
        a_tx.send(3).await.unwrap();
        assert_eq!(wake.changed().await, Some(()));
        tokio::task::yield_now().await;
        drop((a_tx, b_tx));
        // At most the one pending wake-up is left, then the end.
        let mut left = 0;
        while wake.changed().await.is_some() {
            left += 1;
        }
        assert!(left <= 1, "{left} wake-ups after the first");
    }

    fn tokio_stream_from(mut rx: mpsc::Receiver<u32>) -> impl Stream<Item = u32> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
