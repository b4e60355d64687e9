//! `lanyard server`

use std::process::ExitCode;

use lanyard_server::{Overrides, ServerConfig};

pub fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},h2=warn,hyper=warn,tower=warn,sqlx=warn"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub async fn run(o: Overrides) -> Result<ExitCode, String> {
    let config = ServerConfig::load(&o).map_err(|e| e.to_string())?;
    init_tracing(&config.log_level);
    let td = config.trust_domain.clone();
    let running = lanyard_server::start(config, lanyard_server::state::system_clock())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(trust_domain = %td, agent_api = %running.agent_addr, http = %running.http_addr,
        admin_socket = %running.admin_socket.display(), "lanyard server ready");
    // One machine-readable line on stdout, for scripts and tests.
    let mtls = running
        .admin_addr
        .map(|a| format!(" admin_mtls={a}"))
        .unwrap_or_default();
    let ext = running
        .ext_authz_addr
        .map(|a| format!(" ext_authz={a}"))
        .unwrap_or_default();
    println!(
        "lanyard server ready trust_domain={td} agent_api={} http={} admin_socket={}{mtls}{ext}",
        running.agent_addr,
        running.http_addr,
        running.admin_socket.display()
    );
    let stop = running.shutdown_handle();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let admin_socket = running.admin_socket.clone();
    let result = running.wait().await;
    let _ = std::fs::remove_file(admin_socket);
    result.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// Wait for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
