//! The accept loop of the control API: HTTP/1 connections served by hyper with a
//! header-read timeout (which also closes keep-alive connections idle that long), at
//! most `max_connections` open at once (a connection over the cap gets an immediate
//! 503 and is closed, so idle clients cannot exhaust the process's file descriptors),
//! and a graceful stop that lets requests in flight finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

/// The limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// A request's header (or the first byte of the next request on a kept-alive
    /// connection) must arrive within this time.
    pub header_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

/// Accept and serve until `stop` fires (or its sender is dropped), then wait for the
/// connections to finish their requests (they are told to close after them).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    mut stop: oneshot::Receiver<()>,
) {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let (closing_tx, closing_rx) = watch::channel(false);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(connection(
                            stream,
                            app.clone(),
                            limits.header_timeout,
                            closing_rx.clone(),
                            permit,
                        ));
                    }
                    Err(_) => {
                        tokio::spawn(refuse(stream, max));
                    }
                },
                // Out of file descriptors (or another transient failure): the
                // connections already open still need to be served; try again soon.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

async fn connection(
    stream: TcpStream,
    app: Router,
    header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut told = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            changed = closing.changed(), if !told => {
                told = true;
                if changed.is_err() || *closing.borrow() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    drop(permit);
}

/// Over the cap: say so without reading the request, and close. The answer is small
/// enough for the socket's buffer, so one write (within a second) sends it.
async fn refuse(stream: TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":{{\"status\":503,\"kind\":\"busy\",\"category\":\"environment\",\"message\":\"the API already has {max} open connections (max_connections); retry later\"}}}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            stream.writable().await?;
            match stream.try_write(answer.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
}
