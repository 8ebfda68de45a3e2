//! Forward auth through the real nginx and Caddy (docs/deploy.md, "Protect an application"):
//! Debian's packages (`.ci/install-proxies`) run in the foreground under
//! `deploy/nginx/latchkey.conf` and `deploy/caddy/Caddyfile`, with only their `@…@`
//! placeholders replaced, in front of latchkey and an application that echoes what
//! reaches it. The client resolves `auth.example.test` (latchkey), `app.example.test`
//! (the application, in `allowed_hosts`) and `stray.example.test` (served by the proxy as
//! the application, but not in `allowed_hosts`) to 127.0.0.1, with `cookie_domain =
//! example.test`, so the shared-domain session cookie is the real one. Every check is
//! what a person (or an attacker) sees: where the browser is sent, and what the
//! application receives. Without nginx or caddy these tests fail under `CI` and skip
//! otherwise.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::echo::{EchoApp, Seen};
use crate::helpers::*;
use latchkey_test_support::proxies::{
    APP_HOST, AUTH_HOST, COOKIE_DOMAIN, Kind, Protected, ReverseProxy, STRAY_HOST,
};

/// A page of the application, with a query that must survive the round trip exactly.
const PAGE: &str = "/wiki/Some%20Page?tab=history&lang=en&x=%2Fa%3Fb";
const EMAIL: &str = "ada@example.test";
const FORGED_EMAIL: &str = "mallory@example.test";
const FORGED_USER: &str = "00000000-0000-0000-0000-000000000001";

/// latchkey, the application and the proxy in front of both.
struct Stack {
    app: TestApp,
    echo: EchoApp,
    proxy: ReverseProxy,
}

impl Stack {
    /// `None` when the proxy is not installed (outside CI).
    async fn start(kind: Kind, test: &str) -> Option<Stack> {
        if !kind.installed(test) {
            return None;
        }
        let Protected { app, echo, proxy } = Protected::start(kind).await;
        Some(Stack { app, echo, proxy })
    }

    fn auth_base(&self) -> String {
        format!("http://{AUTH_HOST}:{}", self.proxy.port)
    }

