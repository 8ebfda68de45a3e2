//! The application: shared state, the router and its layers, start-up and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, SessionManagerLayer};

use crate::auth::Accounts;
use crate::config::Config;

use crate::keys::Keys;
use crate::mail::transport::{Transport, mail_from};
use crate::web::AppError;
use crate::web::session_store::PgSessionStore;
pub use crate::web::state::{AppState, CookieNames};
use crate::{db, store, telemetry, web};

/// Builds the shared state: settings checked first, then the database (created and
/// migrated), the keys and the account rules.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    // Settings first: a wrong one refuses to start before anything is touched.
    let cookie_domain = config.cookie_domain()?;
    let destinations = Arc::new(config.destinations()?);
    let trusted_proxies = Arc::new(config.trusted_proxies()?);
    let passkeys = crate::passkeys::Passkeys::from_config(&config)?.map(Arc::new);
    let keys = Arc::new(Keys::load(config.secret_key.as_ref(), config.is_https())?);
    let pool = db::connect(&config).await?;
    db::prepare_schema(&config, &pool).await?;
    let accounts = Accounts::start(&config, pool.clone(), keys.clone())?;
    let oidc = crate::oidc::Provider::new(&config, accounts.clone());
    oidc.signer.ensure_keys().await?;
    Ok(AppState {
        oidc,
        cookie_names: CookieNames::for_config(&config, cookie_domain.is_some()),
        cookie_domain,
        destinations,
        trusted_proxies,
        passkeys,
        config: Arc::new(config),
        pool,
        keys,
        accounts,
        metrics: telemetry::metrics_handle(),
    })
}

const STYLE_CSS: &str = include_str!("../static/style.css");
const APP_JS: &str = include_str!("../static/app.js");

/// Static assets ship inside the binary, so it serves from any directory.
fn static_routes() -> Router<AppState> {
    let asset = |body: &'static str, content_type: &'static str| {
        move || async move {
            (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                    (
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("public, max-age=3600"),
                    ),
                ],
                body,
            )
        }
    };
    Router::new()
        .route(
            "/static/style.css",
            get(asset(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/static/app.js",
            get(asset(APP_JS, "text/javascript; charset=utf-8")),
        )
}

pub fn router(state: AppState) -> Router {
    let session_layer = SessionManagerLayer::new(PgSessionStore::new(
        state.pool.clone(),
        Duration::from_secs(state.config.session.idle_timeout_secs),
        Duration::from_secs(state.config.session.absolute_timeout_secs),
    ))
    .with_name(state.cookie_names.session)
    .with_secure(state.config.is_https())
    .with_http_only(true)
    .with_same_site(SameSite::Lax)
    .with_path("/")
    .with_expiry(Expiry::OnSessionEnd);
    let session_layer = match &state.cookie_domain {
        Some(domain) => session_layer.with_domain(domain.clone()),
        None => session_layer,
    };

    let mut pages = Router::new();
    if state.config.sign_up == crate::config::SignUp::Open {
        pages = pages.merge(web::sign_up::router());
    }
    if state.config.dev_mailbox_enabled() {
        pages = pages.merge(web::dev_mailbox::router(state.clone()));
    }
    let pages = pages
        .merge(web::home::router())
        .merge(web::sign_in::router())
        .merge(web::forgot_password::router())
        .merge(web::reset_password::router())
        .merge(web::settings_security::router())
        .merge(web::two_factor::router())
        .merge(web::passkeys::router())
        .merge(web::password_strength::router())
        .merge(web::oidc::pages_router())
        .layer(session_layer.clone())
        // The cookie's MAC is checked (and set) here, in front of the session layer.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::session_cookie::translate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::session_save_failed,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::csrf::protect,
        ));
    // Outermost, so the CSRF check and the session layer both see the request as it
    // leaves: a shared session cookie counts on these pages only with its host-only
    // companion (a sibling host can toss the one but not the other).
    let pages = match state.cookie_domain {
        Some(_) => pages.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::session_binding::guard,
        )),
        None => pages,
    };

    // Relying parties send browsers here (a GET, or a cross-site form POST that carries
    // no CSRF token): the session, as the pages have it, without the CSRF check.
    let oidc_browser = web::oidc::browser_router()
        .layer(session_layer)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::session_cookie::translate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::session_save_failed,
        ));
    let oidc_browser = match state.cookie_domain {
        Some(_) => oidc_browser.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::session_binding::guard,
        )),
        None => oidc_browser,
    };

    // `/metrics` is never on this listener (see `metrics_router`).
    let mut app = Router::new()
        .merge(pages)
        .merge(oidc_browser)
        .merge(web::oidc::api_router())
        .merge(web::forward_auth::router())
        .merge(web::health::router())
        .merge(static_routes())
        .fallback(|| async { AppError::NotFound.into_response() })
        .layer(axum::middleware::from_fn(telemetry::record_http))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::oidc::form_action,
        ));
    for layer in web::headers::layers(&state.config.allowed_hosts) {
        app = app.layer(layer);
    }
    app.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(telemetry::make_span))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(30),
            ))
            .layer(RequestBodyLimitLayer::new(web::csrf::MAX_BODY_BYTES)),
    )
    .with_state(state)
}

/// `/metrics` and the detailed `/readyz`, for their own listener: nothing else answers
/// there. Unset `metrics_listen`: not served at all.
pub fn metrics_router(state: AppState) -> Router {
    web::health::metrics_router()
        .fallback(|| async { AppError::NotFound.into_response() })
        .with_state(state)
}

