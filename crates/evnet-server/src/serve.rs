//! Serving the router over TCP with two timeouts axum's `serve` lacks:
//!
//! * **header read**: a connection that has sent part of a request's head
//!   (a half request line, headers without their end) for longer than this
//!   is closed;
//! * **idle**: a connection with no request in flight and no bytes either
//!   way for longer than this is closed.
//!
//! A request in flight is never timed out here: long polls of desired state
//! are bounded by their own wait. hyper's own `header_read_timeout` also
//! runs while a keep-alive connection waits for its next request, so it
//! would close idle connections at the header timeout; the two are kept
//! apart by watching the connection's bytes (`Tracked`) and its requests in
//! flight, and dropping the connection when either deadline passes.
//!
//! Each request carries `ConnectInfo<SocketAddr>` (the audit log's source).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest a request's head may take to arrive once it has begun.
    pub header_read: Duration,
    /// Longest a connection may sit with nothing in flight.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { header_read: Duration::from_secs(10), idle: Duration::from_secs(60) }
    }
}

/// What one connection has been doing, in milliseconds since it opened.
struct Activity {
    opened: Instant,
    last_io_ms: AtomicU64,
    /// When the head of a request not yet handed to the router began to
    /// arrive (+1; 0: none pending).
    head_since_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }
    fn touch(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }
}

/// A stream that reports its reads and writes to `Activity`.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let a = &self.activity;
            a.touch();
            if a.in_flight.load(Ordering::Relaxed) == 0 {
                let _ = a.head_since_ms.compare_exchange(0, a.now_ms() + 1, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Counts a request in flight while alive.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Whether the connection is past a deadline: why, if so.
fn expired(a: &Activity, t: &Timeouts) -> Option<&'static str> {
    if a.in_flight.load(Ordering::Relaxed) > 0 {
        return None;
    }
    let now = a.now_ms();
    let head = a.head_since_ms.load(Ordering::Relaxed);
    if head > 0 && now.saturating_sub(head - 1) > t.header_read.as_millis() as u64 {
        return Some("request head not received in time");
    }
    if head == 0 && now.saturating_sub(a.last_io_ms.load(Ordering::Relaxed)) > t.idle.as_millis() as u64 {
        return Some("idle");
    }
    None
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn serve(listener: TcpListener, app: Router, timeouts: Timeouts, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // Every connection task holds a clone; all gone = all finished.
    let (done_tx, done_rx) = watch::channel(());
    let mut stop = stop_rx.clone();
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, remote, app.clone(), timeouts, stop_rx.clone(), done_rx.clone()));
    }
    drop(listener);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

/// Resolves once shutdown was asked for (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn connection(stream: TcpStream, remote: SocketAddr, app: Router, t: Timeouts, mut stop: watch::Receiver<bool>, _done: watch::Receiver<()>) {
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        last_io_ms: AtomicU64::new(0),
        head_since_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
    let a = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.head_since_ms.store(0, Ordering::Relaxed);
        let guard = InFlight(a.clone());
        req.extensions_mut().insert(ConnectInfo(remote));
        let app = app.clone();
        async move {
            let resp = app.oneshot(req.map(axum::body::Body::new)).await;
            drop(guard);
            resp
        }
    });
    let builder = Builder::new(TokioExecutor::new());
    let mut conn = pin!(builder.serve_connection_with_upgrades(io, service));
    let tick = (t.header_read.min(t.idle) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut timer = tokio::time::interval(tick);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = timer.tick() => {
                if let Some(why) = expired(&activity, &t) {
                    tracing::debug!(%remote, why, "closing connection");
                    return;
                }
            }
            _ = stopped(&mut stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