    fn url_on(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.proxy.port)
    }

    /// The application's page the tests ask for, as the browser's address bar shows it.
    fn page(&self) -> String {
        self.url_on(APP_HOST, PAGE)
    }

    /// A new browser: its own cookie jar, every test host on loopback, latchkey's pages
    /// at `auth.example.test` through the proxy.
    fn browser(&self) -> Browser {
        Browser::resolving(&self.auth_base(), &[AUTH_HOST, APP_HOST, STRAY_HOST])
    }

    /// Visits `url` on the application with forged identity headers.
    async fn visit(&self, browser: &Browser, url: &str) -> reqwest::Response {
        browser
            .client
            .get(url)
            .header("Accept", "text/html,application/xhtml+xml")
            .header("Remote-Email", FORGED_EMAIL)
            .header("Remote-User", FORGED_USER)
            .send()
            .await
            .expect("GET through the proxy")
    }

    /// Visits the application's page and returns what the application saw: the visit
    /// must have reached it (200) as exactly one new request.
    async fn seen_by_application(&self, browser: &Browser) -> Seen {
        let before = self.echo.count();
        let response = self.visit(browser, &self.page()).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "signed in, the application answers ({})",
            self.proxy.logs()
        );
        let body = response.text().await.expect("the echo's answer");
        let seen: Seen = serde_json::from_str(&body).expect("the echo's JSON");
        assert_eq!(
            self.echo.seen().last(),
            Some(&seen),
            "what it saw is what it said"
        );
        assert_eq!(self.echo.count(), before + 1);
        seen
    }

    /// Visits the application's page without a usable session: the proxy sends the
    /// browser to latchkey's sign-in with `next` = the exact page, and nothing reaches
    /// the application. Returns the sign-in URL.
    async fn sent_to_sign_in(&self, browser: &Browser) -> String {
        let before = self.echo.count();
        let response = self.visit(browser, &self.page()).await;
        let status = response.status();
        let to = location(&response);
        assert!(
            status == StatusCode::FOUND || status == StatusCode::SEE_OTHER,
            "not signed in: {status} to {to:?}"
        );
        let prefix = format!("{}/sign-in?next=", self.auth_base());
        assert!(to.starts_with(&prefix), "{to}");
        assert_eq!(next_of(&to).as_deref(), Some(self.page().as_str()), "{to}");
        assert_eq!(self.echo.count(), before, "nothing reached the application");
        to
    }

    /// Polls the application's page until the browser is sent to the sign-in; it must
    /// be within a second of `since`.
    async fn locked_within_a_second(&self, browser: &Browser, since: Instant) {
        loop {
            let response = self.visit(browser, &self.page()).await;
            if response.status() != StatusCode::OK {
                break;
            }
            assert!(
                since.elapsed() <= Duration::from_secs(1),
                "the application still answers {:?} after the session ended",
                since.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.sent_to_sign_in(browser).await;
    }

    /// Signs in on the sign-in page the proxy sent the browser to, as its form does
    /// (with the hidden `next`); returns latchkey's answer.
    async fn sign_in_from(&self, browser: &Browser, sign_in_url: &str) -> reqwest::Response {
        let page = browser
            .client
            .get(sign_in_url)
            .send()
            .await
            .expect("GET sign-in");
        assert_status(&page, StatusCode::OK);
        let page = page.text().await.expect("sign-in page");
        let next = hidden_field(&page, "next").expect("the sign-in form carries next");
        assert_eq!(next, self.page(), "the form keeps the exact page");
        let csrf = csrf_in(&page).expect("csrf token");
        browser
            .client
            .post(browser.url("/sign-in"))
            .form(&[
                ("email", EMAIL),
                ("password", PASSWORD),
                ("next", next.as_str()),
                ("csrf_token", csrf.as_str()),
            ])
            .send()
            .await
            .expect("POST sign-in")
    }

    /// A browser signed in through the proxy, the way a person gets there: the
    /// application, the sign-in, back to the exact page.
    async fn signed_in(&self) -> Browser {
        let browser = self.browser();
        let sign_in = self.sent_to_sign_in(&browser).await;
        let answer = self.sign_in_from(&browser, &sign_in).await;
        assert_status(&answer, StatusCode::SEE_OTHER);
        assert_eq!(location(&answer), self.page(), "back to the exact page");
        browser
    }

    async fn user_id(&self) -> String {
        let (id,): (uuid::Uuid,) = sqlx::query_as("select id from users where email = $1")
            .bind(EMAIL)
            .fetch_one(&self.app.pool)
            .await
            .expect("user");
        id.to_string()
    }

    /// The application received latchkey's identity, once each, and no forged copy.
    async fn assert_identity(&self, seen: &Seen) {
        assert_eq!(seen.header("remote-email"), Some(EMAIL), "{seen:?}");
        assert_eq!(
            seen.header("remote-user"),
            Some(self.user_id().await.as_str()),
            "{seen:?}"
        );
        assert!(
            !seen.headers.iter().any(|(_, v)| v.contains(FORGED_EMAIL)),
            "a forged header reached the application: {seen:?}"
        );
    }
}

/// The decoded `next` of a URL's query.
fn next_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == "next")
        .map(|(_, v)| v.into_owned())
}

/// The value of the hidden input `name` on a page, HTML entities decoded.
fn hidden_field(page: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    let end = start + page[start..].find('"')?;
    Some(unescape_html(&page[start..end]))
}

fn unescape_html(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// An anonymous visit lands on the sign-in with next = the exact URL; signing in sends
/// the browser back to it; the application then sees latchkey's Remote-Email and
/// Remote-User, never the client's forged copies (anonymous: nothing reaches it).
async fn sign_in_round_trip(kind: Kind, test: &str) {
    let Some(stack) = Stack::start(kind, test).await else {
        return;
    };
    stack.app.create_user(EMAIL, PASSWORD).await;
    let browser = stack.signed_in().await;
    assert!(
        browser.session_cookie().is_some(),
        "the session cookie is latchkey's, on {COOKIE_DOMAIN}"
    );
    let seen = stack.seen_by_application(&browser).await;
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.path_and_query(),
        PAGE,
        "the exact page, query included"
    );
    stack.assert_identity(&seen).await;

    // Another browser, never signed in, forging the headers: still the sign-in.
    stack.sent_to_sign_in(&stack.browser()).await;
}

