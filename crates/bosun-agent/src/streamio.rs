//! The streams of an interactive `exec` or `attach` between a protocol (WebSocket channels,
//! SPDY streams) and what runs in the container: a child process on pipes or a
//! pseudo-terminal, or a Docker exec/attach connection.

use std::pin::Pin;
use std::process::Stdio;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// What the client asked to stream; a closed `stdin` channel is end of input.
#[derive(Default)]
pub struct StreamIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Terminal sizes as (width, height).
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
    pub tty: bool,
}

async fn pump(mut r: impl AsyncRead + Unpin, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            // A pty master reads EIO once the last holder of its slave closed it.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn feed(
    mut w: impl AsyncWrite + Unpin + Send + 'static,
    mut rx: mpsc::Receiver<Bytes>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    })
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Runs `cmd` with the client's streams and returns its exit code once it ended and its
/// output was delivered.
pub async fn run_child(mut cmd: tokio::process::Command, io: StreamIo) -> Result<i32> {
    cmd.kill_on_drop(true);
    if io.tty {
        return run_tty(cmd, io).await;
    }
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    cmd.stdin(piped(io.stdin.is_some()))
        .stdout(piped(io.stdout.is_some()))
        .stderr(piped(io.stderr.is_some()));
    let mut child = cmd.spawn().context("start the command")?;
    let stdin = match (child.stdin.take(), io.stdin) {
        (Some(w), Some(rx)) => Some(feed(w, rx)),
        _ => None,
    };
    let out = child
        .stdout
        .take()
        .zip(io.stdout)
        .map(|(r, tx)| tokio::spawn(pump(r, tx)));
    let err = child
        .stderr
        .take()
        .zip(io.stderr)
        .map(|(r, tx)| tokio::spawn(pump(r, tx)));
    let status = child.wait().await?;
    for t in [out, err].into_iter().flatten() {
        let _ = t.await;
    }
    if let Some(t) = stdin {
        t.abort();
    }
    Ok(exit_code(status))
}

async fn run_tty(mut cmd: tokio::process::Command, io: StreamIo) -> Result<i32> {
    let pty = nix::pty::openpty(None, None).context("open a pseudo-terminal")?;
    let slave = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    let mut child = cmd.spawn().context("start the command")?;
    // The Command holds the slave's descriptors: drop them so EOF comes when the child ends.
    drop(cmd);
    let master = pty.master;
    let reader = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let writer = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let stdin = io.stdin.map(|rx| feed(writer, rx));
    let resize = io.resize.map(|mut rx| {
        tokio::spawn(async move {
            while let Some((w, h)) = rx.recv().await {
                let ws = rustix::termios::Winsize {
                    ws_row: h,
                    ws_col: w,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                let _ = rustix::termios::tcsetwinsize(&master, ws);
            }
        })
    });
    let out = io.stdout.map(|tx| tokio::spawn(pump(reader, tx)));
    let status = child.wait().await?;
    if let Some(t) = out {
        let _ = t.await;
    }
    for t in [stdin, resize].into_iter().flatten() {
        t.abort();
    }
    Ok(exit_code(status))
}

pub type DockerOutput = Pin<
    Box<dyn Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send>,
>;

/// Moves bytes between the client's streams and a Docker exec or attach connection until
/// the container side ends its output.
pub async fn pump_docker(
    mut output: DockerOutput,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    stdin: Option<mpsc::Receiver<Bytes>>,
    stdout: Option<mpsc::Sender<Bytes>>,
    stderr: Option<mpsc::Sender<Bytes>>,
) {
    use bollard::container::LogOutput;
    let feeder = stdin.map(|rx| feed(input, rx));
    while let Some(Ok(chunk)) = output.next().await {
        let (tx, message) = match chunk {
            LogOutput::StdErr { message } => (stderr.as_ref().or(stdout.as_ref()), message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (stdout.as_ref(), message)
            }
            LogOutput::StdIn { .. } => continue,
        };
        if let Some(tx) = tx
            && tx.send(message).await.is_err()
        {
            break;
        }
    }
    if let Some(t) = feeder {
        t.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_gets_stdin_and_its_output_and_exit_code_come_back() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "cat; echo err >&2; exit 7"]);
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let (err_tx, mut err_rx) = mpsc::channel(4);
        in_tx
            .send(Bytes::from_static(b"hello\n"))
            .await
            .expect("send");
        drop(in_tx);
        let io = StreamIo {
            stdin: Some(in_rx),
            stdout: Some(out_tx),
            stderr: Some(err_tx),
            ..Default::default()
        };
        let code = run_child(cmd, io).await.expect("run");
        assert_eq!(code, 7);
        assert_eq!(out_rx.recv().await.as_deref(), Some(&b"hello\n"[..]));
        assert_eq!(err_rx.recv().await.as_deref(), Some(&b"err\n"[..]));
    }

    #[tokio::test]
    async fn a_tty_child_sees_a_terminal_of_the_size_asked() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "sleep 0.3; stty size; test -t 0"]);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let (rs_tx, rs_rx) = mpsc::channel(4);
        rs_tx.send((91, 17)).await.expect("resize");
        let io = StreamIo {
            stdout: Some(out_tx),
            resize: Some(rs_rx),
            tty: true,
            ..Default::default()
        };
        let code = run_child(cmd, io).await.expect("run");
        let mut text = Vec::new();
        while let Some(b) = out_rx.recv().await {
            text.extend_from_slice(&b);
        }
        assert_eq!(code, 0);
        assert_eq!(String::from_utf8_lossy(&text).trim(), "17 91");
    }
}
