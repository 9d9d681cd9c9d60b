//! The node as a long-running process (`xencode node`): identity, store,
//! API and network started in order, `/health` served while the store
//! loads, `api-url` written when ready, an orderly shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, ApiState, NodeFacts};
use crate::config::Config;
use crate::identity::{self, IdentityError};
use crate::metrics::Metrics;
use crate::net::{Net, NetError, NetInfo, NetOptions};
use crate::paths::DataDir;
use crate::store::{AuthorKey, NetCommand, OpenError, Store, StoreOptions};

pub mod reload;

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(
        "cannot listen on {addr}: the port is in use. Pick another with `--api 127.0.0.1:PORT` (port 0 picks a free one)"
    )]
    ApiPortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    ApiBind { addr: SocketAddr, source: io::Error },
    #[error("cannot write {path}: {source}")]
    WriteApiUrl { path: String, source: io::Error },
    #[error("the metrics registry could not be built: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("the API server failed: {0}")]
    Serve(io::Error),
    #[error("the store failed to load: {0}")]
    Join(String),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// What a started node reports once it is ready.
#[derive(Debug, Clone)]
pub struct Ready {
    pub peer_id: String,
    pub api_url: String,
    pub listen: Vec<String>,
}

/// Runs a node until `shutdown` completes. `on_ready` is called once the
/// store is loaded and `<data-dir>/api-url` is written. On SIGHUP the
/// configuration is read again with `reload` (the file, the environment and
/// the command line's flags, as at start) and what can change live is
/// applied ([`reload`]).
pub async fn run(
    dir: DataDir,
    config: Config,
    on_ready: impl FnOnce(&Ready),
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: impl Fn() -> Result<Config, String> + Send + 'static,
) -> Result<(), NodeError> {
    let init = identity::init(&dir)?;
    if init.created {
        tracing::info!(data_dir = %dir.root().display(), "created a new identity");
    }
    let identity = init.identity;
    let token = identity::load_api_token(&dir)?;
    let metrics = Arc::new(Metrics::new()?);

    let addr = config.api.listen;
    let listener = TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            NodeError::ApiPortInUse { addr }
        } else {
            NodeError::ApiBind { addr, source }
        }
    })?;
    let bound = listener
        .local_addr()
        .map_err(|source| NodeError::ApiBind { addr, source })?;
    let api_url = format!("http://{bound}");
    let peer_id = identity.peer_id().to_string();
    let state = ApiState::new(
        token,
        metrics.clone(),
        NodeFacts {
            peer_id: peer_id.clone(),
            data_dir: dir.root().display().to_string(),
            listen: config.network.listen.clone(),
            mdns: config.network.mdns,
            api_url: api_url.clone(),
            port: bound.port(),
        },
        usize::try_from(config.api.max_body_bytes).unwrap_or(usize::MAX),
    );
    state.attach_analysis(reload::analysis_setup(&config));

    // Serve at once so `/health` answers 503 while the store loads.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let mut stop_rx = stop_rx;
        let app = api::router(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                })
                .await
        })
    };

    let store_path = dir.store();
    let author = AuthorKey {
        peer_id: peer_id.clone(),
        public_key: identity.public_key(),
        secret: identity.secret_bytes(),
    };
    let options = StoreOptions {
        compact_after_changes: config.store.compact_after_changes,
        max_text_bytes: usize::try_from(config.store.max_text_bytes).unwrap_or(usize::MAX),
        display_name: config.node.name.clone(),
        ..StoreOptions::default()
    };
    let opened = tokio::task::spawn_blocking({
        let metrics = metrics.clone();
        move || Store::open(&store_path, author, options, metrics)
    })
    .await
    .map_err(|e| NodeError::Join(e.to_string()));
    let (store, store_thread) = match opened {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Err(e.into());
        }
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Err(e);
        }
    };
    state.attach_store(store.clone());

    let net_info = Arc::new(NetInfo::default());
    let (net_tx, net_rx) = tokio::sync::mpsc::channel(8192);
    let _ = store.attach_net(net_tx.clone()).await;
    let net_options = NetOptions {
        listen: config.network.listen.clone(),
        peers: config.network.peers.clone(),
        mdns: config.network.mdns,
        relay: config.network.relay,
        relays: config.network.relays.clone(),
        relay_limits: config.network.relay_limits.clone(),
        lookup: config.network.lookup,
    };
    let net = match Net::new(
        identity.secret_bytes(),
        &net_options,
        store.clone(),
        metrics.clone(),
        net_info.clone(),
    ) {
        Ok(n) => n,
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            drop(store);
            drop(state);
            let _ = tokio::task::spawn_blocking(move || store_thread.join()).await;
            return Err(e.into());
        }
    };
    let (net_stop_tx, net_stop_rx) = tokio::sync::watch::channel(false);
    let net_task = tokio::spawn(net.run(net_rx, net_stop_rx));
    state.attach_net(net_info.clone());
    // Give the transports a moment (up to a second) to report the
    // addresses they bound: woken as each is added, not polled.
    let bound = async {
        while !net_options.listen.is_empty() && net_info.listen.read().is_ok_and(|l| l.is_empty()) {
            net_info.bound.notified().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), bound).await;

    // Linked folders start syncing (each its first full comparison).
    let folders = match crate::folder::Folders::start(
        store.clone(),
        crate::folder::FolderOptions {
            max_text_bytes: config.store.max_text_bytes,
            max_file_bytes: config.api.max_body_bytes,
            data_dir: dir.root().to_path_buf(),
            ..crate::folder::FolderOptions::default()
        },
    )
    .await
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(error = %e, "linked folders could not start; `folder list` will be empty");
            None
        }
    };
    if let Some(f) = &folders {
        state.attach_folders(f.clone());
    }

    let mut compactor = tokio::spawn(compact_periodically(
        store.clone(),
        Duration::from_secs(config.store.compact_interval_secs),
    ));

    write_api_url(&dir, &api_url)?;
    state.mark_ready();
    let listening = net_info
        .listen
        .read()
        .map(|l| l.clone())
        .unwrap_or_default();
    on_ready(&Ready {
        peer_id,
        api_url: api_url.clone(),
        listen: listening,
    });
    tracing::info!(api = %api_url, "node ready");

    let mut server = server;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config reloads need a restart");
            None
        }
    };
    let mut running = config;
    let served = loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutting down");
                state.stop_streams();
                let _ = stop_tx.send(true);
                // A client that keeps its connection open does not hold the
                // node up for long.
                break match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!("connections still open after 5 s; closing them");
                        server.abort();
                        server.await
                    }
                };
            }
            r = &mut server => break r,
            Some(()) = async {
                match hangups.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Ok(new) = reload().map_err(|e| {
                    tracing::error!(error = %e, "config.toml was not reloaded: fix it and send SIGHUP again; the node runs on with its previous configuration");
                }) else {
                    continue;
                };
                running = apply_reload(&running, &new, &state, &net_tx, &store, &mut compactor);
            }
        }
    };
    drop(store);
    compactor.abort();
    let _ = compactor.await;
    if let Some(f) = folders {
        f.stop().await;
    }
    let _ = net_stop_tx.send(true);
    if let Err(e) = net_task.await {
        tracing::error!(error = %e, "the network task failed");
    }
    remove_api_url(&dir, &api_url);
    drop(state);
    // Every store handle is gone once the server and the compactor are: the
    // actor commits what is left and closes the file.
    if let Err(e) = tokio::task::spawn_blocking(move || store_thread.join()).await {
        tracing::error!(error = %e, "waiting for the store to close failed");
    }
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(NodeError::Serve(e)),
        Err(e) => Err(NodeError::Join(e.to_string())),
    }
}