#[tokio::test]
async fn nginx_sends_an_anonymous_visit_to_sign_in_and_back_with_the_identity_only_latchkey_sets() {
    sign_in_round_trip(Kind::Nginx, "nginx_sign_in_round_trip").await;
}

#[tokio::test]
async fn caddy_sends_an_anonymous_visit_to_sign_in_and_back_with_the_identity_only_latchkey_sets() {
    sign_in_round_trip(Kind::Caddy, "caddy_sign_in_round_trip").await;
}

/// With two-factor on, the password alone does not open the application (a
/// half-signed-in session is not signed in); the code step sends the browser back to
/// the exact URL.
async fn two_factor_round_trip(kind: Kind, test: &str) {
    let Some(stack) = Stack::start(kind, test).await else {
        return;
    };
    stack.app.create_user(EMAIL, PASSWORD).await;
    // Turn two-factor on, signed in through the proxy.
    let owner = stack.signed_in().await;
    let setup = owner
        .get("/settings/security/two-factor")
        .await
        .text()
        .await
        .expect("setup page");
    let secret = crate::two_factor::secret_on(&setup);
    let enabled = owner
        .enable_two_factor(PASSWORD, &crate::two_factor::code_at(&secret, 0))
        .await;
    assert_status(&enabled, StatusCode::OK);

    let browser = stack.browser();
    let sign_in = stack.sent_to_sign_in(&browser).await;
    let answer = stack.sign_in_from(&browser, &sign_in).await;
    assert_status(&answer, StatusCode::SEE_OTHER);
    let step = location(&answer);
    assert!(step.ends_with("/sign-in/two-factor"), "{step}");
    // Between the steps the application stays locked.
    stack.sent_to_sign_in(&browser).await;
    let answer = browser
        .second_step(&crate::two_factor::code_at(&secret, 1))
        .await;
    assert_status(&answer, StatusCode::SEE_OTHER);
    assert_eq!(location(&answer), stack.page(), "back to the exact page");
    let seen = stack.seen_by_application(&browser).await;
    assert_eq!(seen.path_and_query(), PAGE);
    stack.assert_identity(&seen).await;
}

#[tokio::test]
async fn nginx_lets_a_two_factor_account_through_only_after_its_code() {
    two_factor_round_trip(Kind::Nginx, "nginx_two_factor_round_trip").await;
}

#[tokio::test]
async fn caddy_lets_a_two_factor_account_through_only_after_its_code() {
    two_factor_round_trip(Kind::Caddy, "caddy_two_factor_round_trip").await;
}

/// Sign-out (with next = the application, which the answer sends the browser to),
/// "sign out other sessions" from another browser, and a reset each lock the
/// application again within a second.
async fn ending_sessions_locks_the_application(kind: Kind, test: &str) {
    let Some(stack) = Stack::start(kind, test).await else {
        return;
    };
    stack.app.create_user(EMAIL, PASSWORD).await;

    // Sign-out, asked to come back to the application.
    let browser = stack.signed_in().await;
    stack.seen_by_application(&browser).await;
    let csrf = browser.csrf_token("/").await;
    let out = browser
        .client
        .post(browser.url("/sign-out"))
        .form(&[("csrf_token", csrf.as_str()), ("next", &stack.page())])
        .send()
        .await
        .expect("POST sign-out");
    let since = Instant::now();
    assert_status(&out, StatusCode::SEE_OTHER);
    assert_eq!(location(&out), stack.page(), "sign-out keeps next");
    stack.locked_within_a_second(&browser, since).await;

    // "Sign out other sessions" from a second browser locks the first one out.
    let first = stack.signed_in().await;
    let second = stack.signed_in().await;
    stack.seen_by_application(&first).await;
    let revoked = second.sign_out_other_sessions().await;
    let since = Instant::now();
    assert!(
        revoked.status().is_success() || revoked.status().is_redirection(),
        "{}",
        revoked.status()
    );
    stack.locked_within_a_second(&first, since).await;
    let seen = stack.seen_by_application(&second).await;
    stack.assert_identity(&seen).await;

    // A reset from a third browser (forgot password, the mailed link) locks out the
    // second one.
    let third = stack.browser();
    assert_status(&third.forgot_password(EMAIL).await, StatusCode::OK);
    let mails = stack.app.mails_to(EMAIL, 1).await;
    let link = mails
        .last()
        .and_then(|m| m.first_link())
        .expect("a reset link");
    let token = link
        .split("token=")
        .nth(1)
        .expect("token in the link")
        .to_owned();
    let reset = third
        .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    let since = Instant::now();
    assert!(
        reset.status().is_success() || reset.status().is_redirection(),
        "{}",
        reset.status()
    );
    stack.locked_within_a_second(&second, since).await;
}