/// A running service: its address, its state, and how to stop it.
pub struct Server {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    serving: JoinHandle<anyhow::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Server {
    /// Connects, migrates, starts the mail worker and housekeeping, and serves on `listener`.
    pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Server> {
        let state = build_state(config).await?;
        // After the keys: a generated development key makes `var/` private before the
        // file transport creates `var/mail` inside it.
        let transport = Transport::from_config(&state.config)?;
        tokio::spawn(crate::mail::transport::startup_check(transport.clone()));
        let from = mail_from(Some(&state.config.mail_from))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let metrics_listener = match state.config.metrics_listen {
            Some(metrics_addr) => Some(
                TcpListener::bind(metrics_addr)
                    .await
                    .with_context(|| format!("binding metrics_listen {metrics_addr}"))?,
            ),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().context("reading the metrics address")?),
            None => None,
        };
        let (shutdown, stopping) = watch::channel(false);

        let background = vec![
            state.accounts.outbox.spawn_worker(
                state.pool.clone(),
                transport,
                from,
                stopping.clone(),
            ),
            crate::oidc::logout::spawn_worker(state.oidc.clone(), stopping.clone()),
            tokio::spawn(resume_mail_requests(
                state.accounts.clone(),
                stopping.clone(),
            )),
            tokio::spawn(housekeeping(
                state.pool.clone(),
                Duration::from_secs(state.config.housekeeping_interval_secs.max(1)),
                stopping.clone(),
            )),
        ];
        let limits = ConnectionLimits::for_config(&state.config);
        let main = serve(
            "main",
            listener,
            router(state.clone()),
            limits,
            stopping.clone(),
        );
        let metrics = metrics_listener.map(|l| {
            serve(
                "metrics",
                l,
                metrics_router(state.clone()),
                limits,
                stopping,
            )
        });
        let serving = tokio::spawn(async move {
            match metrics {
                Some(metrics) => tokio::try_join!(main, metrics).map(|_| ()),
                None => main.await,
            }
        });
        tracing::info!(%addr, ?metrics_addr, "latchkey is listening");
        Ok(Server {
            addr,
            metrics_addr,
            state,
            shutdown,
            serving,
            background,
        })
    }

    /// Stops accepting, lets in-flight requests and queued work finish, then stops workers.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let served = self.serving.await.context("the HTTP server task failed")?;
        self.state.accounts.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.state.accounts.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("gave up waiting for background requests at shutdown");
        }
        for task in self.background {
            let _ = task.await;
        }
        self.state.pool.close().await;
        served
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.stop().await
    }
}

/// What one listener allows: connections at once, and time to send a request head.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    max_connections: usize,
    header_read_timeout: Duration,
}

impl ConnectionLimits {
    fn for_config(config: &Config) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: config.max_connections.max(1),
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
        }
    }
}

/// Serves HTTP/1.1 with keep-alive on `listener` until `stopping`, then waits for every
/// open connection to finish its request. A connection that has not sent a whole request
/// head within the header-read timeout is closed (an idle keep-alive connection too);
/// past `max_connections`, new connections wait unaccepted in the kernel's backlog.
async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let bound = listener
        .local_addr()
        .map_or_else(|_| name.to_owned(), |a| a.to_string());
    let open = metrics::gauge!("latchkey_http_connections_open", "listener" => bound);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.context("the connection slots closed")?,
            () = stopped(&mut stopping) => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    if !is_connection_error(&err) {
                        tracing::warn!(error = %err, listener = name, "accept failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    continue;
                }
            },
            () = stopped(&mut stopping) => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            // Handlers read the client address as axum's `serve` would provide it.
            request.extensions_mut().insert(ConnectInfo(remote));
            app.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let open = open.clone();
        open.increment(1.0);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                // Timeouts and clients that go away are routine.
                tracing::debug!(error = %err, listener = name, "connection ended with an error");
            }
            open.decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Resolves once shutdown begins (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// How often each instance looks for forgot-password and sign-up requests that no task
/// finished (`auth::deferred`).
const RESUME_MAIL_REQUESTS_EVERY: Duration = Duration::from_secs(5);

/// Runs `job` at start-up and then every `period`, until shutdown.
async fn every<F, Fut>(period: Duration, mut stopping: watch::Receiver<bool>, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => job().await,
            changed = stopping.changed() => {
                if changed.is_err() || *stopping.borrow() {
                    return;
                }
            }
        }
    }
}

/// Does the mail requests a crash or a failed task left, at start-up and then every
/// [`RESUME_MAIL_REQUESTS_EVERY`], until shutdown.
async fn resume_mail_requests(accounts: Accounts, stopping: watch::Receiver<bool>) {
    every(RESUME_MAIL_REQUESTS_EVERY, stopping, || async {
        match crate::auth::deferred::resume(&accounts).await {
            Ok(0) => {}
            Ok(done) => tracing::info!(done, "resumed mail requests"),
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "resuming mail requests failed")
            }
        }
    })
    .await
}

/// Sweeps at start-up and then every `period`, until shutdown.
async fn housekeeping(pool: PgPool, period: Duration, stopping: watch::Receiver<bool>) {
    every(period, stopping, || async {
        match store::housekeeping::sweep(&pool).await {
            Ok(swept) => tracing::debug!(?swept, "housekeeping"),
            Err(err) => tracing::warn!(error = format!("{err:#}"), "housekeeping failed"),
        }
    })
    .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
