//! A TCP proxy for fault injection: put it between a Slipway process and a real service, then
//! cut the link (every connection closed, new ones refused) and restore it, or slow it down to
//! a trickle so an operation is certainly in flight when the test acts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy on 127.0.0.1 to `target`; stops on drop.
pub struct Proxy {
    pub port: u16,
    up: watch::Sender<bool>,
    /// Bytes per 100 ms from the target to the client; 0 = unlimited.
    rate: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port and forwards every connection to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let (up, up_rx) = watch::channel(true);
        let rate = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let target = target.to_string();
        let task = tokio::spawn(accept(listener, target, up_rx, rate.clone(), forwarded.clone()));
        Self { port, up, rate, forwarded, task }
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        let _ = self.up.send(false);
    }

    /// Accepts and forwards again.
    pub fn restore(&self) {
        let _ = self.up.send(true);
    }

    /// Limits each direction to `bytes_per_100ms` (0: no limit).
    pub fn throttle(&self, bytes_per_100ms: u64) {
        self.rate.store(bytes_per_100ms, Ordering::Relaxed);
    }

    /// Bytes forwarded so far, both directions.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.up.send(false);
    }
}

async fn accept(
    listener: TcpListener,
    target: String,
    up: watch::Receiver<bool>,
    rate: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if !*up.borrow() {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(&target).await else { continue };
        tokio::spawn(forward(client, server, up.clone(), rate.clone(), forwarded.clone()));
    }
}

/// Copies both ways between `client` and `server` until either side closes or the link is cut.
async fn forward<C, S>(
    client: C,
    server: S,
    mut up: watch::Receiver<bool>,
    rate: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let upstream = pipe(&mut cr, &mut sw, &rate, &forwarded);
    let downstream = pipe(&mut sr, &mut cw, &rate, &forwarded);
    let cut = async move {
        while *up.borrow_and_update() {
            if up.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        _ = cut => {}
    }
}

/// The same proxy for a Unix socket (the Docker engine's): listens at a path of its own and
/// forwards to `target`. Cut, it closes every connection and refuses new ones.
pub struct UnixProxy {
    pub path: std::path::PathBuf,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl UnixProxy {
    pub fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().expect("socket dir");
        let path = dir.path().join("proxy.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind unix proxy");
        let (up, up_rx) = watch::channel(true);
        let target = target.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if !*up_rx.borrow() {
                    drop(client);
                    continue;
                }
                let Ok(server) = tokio::net::UnixStream::connect(&target).await else { continue };
                let (rate, forwarded) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
                tokio::spawn(forward(client, server, up_rx.clone(), rate, forwarded));
            }
        });
        Self { path, up, task, _dir: dir }
    }

    /// Closes every connection and refuses new ones until [`UnixProxy::restore`].
    pub fn cut(&self) {
        let _ = self.up.send(false);
    }

    pub fn restore(&self) {
        let _ = self.up.send(true);
    }
}

impl Drop for UnixProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.up.send(false);
    }
}

/// Copies `from` to `to`, at most `rate` bytes per 100 ms when a rate is set, counting bytes.
async fn pipe(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    rate: &AtomicU64,
    forwarded: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let limit = rate.load(Ordering::Relaxed);
        let want = if limit == 0 { buf.len() } else { (limit as usize).min(buf.len()) };
        let n = match from.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        forwarded.fetch_add(n as u64, Ordering::Relaxed);
        if limit > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