#[tokio::test]
async fn nginx_locks_the_application_within_a_second_of_sign_out_other_sessions_or_reset() {
    ending_sessions_locks_the_application(Kind::Nginx, "nginx_ending_sessions").await;
}

#[tokio::test]
async fn caddy_locks_the_application_within_a_second_of_sign_out_other_sessions_or_reset() {
    ending_sessions_locks_the_application(Kind::Caddy, "caddy_ending_sessions").await;
}

/// A host the proxy serves but latchkey does not protect gets 403, signed in or not,
/// never a redirect, and nothing reaches the application.
async fn stray_host_is_refused(kind: Kind, test: &str) {
    let Some(stack) = Stack::start(kind, test).await else {
        return;
    };
    stack.app.create_user(EMAIL, PASSWORD).await;
    let signed_in = stack.signed_in().await;
    let before = stack.echo.count();
    for browser in [&stack.browser(), &signed_in] {
        let response = stack
            .visit(browser, &stack.url_on(STRAY_HOST, "/admin?x=1"))
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(location(&response), "", "never a redirect");
    }
    assert_eq!(
        stack.echo.count(),
        before,
        "nothing reached the application"
    );
    // The allowed host still works for the same browser.
    stack.seen_by_application(&signed_in).await;
}

#[tokio::test]
async fn nginx_refuses_a_host_not_in_allowed_hosts() {
    stray_host_is_refused(Kind::Nginx, "nginx_stray_host").await;
}

#[tokio::test]
async fn caddy_refuses_a_host_not_in_allowed_hosts() {
    stray_host_is_refused(Kind::Caddy, "caddy_stray_host").await;
}

/// Through Caddy (forward-auth), a request that does not accept HTML (a script, an
/// XHR) gets 401 rather than a redirect to a page it cannot show.
#[tokio::test]
async fn caddy_answers_401_to_an_anonymous_request_that_does_not_want_html() {
    let Some(stack) = Stack::start(Kind::Caddy, "caddy_api_401").await else {
        return;
    };
    let response = stack
        .browser()
        .client
        .get(stack.url_on(APP_HOST, "/api/items"))
        .header("Accept", "application/json")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(stack.echo.count(), 0);
}

/// The shipped files keep every placeholder the tests (and docs/deploy.md) name, so what
/// is tested is what an operator edits.
#[test]
fn shipped_files_name_their_placeholders_at_the_top() {
    for (file, placeholders) in [
        (
            Kind::Nginx.shipped_file(),
            &[
                "@LISTEN@",
                "@LATCHKEY_HOST@",
                "@APP_HOST@",
                "@LATCHKEY_ADDR@",
                "@APP_ADDR@",
            ][..],
        ),
        (
            Kind::Caddy.shipped_file(),
            &[
                "@LATCHKEY_SITE@",
                "@APP_SITE@",
                "@LATCHKEY_ADDR@",
                "@APP_ADDR@",
            ][..],
        ),
    ] {
        let text = std::fs::read_to_string(&file).expect("shipped file");
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for placeholder in placeholders {
            assert!(
                header.contains(placeholder),
                "{} does not document {placeholder}",
                file.display()
            );
        }
    }
}

