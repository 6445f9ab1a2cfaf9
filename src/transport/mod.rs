//! HTTP and gRPC plumbing the receivers and exporters share: serving HTTP
//! with limits against slow and numerous clients (over TLS or not), the
//! bearer-token check, the listener's connection slots, and a gRPC codec of
//! bytes. Below both; imports neither.

pub mod codec;
pub(crate) mod listener;

/// Limits of an HTTP listener against slow and numerous clients.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A client must send its request headers within this long, or the
    /// connection is closed (a slow client cannot hold one forever).
    pub header_read_timeout: std::time::Duration,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_read_timeout: std::time::Duration::from_secs(10),
            max_connections: 1_024,
        }
    }
}

/// Serves `app` over HTTP/1 on `listener`, over TLS if `tls` is set, until
/// `stop` is cancelled, then lets the connections in flight finish. Each
/// connection gets TCP_NODELAY (without it small responses wait for
/// delayed ACKs, ~40 ms) and the `limits`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<&crate::tls::ServerTls>,
    limits: HttpLimits,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    match tls {
        Some(tls) => {
            let reloading =
                crate::tls::Reloading::start(tls, crate::tls::ALPN_HTTP1, stop.clone())?;
            let connections = listener::tls(listener, reloading, stop.clone());
            let incoming = listener::slotted(connections, slots, None, stop.clone());
            serve_connections(incoming, &builder, &graceful, app, &stop).await;
        }
        None => {
            let incoming = listener::slotted(listener::plain(listener), slots, None, stop.clone());
            serve_connections(incoming, &builder, &graceful, app, &stop).await;
        }
    }
    graceful.shutdown().await;
    Ok(())
}

/// Serves each connection of `incoming`, on a task of its own, until `stop`.
async fn serve_connections<C>(
    mut incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<listener::Slotted<C>>>,
    builder: &hyper::server::conn::http1::Builder,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    app: axum::Router,
    stop: &tokio_util::sync::CancellationToken,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_stream::StreamExt;
    loop {
        let connection = tokio::select! {
            connection = incoming.next() => connection,
            _ = stop.cancelled() => return,
        };
        match connection {
            Some(Ok(connection)) => serve_connection(builder, graceful, connection, app.clone()),
            // `slotted` passes no errors on; it ends when the listener does.
            Some(Err(_)) => {}
            None => return,
        }
    }
}

/// Serves one connection on a task of its own (its slot is freed when the
/// connection, which holds it, is dropped at the end).
fn serve_connection<I>(
    builder: &hyper::server::conn::http1::Builder,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    stream: I,
    app: axum::Router,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection =
        graceful.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            // A client that went away or was too slow: its business.
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    });
}

/// Whether `headers` carry `token` (`authorization: Bearer <token>`),
/// compared in constant time; true when no token is configured.
pub fn authorized(
    token: Option<&crate::settings::Secret>,
    headers: &axum::http::HeaderMap,
) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    match value.split_at_checked(7) {
        Some((scheme, bearer)) if scheme.eq_ignore_ascii_case(b"bearer ") => {
            token.matches(bearer.trim_ascii())
        }
        _ => false,
    }
}
