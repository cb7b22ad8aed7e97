//! `meterstream-agent`: parse configuration, set up logging, run the agent until Ctrl-C or
//! SIGTERM. With `--simulate`, the configured meters (or N simulated ones) are served by
//! simulators on pseudo-terminals and read through them by the same code that reads real ones.

use anyhow::Context;
use clap::Parser;
use meterstream_agent::config::{Args, Config, MeterConfig, PortConfig};

fn simulated_ports(n: usize) -> Vec<PortConfig> {
    let meters = (1..=n.max(1))
        .map(|i| MeterConfig {
            name: format!("meter{i:02}"),
            profile: if i % 2 == 1 { "sdm630" } else { "pst04" }.into(),
            slave: i as u8,
            latitude: Some((42_650 + i) as f64 / 1000.0),
            longitude: Some((23_350 + i) as f64 / 1000.0),
        })
        .collect();
    vec![PortConfig::new("/dev/null".into(), meters)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg = match args.simulate {
        Some(n) if args.config.is_none() => {
            // Defaults for a simulated gateway; flags and environment still apply.
            let mut c = Config::minimal(
                "00000000-00000000-00409DFF-FF418079",
                "http://127.0.0.1:8080",
            );
            c.ports = simulated_ports(if n == 0 { 10 } else { n.min(247) });
            if let Some(v) = &args.device_id {
                c.device_id = v.clone();
            }
            if let Some(v) = &args.server_url {
                c.server.url = v.clone();
            }
            if let Some(v) = &args.spool_dir {
                c.spool.dir = v.clone();
            }
            if let Some(v) = &args.api_key {
                c.server.api_key = Some(v.clone());
            }
            if let Some(v) = args.sample_interval {
                c.sample_interval = v;
            }
            c.validate()?;
            c
        }
        _ => Config::load(&args)?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(args.log.as_deref().unwrap_or(&cfg.log))
            }),
        )
        .init();
    let every = cfg.sample_every();
    let _sims = match args.simulate {
        Some(_) => Some(
            meterstream_agent::sim::attach(&mut cfg, Some(every))
                .context("starting the simulated meters")?,
        ),
        None => None,
    };
    meterstream_agent::agent::run(cfg, shutdown_signal(), None).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
