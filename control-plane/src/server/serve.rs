//! The listener: TLS, connection limits, certificate reloads, the sweeper, shutdown.

use super::*;

/// The TLS configuration: the server certificate and key from the state directory, ring as
/// the only crypto provider, HTTP/1.1.
pub fn tls_config(paths: &Paths) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cp, kp) = (paths.server_pem(), paths.server_key());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cp)
        .and_then(|i| i.collect())
        .map_err(|e| {
            Error(format!(
                "cannot read the server certificate {}: {e} (run `chaos-control init` first)",
                cp.display()
            ))
        })?;
    let key = PrivateKeyDer::from_pem_file(&kp)
        .map_err(|e| Error(format!("cannot read the server key {}: {e}", kp.display())))?;
    check_private(&kp);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error(format!(
                "TLS: the server certificate and key do not fit: {e}"
            ))
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

pub(super) fn check_private(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(p) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %p.display(), "private key is readable by others; chmod 600 it");
        }
    }
}

/// Raise the soft open-files limit to the hard limit (each agent holds a connection).
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

/// A server ready to run.
#[derive(Debug)]
pub struct Server {
    app: Arc<App>,
    tls: Arc<rustls::ServerConfig>,
    paths: Paths,
    database: Database,
}

impl Server {
    /// Open the store and TLS files of a state directory.
    pub fn open(paths: &Paths, settings: Settings) -> Result<Server> {
        // One process-wide provider; ring is the only one compiled in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let database = settings
            .database
            .clone()
            .unwrap_or_else(|| Database::Sqlite(paths.db()));
        if let Database::Sqlite(db) = &database {
            if !db.exists() {
                return Err(Error(format!(
                    "{} holds no store: run `chaos-control init --state-dir {}` first",
                    paths.dir.display(),
                    paths.dir.display()
                )));
            }
        }
        let tls = Arc::new(tls_config(paths)?);
        let store = Store::open(&database)
            .map_err(|e| Error(format!("cannot open the store in {database}: {e}")))?;
        let app = Arc::new(App::new(store, settings)?);
        Ok(Server {
            app,
            tls,
            paths: paths.clone(),
            database,
        })
    }

