//! `deltadrive serve`: the embedded server on a data directory.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::server::{self, AnswerPool, AppState, Notifier};

/// Batched-download answer buffers (up to ~33 MiB each) kept for the next requests.
const FETCH_BUFFERS_KEPT: usize = 4;

/// Arguments of `deltadrive serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Data directory: meta.sqlite and chunks/ (created if missing).
    #[arg(long, default_value = "deltadrive-data")]
    pub data: PathBuf,
    /// Address to listen on; port 0 lets the OS choose (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub listen: SocketAddr,
    /// Also write the bound address to this file (written whole, then renamed into place).
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// Most connections served at once; more wait to be accepted. Each holds a file
    /// descriptor: keep it under the process's limit (`ulimit -n`).
    #[arg(long, default_value_t = server::DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Memory for request bodies being received or handled at once, in MiB; more wait.
    #[arg(long, default_value_t = (server::DEFAULT_BODY_MEMORY >> 20) as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub body_memory_mib: u32,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Runs the server until SIGINT or SIGTERM, then shuts down gracefully.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before anything else, so a bad certificate is the only thing said.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls::acceptor(cert, key)?),
        _ => {
            if !args.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %args.listen,
                    "serving plain HTTP off loopback: device tokens and files travel in the \
                     clear unless a TLS proxy is in front (or use --tls-cert and --tls-key)"
                );
            }
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    make_private(&args.data);
    let (meta, chunks) = server::open_embedded(&args.data)
        .with_context(|| format!("opening the data directory {}", args.data.display()))?;
    let result = runtime.block_on(serve(&args, tls, meta.clone(), chunks.clone()));
    // Stores flush and stop their writer threads when the last handle goes.
    drop(runtime);
    drop((meta, chunks));
    tracing::info!("stopped");
    result
}

/// Makes a data directory an older build left readable by other users private (logged).
/// Not fatal: opening the stores reports a directory we cannot read.
pub(super) fn make_private(data: &std::path::Path) {
    if let Err(e) = crate::private::tighten(data) {
        tracing::warn!(data = %data.display(), error = %e, "cannot make the data directory private");
    }
}

async fn serve(
    args: &ServeArgs,
    tls: Option<tokio_rustls::TlsAcceptor>,
    meta: Arc<server::SqliteMeta>,
    chunks: Arc<server::PackDirStore>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    announce(addr, args.addr_file.as_ref())?;
    tracing::info!(%addr, data = %args.data.display(), https = tls.is_some(), "serving");
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState {
        meta,
        chunks,
        notifier: Arc::new(Notifier::default()),
        hints: Arc::default(),
        answers: AnswerPool::new(FETCH_BUFFERS_KEPT),
        shutdown: stop_rx.clone(),
    };
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        // Nobody listening any more is fine: the server is already stopping.
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx;
    let limits = server::ServeLimits {
        max_connections: args.max_connections as usize,
        body_memory: (args.body_memory_mib as usize) << 20,
    };
    server::serve(listener, state, limits, tls, async move {
        // An error means the sender is gone, which also means stop.
        let _ = stop.wait_for(|s| *s).await;
    })
    .await
    .context("serving HTTP")
}

/// Prints `listening on ADDR` on stdout (one line, flushed) and writes the address file.
fn announce(addr: SocketAddr, addr_file: Option<&PathBuf>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}").context("writing to stdout")?;
    out.flush().context("flushing stdout")?;
    if let Some(path) = addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{addr}\n"))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