/// Applies what changed live, logs what needs a restart; returns the
/// configuration the node now runs with.
fn apply_reload(
    running: &Config,
    new: &Config,
    state: &ApiState,
    net: &tokio::sync::mpsc::Sender<NetCommand>,
    store: &Store,
    compactor: &mut tokio::task::JoinHandle<()>,
) -> Config {
    let changed = reload::changes(running, new);
    let live: Vec<&str> = changed
        .iter()
        .filter(|(_, t)| *t == reload::Takes::Live)
        .map(|(k, _)| *k)
        .collect();
    let restart: Vec<&str> = changed
        .iter()
        .filter(|(_, t)| *t == reload::Takes::Restart)
        .map(|(k, _)| *k)
        .collect();
    let mut merged = reload::merge(running, new);
    if live.iter().any(|k| k.starts_with("analysis.")) {
        state.attach_analysis(reload::analysis_setup(&merged));
    }
    if merged.network.peers != running.network.peers
        && net
            .try_send(NetCommand::SetBootstrap {
                addrs: merged.network.peers.clone(),
            })
            .is_err()
    {
        // Kept as they were, so the next reload tries again.
        tracing::warn!("the network is too busy to take the new peers now; send SIGHUP again");
        merged.network.peers.clone_from(&running.network.peers);
    }
    if merged.node.name != running.node.name {
        let (store, name) = (store.clone(), merged.node.name.clone());
        tokio::spawn(async move {
            if let Err(e) = store.set_display_name(name).await {
                tracing::warn!(error = %e, "the new display name was not recorded");
            }
        });
    }
    if merged.store.compact_interval_secs != running.store.compact_interval_secs {
        compactor.abort();
        *compactor = tokio::spawn(compact_periodically(
            store.clone(),
            Duration::from_secs(merged.store.compact_interval_secs),
        ));
    }
    if restart.is_empty() {
        tracing::info!(applied = ?live, "config.toml reloaded");
    } else {
        tracing::warn!(applied = ?live, needs_restart = ?restart, "config.toml reloaded; restart the node for the keys in needs_restart (it runs on with their previous values)");
    }
    merged
}

async fn compact_periodically(store: Store, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match store.compact().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(documents = n, "periodic compaction"),
            Err(e) => tracing::warn!(error = %e, "periodic compaction failed"),
        }
    }
}

/// Writes the bound URL atomically (temp file + rename).
fn write_api_url(dir: &DataDir, url: &str) -> Result<(), NodeError> {
    let path = dir.api_url();
    let tmp = path.with_extension("tmp");
    let err = |source| NodeError::WriteApiUrl {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, format!("{url}\n")).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// Removes `api-url` if it still names this node.
fn remove_api_url(dir: &DataDir, url: &str) {
    let path = dir.api_url();
    if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == url) {
        let _ = std::fs::remove_file(&path);
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
