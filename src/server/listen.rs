//! The accept loop: HTTP/1.1 connections (over TLS when configured) up to a cap, a deadline
//! for each TLS handshake and request head, and a graceful stop that lets requests in flight
//! finish.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

/// Time a connection gets to deliver a whole request head, counted from when it is accepted or
/// its previous answer went out: a head is a few hundred bytes, so only a stalled or hostile
/// client needs longer. Idle kept-alive connections close after it too (the client keeps
/// them for less). A TLS handshake gets as long, so a client that never finishes one frees
/// its connection slot.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on connections served at once: far more than the devices of one server use
/// (each holds a few), well under a process's usual 1024 file descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Longest a closing connection keeps reading (and discarding) what its client still sends,
/// e.g. a body refused unread: long enough for the client to read the answer first.
const LINGER: Duration = Duration::from_secs(2);
/// Pause after an accept error that is not about one connection (e.g. out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` (over TLS with `tls`), at most `max_connections` at once (more
/// wait in the listen backlog), until `shutdown` completes; then stops accepting, closes idle
/// connections and waits for those with a request in flight.
pub(super) async fn run(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let mut at_cap = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !at_cap {
                    tracing::warn!(
                        max_connections,
                        "connection cap reached: new connections wait until one closes"
                    );
                    at_cap = true;
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // Never closed; stop serving rather than spin if it were.
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    if !is_connection_error(&e) {
                        tracing::error!(error = %e, "accepting a connection failed");
                        tokio::select! {
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if at_cap && slots.available_permits() > 0 {
            tracing::info!("below the connection cap again");
            at_cap = false;
        }
        let service = TowerToHyperService::new(app.clone());
        let stream = Lingering::new(stream);
        let watcher = graceful.watcher();
        let (http, tls) = (http.clone(), tls.clone());
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let conn = http.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        Ok(())
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::debug!(open = graceful.count(), "waiting for connections to finish");
    graceful.shutdown().await;
    Ok(())
}

/// Errors about one connection (it went away before it was accepted): just go on.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection that, when closed, sends its end-of-stream and then reads and discards what
/// the client still sends, for up to [`LINGER`] or until the client closes too. Closing with
/// unread bytes would send a reset, and a reset can destroy an answer the client has not read
/// yet (a 413 sent before the body it refuses, a 408).
struct Lingering {
    stream: TcpStream,
    /// Set once the end-of-stream went out: when to stop lingering.
    until: Option<Pin<Box<Sleep>>>,
}

impl Lingering {
    fn new(stream: TcpStream) -> Self {
        Lingering {
            stream,
            until: None,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let until = match &mut this.until {
            Some(until) => until,
            None => {
                ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
                this.until.insert(Box::pin(tokio::time::sleep(LINGER)))
            }
        };
        let mut scratch = [0u8; 8 << 10];
        loop {
            if until.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                // More of what the client was sending: drop it and read on.
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                // The client closed too (or the connection broke): done.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