/// Authelia's other identity headers and underscore spellings, forged by a signed-in
/// client: the application sees latchkey's four and nothing of the client's.
async fn forged_identity_headers_never_reach_the_application(kind: Kind, test: &str) {
    let Some(stack) = Stack::start(kind, test).await else {
        return;
    };
    stack.app.create_user(EMAIL, PASSWORD).await;
    let browser = stack.signed_in().await;
    let before = stack.echo.count();
    let response = browser
        .client
        .get(stack.page())
        .header("Accept", "text/html")
        .header("Remote-Groups", "admins")
        .header("Remote-Name", "Mallory")
        .header("Remote-User", FORGED_USER)
        .header("Remote-Email", FORGED_EMAIL)
        .header("Remote_User", FORGED_USER)
        .header("Remote_Email", FORGED_EMAIL)
        .header("Remote_Groups", "admins")
        .send()
        .await
        .expect("GET through the proxy");
    assert_eq!(response.status(), StatusCode::OK, "{}", stack.proxy.logs());
    let seen: Seen = serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    assert_eq!(stack.echo.count(), before + 1);
    stack.assert_identity(&seen).await;
    assert_eq!(seen.header("remote-name"), Some(EMAIL), "{seen:?}");
    assert!(
        seen.header_values("remote-groups")
            .iter()
            .all(|v| v.is_empty()),
        "{seen:?}"
    );
    for (name, value) in &seen.headers {
        assert!(
            !name.contains('_'),
            "an underscore header reached the application: {name}: {value}"
        );
        assert!(
            !value.contains("admins") && !value.contains("Mallory") && !value.contains(FORGED_USER),
            "a forged value reached the application: {name}: {value}"
        );
    }
}

#[tokio::test]
async fn nginx_passes_only_latchkeys_four_identity_headers() {
    forged_identity_headers_never_reach_the_application(Kind::Nginx, "nginx_forged_identity").await;
}

#[tokio::test]
async fn caddy_passes_only_latchkeys_four_identity_headers() {
    forged_identity_headers_never_reach_the_application(Kind::Caddy, "caddy_forged_identity").await;
}

/// Caddy removes every `Remote-*` a client sends, not only the four latchkey sets.
#[tokio::test]
async fn caddy_removes_every_other_remote_header() {
    let Some(stack) = Stack::start(Kind::Caddy, "caddy_other_remote").await else {
        return;
    };
    stack.app.create_user(EMAIL, PASSWORD).await;
    let browser = stack.signed_in().await;
    let response = browser
        .client
        .get(stack.page())
        .header("Accept", "text/html")
        .header("Remote-Roles", "admin")
        .header("remote_roles", "admin")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    let seen: Seen = serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    assert!(seen.header_values("remote-roles").is_empty(), "{seen:?}");
    assert!(seen.header_values("remote_roles").is_empty(), "{seen:?}");
}

/// `GET http://stray…/admin` with `Host: app…`: nginx would route by the request line's
/// host while the check named the Host header's.
#[tokio::test]
async fn nginx_refuses_a_request_line_whose_host_differs_from_the_host_header() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Some(stack) = Stack::start(Kind::Nginx, "nginx_absolute_form").await else {
        return;
    };
    stack.app.create_user(EMAIL, PASSWORD).await;
    let browser = stack.signed_in().await;
    let session = browser.session_cookie().expect("a session cookie");
    let before = stack.echo.count();
    let port = stack.proxy.port;
    let request = format!(
        "GET http://{STRAY_HOST}:{port}/admin HTTP/1.1\r\nHost: {APP_HOST}:{port}\r\n\
         Cookie: latchkey_session={session}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let status_line = answer.lines().next().unwrap_or_default().to_owned();
    assert!(
        status_line.starts_with("HTTP/1.1 421") || status_line.starts_with("HTTP/1.1 400"),
        "{status_line}"
    );
    assert_eq!(
        stack.echo.count(),
        before,
        "nothing reached the application"
    );
}