    /// Serve on `listener` until `stop` completes; then stop taking connections, release
    /// long polls, give in-flight requests the grace period, and flush to the store.
    pub async fn run(
        self,
        listener: std::net::TcpListener,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        listener
            .set_nonblocking(true)
            .map_err(|e| Error(format!("listener: {e}")))?;
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(|e| Error(format!("listener: {e}")))?;
        let handle: axum_server::Handle<SocketAddr> = axum_server::Handle::new();
        let rustls = axum_server::tls_rustls::RustlsConfig::from_config(self.tls.clone());
        let settings = &self.app.settings;
        let limits = crate::limits::Limits::new(
            settings
                .max_connections
                .unwrap_or_else(|| crate::limits::default_max_connections(raise_nofile())),
            settings.max_connections_per_peer,
        );
        // Connections are counted (and refused over a limit) before their TLS handshake.
        // SIGHUP: read the server certificate and key again (after `cert reissue` or a CA
        // rotation step); connections already open keep theirs.
        // Registered here, before the first connection is accepted, so a SIGHUP sent once
        // the server answers never meets the default action (terminate).
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| Error(format!("cannot handle SIGHUP: {e}")))?;
        let reloader = {
            let rustls = rustls.clone();
            let paths = self.paths.clone();
            let mut hup = hup;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match tls_config(&paths) {
                        Ok(cfg) => {
                            rustls.reload_from_config(Arc::new(cfg));
                            tracing::info!("SIGHUP: server certificate reloaded");
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: the server certificate was not reloaded; the old one stays in use")
                        }
                    }
                }
            })
        };
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
            .handshake_timeout(settings.header_timeout)
            .acceptor(crate::limits::LimitAcceptor(limits.clone()));
        let mut server = axum_server::from_tcp(listener)
            .map_err(|e| Error(format!("listener: {e}")))?
            .acceptor(acceptor)
            .handle(handle.clone())
            // HTTP/1.1 only (as ALPN says): no un-timed protocol detection.
            .http1_only()
            .first_request_timeout(settings.header_timeout);
        server
            .http_builder()
            .http1()
            .header_read_timeout(settings.header_timeout);
        tracing::info!(
            max_connections = limits.max_total(),
            max_connections_per_peer = settings.max_connections_per_peer,
            header_timeout_s = settings.header_timeout.as_secs(),
            body_timeout_s = settings.body_timeout.as_secs(),
            "connection limits"
        );
        *self.app.limits.lock().unwrap_or_else(|p| p.into_inner()) = Some(limits);
        let app = self.app.clone();
        let sweeper = {
            let app = app.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(2));
                let mut n: u64 = 0;
                loop {
                    tick.tick().await;
                    app.sweep();
                    n += 1;
                    if n % 1800 == 1 {
                        app.prune();
                    }
                }
            })
        };
        // With PostgreSQL, other replicas' runs, aborts and log lines wake what this one holds.
        let listener_thread = match &self.database {
            Database::Postgres(target) => {
                let (app, target) = (app.clone(), target.clone());
                let own = app
                    .with_store(|s| Ok(s.backend_pid()))
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let (ready, listening) = tokio::sync::oneshot::channel::<()>();
                let ready = Mutex::new(Some(ready));
                let t = std::thread::Builder::new()
                    .name("pg-listen".into())
                    .spawn(move || {
                        crate::store::pg::listen(&target, &app.shutdown.flag, &own, &|h| {
                            if h == crate::store::pg::Heard::Listening {
                                if let Some(r) = ready.lock().ok().and_then(|mut r| r.take()) {
                                    let _ = r.send(());
                                }
                            }
                            app.heard(h)
                        })
                    })
                    .map_err(|e| Error(format!("cannot start the PostgreSQL listener: {e}")))?;
                // Agents are served once other replicas' changes are heard: a run created
                // elsewhere meanwhile would otherwise wait for the end of a poll's wait.
                match tokio::time::timeout(Duration::from_secs(10), listening).await {
                    Ok(Ok(())) => {
                        tracing::info!(database = %self.database, "store on PostgreSQL; listening for other replicas' changes")
                    }
                    _ => {
                        tracing::warn!(database = %self.database, "not yet listening for other replicas' changes after 10 s; serving anyway (their runs reach agents at the end of a poll's wait until it is)")
                    }
                }
                Some(t)
            }
            Database::Sqlite(_) => None,
        };
        let svc = router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let grace = app.settings.shutdown_grace;
        let h2 = handle.clone();
        let app2 = app.clone();
        let stopper = async move {
            stop.await;
            tracing::info!("shutting down: releasing long polls, finishing requests");
            app2.shutdown.trigger();
            h2.graceful_shutdown(Some(grace));
        };
        tracing::info!(%addr, "listening (HTTPS)");
        let serve = server.serve(svc);
        tokio::pin!(serve);
        tokio::pin!(stopper);
        let mut stopped = false;
        let r = loop {
            tokio::select! {
                r = &mut serve => break r,
                _ = &mut stopper, if !stopped => { stopped = true; }
            }
        };
        sweeper.abort();
        reloader.abort();
        app.sweep();
        // The shutdown flag is set: the listener sees it within a second.
        app.shutdown.trigger();
        if let Some(t) = listener_thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        r.map_err(|e| Error(format!("server: {e}")))?;
        tracing::info!("stopped");
        Ok(())
    }

    /// The shared state (for tests).
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }
}

impl App {
    /// The Prometheus exposition text (see [`crate::metrics`]).
    pub fn metrics_text(&self) -> Result<String> {
        let (agents, runs) = self.with_store(|s| s.counts_by_state())?;
        let lost = self.lost.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        let (connections, refused) = self.connections();
        Ok(self.metrics.render(&crate::metrics::Snapshot {
            agents,
            lost,
            runs,
            connections: connections as u64,
            refused,
        }))
    }

    /// Connections held now and refused since start (zero before the server runs).
    pub fn connections(&self) -> (usize, u64) {
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or((0, 0), |l| (l.held(), l.refused()))
    }

    /// Counts of (agents, runs, log lines) in the store.
    pub fn counts(&self) -> Result<(u64, u64, u64)> {
        Ok(self.with_store(|s| s.counts())?)
    }
}
