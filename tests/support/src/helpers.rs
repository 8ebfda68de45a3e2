//! The test harness: `TestApp::spawn()` and one helper per endpoint.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use latchkey::app::Server;
use latchkey::config::Config;
use latchkey::domain::EmailAddress;
use latchkey::store::users;
use reqwest::cookie::{CookieStore, Jar};
use reqwest::redirect::Policy;
use reqwest::{Client, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::database::TestDatabase;
pub use crate::database::postgres_base;
use crate::smtp_sink::{ReceivedMail, SmtpSink};

/// A good password for tests: long, uncommon, no email in it.
pub const PASSWORD: &str = "correct horse battery staple";
pub const NEW_PASSWORD: &str = "a whole new passphrase of mine";

pub struct TestApp {
    pub base: String,
    pub pool: PgPool,
    pub smtp: SmtpSink,
    pub database_url: String,
    server: Option<Server>,
    /// The database named for this app, when the app runs on it (dropped with the app).
    _database: Option<TestDatabase>,
}

/// Another instance on a [`TestApp`]'s database (from [`TestApp::spawn_sibling`]).
pub struct Sibling {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    _server: Server,
}

/// One browser: its own cookie jar, redirects not followed so tests can assert them.
pub struct Browser {
    pub client: Client,
    pub jar: Arc<Jar>,
    base: String,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the service with test settings, after `tweak` has had its say.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        let smtp = SmtpSink::start().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let database = TestDatabase::named();
        let database_url = database.url().to_owned();
        let mut config = Config::defaults().expect("defaults");
        config.database_url = SecretString::from(database_url.clone());
        config.listen = addr;
        config.public_url = format!("http://{addr}").parse().expect("url");
        config.smtp_url = Some(SecretString::from(smtp.url()));
        config.ip_rate_limit = 0;
        config.log = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
        config.mail_dir = std::env::temp_dir().join(format!("latchkey-mail-{}", addr.port()));
        config.secret_key = Some(SecretString::from(
            base64::engine::general_purpose::STANDARD.encode([42u8; 32]),
        ));
        // Off unless a test turns it on: every other test counts the mails it expects, and
        // a sign-in from each new test browser would add one.
        config.new_device_mail = latchkey::config::OnOff::Off;
        tweak(&mut config);
        // The app drops the database it named only if it runs on it (a tweak may reach it
        // through a proxy, or put this app on another app's database, which that app drops).
        let runs_on_it =
            database_name(config.database_url.expose_secret()).as_deref() == Some(database.name());
        let database = runs_on_it.then_some(database);
        latchkey::telemetry::init(&config.log, config.log_format);
        let server = Server::start(config, listener)
            .await
            .expect("server starts");
        let pool = server.state.pool.clone();
        TestApp {
            base: format!("http://{addr}"),
            pool,
            smtp,
            database_url,
            server: Some(server),
            _database: database,
        }
    }

    /// `http://ip:port` of the metrics listener, when `metrics_listen` is set.
    pub fn metrics_base(&self) -> Option<String> {
        let server = self.server.as_ref().expect("running");
        server.metrics_addr.map(|addr| format!("http://{addr}"))
    }

    /// A second instance of this service on the same database, with the same settings
    /// and key, on its own port: two instances behind one load balancer.
    pub async fn spawn_sibling(&self) -> Sibling {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = (*self.state().config).clone();
        config.listen = addr;
        let server = Server::start(config, listener)
            .await
            .expect("second instance starts");
        Sibling {
            base: format!("http://{addr}"),
            _server: server,
        }
    }

    pub fn state(&self) -> &latchkey::app::AppState {
        &self.server.as_ref().expect("running").state
    }

    /// Stops the service gracefully (as on SIGTERM).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.base)
    }

    /// An account with `password`, made the way `latchkey user create` makes one.
    pub async fn create_user(&self, email: &str, password: &str) -> uuid::Uuid {
        let hash = self
            .state()
            .accounts
            .hasher
            .hash(SecretString::from(password.to_owned()))
            .await
            .expect("hash");
        users::insert(
            &self.pool,
            &EmailAddress::parse(email).expect("email"),
            &hash,
        )
        .await
        .expect("insert user")
    }

    pub async fn password_hash(&self, email: &str) -> String {
        let (hash,): (String,) =
            sqlx::query_as("select password_hash from users where lower(email) = lower($1)")
                .bind(email)
                .fetch_one(&self.pool)
                .await
                .expect("user row");
        hash
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&self.pool).await.expect(sql);
        n
    }

    /// Waits until no mail request (`auth::deferred`: a forgot-password's or sign-up's
    /// mail is made after its answer) and no outbox row is waiting, and the mail to
    /// `emails` has not changed for two seconds. How many mails each address got.
    pub async fn settled_mail(&self, emails: &[&str]) -> Vec<usize> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last = (Vec::new(), tokio::time::Instant::now());
        loop {
            let counts: Vec<usize> = emails.iter().map(|e| self.smtp.count_to(e)).collect();
            let waiting = self
                .count(
                    "select (select count(*) from mail_requests)
                          + (select count(*) from outbox where status = 'pending')",
                )
                .await;
            if counts != last.0 || waiting > 0 {
                last = (counts.clone(), tokio::time::Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(2) {
                return counts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mail never settled: {waiting} waiting, {counts:?} sent"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks for a reset link for `email` as a person would, and returns the token of the
    /// `nth` mail that address has received (which must be the last one).
    pub async fn request_reset_link(&self, browser: &Browser, email: &str, nth: usize) -> String {
        let response = browser.forgot_password(email).await;
        assert_status(&response, StatusCode::OK);
        let mails = self.mails_to(email, nth).await;
        assert_eq!(mails.len(), nth, "mails to {email}");
        let link = mails[nth - 1].first_link().expect("a link in the mail");
        let prefix = format!("{}/reset-password?token=", self.base);
        assert!(link.starts_with(&prefix), "{link}");
        link[prefix.len()..].to_owned()
    }

    /// Waits for the `n`-th mail to `to` and returns all mail to that address.
    pub async fn mails_to(&self, to: &str, n: usize) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mails = self.smtp.messages_to(to);
            if mails.len() >= n || tokio::time::Instant::now() > deadline {
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestApp {
    /// Ends the app's use of its database, which then drops (`TestDatabase`'s Drop, with
    /// force for connections still open). Not a graceful stop (`stop()` is async): the
    /// pool is marked closed at once, so the server's background tasks stop taking
    /// connections, and the server's tasks end with the test's runtime.
    fn drop(&mut self) {
        drop(self.pool.close());
        drop(self.server.take());
    }
}

/// The database a Postgres URL names (its path without the leading slash).
fn database_name(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    Some(url.path().trim_start_matches('/').to_owned())
}

impl Browser {
    /// A browser for the service at `base` (e.g. another instance's `http://127.0.0.1:port`).
    pub fn new(base: &str) -> Browser {
        let jar = Arc::new(Jar::default());
        let client = Client::builder()
            .redirect(Policy::none())
            .cookie_provider(jar.clone())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Browser {
            client,
            jar,
            base: base.to_owned(),
        }
    }

    /// A browser for the service at `base` whose client resolves each of `hosts` to
    /// 127.0.0.1 (the port comes from the URL), as a machine with those names in DNS
    /// would: the Host header, cookie domains and redirects are the real names'.
    pub fn resolving(base: &str, hosts: &[&str]) -> Browser {
        let jar = Arc::new(Jar::default());
        let mut builder = Client::builder()
            .redirect(Policy::none())
            .cookie_provider(jar.clone())
            .timeout(Duration::from_secs(30));
        for host in hosts {
            builder = builder.resolve(host, std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        Browser {
            client: builder.build().expect("client"),
            jar,
            base: base.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// The CSRF token of the page at `path` (fetching it also sets the CSRF cookie).
    pub async fn csrf_token(&self, path: &str) -> String {
        let body = self.get(path).await.text().await.expect("body");
        if let Some(token) = csrf_in(&body) {
            return token;
        }
        // Pages without a form (e.g. a dead link's page): any form page carries the token.
        let body = self.get("/sign-in").await.text().await.expect("body");
        csrf_in(&body).unwrap_or_else(|| panic!("no csrf_token on {path} nor /sign-in"))
    }

    /// Posts a form as a browser would after loading `form_page`: token included.
    pub async fn submit(&self, form_page: &str, action: &str, fields: &[(&str, &str)]) -> Response {
        let token = self.csrf_token(form_page).await;
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf_token", &token));
        self.client
            .post(self.url(action))
            .form(&form)
            .send()
            .await
            .expect("POST")
    }

    pub async fn sign_in(&self, email: &str, password: &str) -> Response {
        self.submit(
            "/sign-in",
            "/sign-in",
            &[("email", email), ("password", password)],
        )
        .await
    }

    /// Submits the reset form of the link with `token`, as the page does.
    pub async fn reset_password(&self, token: &str, password: &str, confirm: &str) -> Response {
        self.submit(
            &format!("/reset-password?token={token}"),
            "/reset-password",
            &[
                ("token", token),
                ("new_password", password),
                ("new_password_confirm", confirm),
            ],
        )
        .await
    }

    /// The second step of a sign-in: a TOTP or recovery code on `/sign-in/two-factor`.
    pub async fn second_step(&self, code: &str) -> Response {
        self.submit(
            "/sign-in/two-factor",
            "/sign-in/two-factor",
            &[("totp_code", code)],
        )
        .await
    }

    /// Asks for a reset link for `email` from the forgot-password page.
    pub async fn forgot_password(&self, email: &str) -> Response {
        self.submit("/forgot-password", "/forgot-password", &[("email", email)])
            .await
    }

    /// The reset form of an account with two-factor: the code goes with the new password.
    pub async fn reset_password_with_code(
        &self,
        token: &str,
        password: &str,
        confirm: &str,
        code: &str,
    ) -> Response {
        self.submit(
            &format!("/reset-password?token={token}"),
            "/reset-password",
            &[
                ("token", token),
                ("new_password", password),
                ("new_password_confirm", confirm),
                ("totp_code", code),
            ],
        )
        .await
    }

    /// Settings → Security → Change password.
    pub async fn change_password(&self, current: &str, new: &str, confirm: &str) -> Response {
        self.submit(
            "/settings/security",
            "/settings/security/password",
            &[
                ("current_password", current),
                ("new_password", new),
                ("new_password_confirm", confirm),
            ],
        )
        .await
    }

    /// Posts a two-factor settings form (its page is the setup/manage page): the current
    /// password and a code.
    async fn two_factor_form(&self, action: &str, password: &str, code: &str) -> Response {
        self.submit(
            "/settings/security/two-factor",
            action,
            &[("current_password", password), ("totp_code", code)],
        )
        .await
    }

    /// Turns two-factor on with the current password and a code from the new secret.
    pub async fn enable_two_factor(&self, password: &str, code: &str) -> Response {
        self.two_factor_form("/settings/security/two-factor/enable", password, code)
            .await
    }

    /// Turns two-factor off with the current password and a code.
    pub async fn disable_two_factor(&self, password: &str, code: &str) -> Response {
        self.two_factor_form("/settings/security/two-factor/disable", password, code)
            .await
    }

    /// New recovery codes (the old ones stop working), for the password and a code.
    pub async fn regenerate_recovery_codes(&self, password: &str, code: &str) -> Response {
        self.two_factor_form(
            "/settings/security/two-factor/recovery-codes",
            password,
            code,
        )
        .await
    }

    /// Settings → Security → Sign out other sessions.
    pub async fn sign_out_other_sessions(&self) -> Response {
        self.submit(
            "/settings/security",
            "/settings/security/sessions/revoke-others",
            &[],
        )
        .await
    }

    /// Settings → Security → Sign out on one session, by the id the page lists.
    pub async fn sign_out_session(&self, session_id: impl std::fmt::Display) -> Response {
        self.submit(
            "/settings/security",
            &format!("/settings/security/sessions/{session_id}/revoke"),
            &[],
        )
        .await
    }

    pub async fn sign_out(&self) -> Response {
        self.submit("/", "/sign-out", &[]).await
    }

    /// The session cookie's value, if the jar holds one.
    pub fn session_cookie(&self) -> Option<String> {
        let url = self.base.parse().expect("url");
        let header = self.jar.cookies(&url)?;
        header
            .to_str()
            .ok()?
            .split("; ")
            .find_map(|c| c.strip_prefix("latchkey_session="))
            .map(str::to_owned)
    }

    /// The session id the session cookie carries: the part before its MAC
    /// (`<id>.<mac>`), as the database knows the session (by its digest).
    pub fn session_id(&self) -> Option<String> {
        let cookie = self.session_cookie()?;
        cookie.split_once('.').map(|(id, _)| id.to_owned())
    }

    /// A second browser that holds only `session` as its session cookie.
    pub fn with_session_cookie(app: &TestApp, session: &str) -> Browser {
        let browser = app.browser();
        let url = app.base.parse().expect("url");
        browser
            .jar
            .add_cookie_str(&format!("latchkey_session={session}; Path=/"), &url);
        browser
    }
}

pub fn csrf_in(body: &str) -> Option<String> {
    let start = body.find("name=\"csrf_token\" value=\"")? + "name=\"csrf_token\" value=\"".len();
    let end = body[start..].find('"')?;
    Some(body[start..start + end].to_owned())
}

/// A page with its CSRF tokens blanked, to compare two answers.
pub fn without_tokens(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    let marker = "name=\"csrf_token\" value=\"";
    while let Some(i) = rest.find(marker) {
        out.push_str(&rest[..i + marker.len()]);
        rest = &rest[i + marker.len()..];
        let end = rest.find('"').unwrap_or(0);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

pub fn location(response: &Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

pub fn assert_status(response: &Response, status: StatusCode) {
    assert_eq!(response.status(), status, "for {}", response.url());
}