/// An original URL of 8 KiB goes to the sign-in and back; a longer one gets 414 or 400,
/// never a 500.
async fn long_original_urls(kind: Kind, test: &str) {
    let Some(stack) = Stack::start(kind, test).await else {
        return;
    };
    stack.app.create_user(EMAIL, PASSWORD).await;
    // The request target: 8 KiB exactly, with non-ASCII text percent-encoded as browsers do.
    let mut path = "/wiki/Z%C3%BCrich?q=".to_owned();
    path.push_str(&"a".repeat(8 * 1024 - path.len()));
    assert_eq!(path.len(), 8 * 1024);
    let url = stack.url_on(APP_HOST, &path);
    let anonymous = stack.browser();
    let response = stack.visit(&anonymous, &url).await;
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "{}",
        stack.proxy.logs()
    );
    let to = location(&response);
    assert_eq!(next_of(&to).as_deref(), Some(url.as_str()));
    let sign_in = anonymous
        .client
        .get(&to)
        .send()
        .await
        .expect("sign-in page");
    assert_eq!(
        sign_in.status(),
        StatusCode::OK,
        "the sign-in page takes it"
    );

    let signed_in = stack.signed_in().await;
    let reached = stack.visit(&signed_in, &url).await;
    assert_eq!(reached.status(), StatusCode::OK, "{}", stack.proxy.logs());
    let seen: Seen = serde_json::from_str(&reached.text().await.expect("body")).expect("JSON");
    assert_eq!(seen.path_and_query(), path);

    let longer = stack.url_on(APP_HOST, &format!("/{}", "b".repeat(12 * 1024)));
    for browser in [&anonymous, &signed_in] {
        let status = stack.visit(browser, &longer).await.status();
        assert!(
            status == StatusCode::URI_TOO_LONG || status == StatusCode::BAD_REQUEST,
            "{status}"
        );
    }
}

#[tokio::test]
async fn nginx_takes_original_urls_up_to_8_kib_and_refuses_longer_ones_clearly() {
    long_original_urls(Kind::Nginx, "nginx_long_urls").await;
}

#[tokio::test]
async fn caddy_takes_original_urls_up_to_8_kib_and_refuses_longer_ones_clearly() {
    long_original_urls(Kind::Caddy, "caddy_long_urls").await;
}

/// The shipped files refuse `/metrics` on latchkey's public site.
async fn metrics_are_refused(kind: Kind, test: &str) {
    let Some(stack) = Stack::start(kind, test).await else {
        return;
    };
    let response = stack
        .browser()
        .client
        .get(format!("{}/metrics", stack.auth_base()))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn nginx_refuses_metrics() {
    metrics_are_refused(Kind::Nginx, "nginx_metrics").await;
}

#[tokio::test]
async fn caddy_refuses_metrics() {
    metrics_are_refused(Kind::Caddy, "caddy_metrics").await;
}

/// A page on a sibling host sets the shared session cookie to the attacker's own
/// session ("cookie tossing"): latchkey's own pages do not take it, because the
/// host-only companion that only latchkey can set does not bind it.
#[tokio::test]
async fn a_session_cookie_tossed_by_a_sibling_host_is_ignored_on_latchkeys_pages() {
    let Some(stack) = Stack::start(Kind::Nginx, "nginx_tossed_cookie").await else {
        return;
    };
    stack.app.create_user(EMAIL, PASSWORD).await;
    stack.app.create_user(FORGED_EMAIL, PASSWORD).await;
    let attacker = stack.browser();
    assert_status(
        &attacker.sign_in(FORGED_EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let tossed = attacker
        .session_cookie()
        .expect("the attacker's session cookie");

    let victim = stack.browser();
    assert_status(
        &victim.sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let sibling = stack.url_on(APP_HOST, "/").parse().expect("url");
    victim.jar.add_cookie_str(
        &format!("latchkey_session={tossed}; Domain={COOKIE_DOMAIN}; Path=/"),
        &sibling,
    );
    assert_eq!(victim.session_cookie().as_deref(), Some(tossed.as_str()));

    for path in ["/", "/settings/security"] {
        let page = victim.get(path).await;
        let status = page.status();
        let body = page.text().await.expect("body");
        assert!(
            !body.contains(FORGED_EMAIL),
            "{path}: the tossed cookie put the browser in the attacker's account"
        );
        assert_eq!(
            status,
            StatusCode::SEE_OTHER,
            "{path}: signed out, not swapped"
        );
    }
    // Signing in again works as usual, in the victim's own account.
    assert_status(
        &victim.sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let home = victim.get("/").await;
    assert_status(&home, StatusCode::OK);
    assert!(home.text().await.expect("body").contains(EMAIL));
}
