//! `meterstream-server`: parse configuration, set up logging, open the store, serve.

use anyhow::Context;
use clap::Parser;
use meterstream_server::config::{Args, Config};
use meterstream_storage::Engine;
use std::io::IsTerminal;
use std::sync::Arc;

/// glibc's malloc keeps memory freed by another thread than the one that allocated it (the store
/// allocates on request threads and frees on its apply thread) in its arenas, and large query
/// answers leave freed pages behind. Once a second this hands free pages back to the OS.
/// Measured on the standard workload (benches/RESULTS.md): resident memory after ingest 283 MB
/// with mimalloc, 183 MB with glibc, and after the queries 326 / 322 MB without trimming.
///
/// The mmap threshold is also fixed, at 2 MiB: glibc raises it dynamically to the size of the
/// largest mmapped block freed, and one argon2 hash (19 MiB, at the first use of a credential)
/// took it so high that multi-megabyte ingest buffers stayed resident in the arenas: +30 to 45 MB
/// after the standard ingest. Measured (benches/RESULTS.md): 128 KiB costs ingest speed
/// (3.23–3.37 M points/s, 141 MB), 2 MiB keeps both (3.47–3.58 M, 146–148 MB).
/// The one `unsafe` of the workspace (whose lints deny it elsewhere): calls into libc.
#[allow(unsafe_code)]
fn return_free_memory_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator setting; it is called before other threads
    // allocate much, and glibc locks its state itself.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            // SAFETY: malloc_trim only releases free memory; glibc locks its arenas itself.
            unsafe {
                libc::malloc_trim(0);
            }
        })
        .map(drop)
        .unwrap_or_else(|e| tracing::warn!("cannot start the malloc-trim thread: {e}"));
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = Config::load(&args)?;
    if let Some(meterstream_server::config::Command::Credentials(c)) = args.command {
        return credentials(&cfg, c);
    }
    return_free_memory_periodically();
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
    let registry = meterstream_storage::registry::SledRegistry::open(&cfg.registry_dir())
        .with_context(|| {
            format!(
                "opening the device registry in {}",
                cfg.registry_dir().display()
            )
        })?;
    meterstream_server::run(
        listener,
        Arc::new(store),
        Arc::new(registry),
        cfg,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// `meterstream-server credentials ...`: on the registry in the data directory.
fn credentials(
    cfg: &Config,
    c: meterstream_server::config::CredentialCommand,
) -> anyhow::Result<()> {
    use meterstream_server::auth::{credential_json, Auth, NewCredential};
    use meterstream_server::config::CredentialCommand;
    let registry = meterstream_storage::registry::SledRegistry::open(&cfg.registry_dir())
        .with_context(|| {
            format!(
                "opening the registry in {} (is the server running? then use /ws/v1/credentials)",
                cfg.registry_dir().display()
            )
        })?;
    let auth = Auth::without_bootstrap(Arc::new(registry));
    let now = meterstream_storage::time::now_ms();
    match c {
        CredentialCommand::Create {
            kind,
            name,
            password,
            scopes,
            prefixes,
            groups,
            device_id,
            label,
        } => {
            let (cred, secret) = auth
                .create(
                    NewCredential {
                        kind,
                        name,
                        password,
                        scopes,
                        prefixes,
                        groups,
                        device_id,
                        label,
                    },
                    now,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut v = credential_json(&cred);
            v[if cred.kind == "user" {
                "password"
            } else {
                "key"
            }] = secret.into();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        CredentialCommand::List => {
            for cred in auth.list()? {
                println!("{}", credential_json(&cred));
            }
        }
        CredentialCommand::Revoke { id } => {
            if !auth.revoke(&id, now)? {
                anyhow::bail!("no credential {id:?}");
            }
            println!("revoked {id}");
        }
    }
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
