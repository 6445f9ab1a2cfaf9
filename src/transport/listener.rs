//! Where a listener's connections come from: accepted plain (TCP_NODELAY
//! set) or handshaken TLS, each holding a slot of the listener's
//! `max_connections` until it closes. Shared by the gRPC and HTTP listeners.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// The connections accepted on `listener`, with TCP_NODELAY (without it
/// small responses wait for delayed ACKs, ~40 ms).
pub(crate) fn plain(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<TcpStream>> + Unpin + Send + 'static {
    TcpListenerStream::new(listener).map(|tcp| {
        tcp.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    })
}

/// The connections of `listener` once their TLS handshake is done (see
/// [`crate::tls::incoming`]).
pub(crate) fn tls(
    listener: TcpListener,
    reloading: crate::tls::Reloading,
    stop: CancellationToken,
) -> impl Stream<Item = std::io::Result<crate::tls::TlsConnection>> + Unpin + Send + 'static {
    ReceiverStream::new(crate::tls::incoming(listener, reloading, stop))
        .map(|(connection, _)| Ok(connection))
}

/// How long a gRPC client may stay silent after connecting (after its TLS
/// handshake, with TLS) before its connection is closed: HTTP/2 keepalive
/// pings start only once the connection's preface has come, so a client
/// that connects and sends nothing would otherwise hold its slot for good.
pub(crate) const FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);

/// The connections from `next`, each holding one of `slots` until it
/// closes: past `max_connections` the next connection is not accepted (it
/// waits in the kernel's backlog) until one closes. With `first_bytes`, a
/// connection that sends nothing within it is closed.
pub(crate) fn slotted<C, S>(
    mut connections: S,
    slots: Arc<Semaphore>,
    first_bytes: Option<Duration>,
    stop: CancellationToken,
) -> ReceiverStream<std::io::Result<Slotted<C>>>
where
    C: Send + 'static,
    S: Stream<Item = std::io::Result<C>> + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
                _ = stop.cancelled() => return,
            };
            let connection = tokio::select! {
                connection = connections.next() => connection,
                _ = stop.cancelled() => return,
            };
            match connection {
                Some(Ok(connection)) => {
                    let slotted = Slotted {
                        inner: connection,
                        _slot: slot,
                        silent_until: first_bytes.map(|d| Box::pin(tokio::time::sleep(d))),
                    };
                    if tx.send(Ok(slotted)).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A connection holding a slot of the listener's connection limit.
pub(crate) struct Slotted<C> {
    inner: C,
    _slot: OwnedSemaphorePermit,
    /// Until its first bytes come: then the connection is closed if they
    /// have not.
    silent_until: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<C: Connected> Connected for Slotted<C> {
    type ConnectInfo = C::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Slotted<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(deadline) = self.silent_until.as_mut() {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.silent_until = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    tracing::debug!("a client connected and sent nothing; closing");
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "nothing received since the connection opened",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Slotted<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
