//! `meterstream-server`: parse configuration, set up logging, open the store, serve.

use anyhow::Context;
use clap::Parser;
use meterstream_server::config::{Args, Config};
use meterstream_storage::Engine;
use std::io::IsTerminal;
use std::sync::Arc;

/// mimalloc instead of glibc malloc: the store allocates on request threads and frees on its apply
/// thread, which left about 80 MB of fragmented arenas with glibc after the standard ingest.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::load(&Args::parse())?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log)),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let store = Engine::open(cfg.store_config())
        .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("binding {}", cfg.listen))?;
    tracing::info!(listen = %listener.local_addr()?, data_dir = %cfg.data_dir.display(), "meterstream-server ready");
    meterstream_server::run(listener, Arc::new(store), cfg, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
