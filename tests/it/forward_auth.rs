//! Forward auth as a reverse proxy and an application see it: the contract table of
//! PRODUCT.md row by row, the way back through sign-in, two-factor and sign-out, the
//! shared-domain cookie, and revocation reaching a second instance within a second.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use latchkey::app::Server;
use latchkey::config::Config;
use reqwest::{Client, Response, StatusCode};

use crate::helpers::*;
use crate::two_factor::{code_at, enabled};

const EMAIL: &str = "ada@example.com";
const APP_URL: &str = "http://app.example.com/wiki/page?x=1&y=two";

async fn spawn() -> TestApp {
    TestApp::spawn_with(|c| {
        c.allowed_hosts = vec!["app.example.com".into(), "*.apps.example.com".into()];
    })
    .await
}

/// A proxy's client: no cookie jar, no redirects, from `source`.
fn proxy_from(source: IpAddr) -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(source)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn proxy() -> Client {
    proxy_from(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// nginx's subrequest: the original URL and the browser's cookies.
async fn auth_request(base: &str, original: Option<&str>, cookie: Option<&str>) -> Response {
    auth_request_from(&proxy(), base, original, cookie).await
}

async fn auth_request_from(
    client: &Client,
    base: &str,
    original: Option<&str>,
    cookie: Option<&str>,
) -> Response {
    let mut request = client
        .get(format!("{base}/api/authz/auth-request"))
        .header("x-original-method", "GET");
    if let Some(original) = original {
        request = request.header("x-original-url", original);
    }
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.expect("auth-request")
}

/// Traefik's / Caddy's request: the original request in X-Forwarded-*.
async fn forward_auth(
    base: &str,
    method: &str,
    accept: &str,
    host: &str,
    uri: &str,
    cookie: Option<&str>,
) -> Response {
    let mut request = proxy()
        .get(format!("{base}/api/authz/forward-auth"))
        .header("x-forwarded-method", method)
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", host)
        .header("x-forwarded-uri", uri)
        .header("accept", accept);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.expect("forward-auth")
}

async fn whoami(base: &str, cookie: Option<&str>) -> Response {
    let mut request = proxy().get(format!("{base}/api/whoami"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.expect("whoami")
}

async fn json(response: Response) -> serde_json::Value {
    serde_json::from_str(&response.text().await.expect("body")).expect("json")
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// What every forward-auth answer carries, whatever its status.
fn assert_no_store_and_no_cookie(response: &Response) {
    assert_eq!(header(response, "cache-control"), Some("no-store"));
    assert!(
        response.headers().get("set-cookie").is_none(),
        "a check never sets a cookie: {:?}",
        response.headers()
    );
}

/// A signed-in browser and its `Cookie` header value.
async fn signed_in(app: &TestApp) -> (Browser, String, uuid::Uuid) {
    let id = app.create_user(EMAIL, PASSWORD).await;
    let browser = app.browser();
    assert_status(
        &browser.sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let cookie = format!(
        "latchkey_session={}",
        browser.session_cookie().expect("a session cookie")
    );
    (browser, cookie, id)
}

#[tokio::test]
async fn a_signed_in_session_passes_with_remote_user_and_remote_email() {
    let app = spawn().await;
    let (_browser, cookie, id) = signed_in(&app).await;

    let nginx = auth_request(&app.base, Some(APP_URL), Some(&cookie)).await;
    assert_status(&nginx, StatusCode::OK);
    assert_eq!(header(&nginx, "remote-user"), Some(id.to_string().as_str()));
    assert_eq!(header(&nginx, "remote-email"), Some(EMAIL));
    assert_no_store_and_no_cookie(&nginx);

    let traefik = forward_auth(
        &app.base,
        "POST",
        "application/json",
        "wiki.apps.example.com:8443",
        "/api/x",
        Some(&cookie),
    )
    .await;
    assert_status(&traefik, StatusCode::OK);
    assert_eq!(
        header(&traefik, "remote-user"),
        Some(id.to_string().as_str())
    );
    assert_eq!(header(&traefik, "remote-email"), Some(EMAIL));
    assert_no_store_and_no_cookie(&traefik);

    let me = whoami(&app.base, Some(&cookie)).await;
    assert_status(&me, StatusCode::OK);
    assert_no_store_and_no_cookie(&me);
    let body: serde_json::Value = json(me).await;
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["email"], EMAIL);
    assert_eq!(body["two_factor"], false);
    let signed_in_at = body["signed_in_at"].as_str().expect("signed_in_at");
    let at =
        time::OffsetDateTime::parse(signed_in_at, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
    assert!((time::OffsetDateTime::now_utc() - at).whole_seconds().abs() < 120);
}

#[tokio::test]
async fn a_forged_remote_email_from_the_client_never_matters() {
    let app = spawn().await;
    let (_browser, cookie, _) = signed_in(&app).await;
    for cookie in [None, Some(cookie.as_str())] {
        let nginx = proxy()
            .get(format!("{}/api/authz/auth-request", app.base))
            .header("x-original-url", APP_URL)
            .header("remote-email", "boss@example.com")
            .header("remote-user", "00000000-0000-0000-0000-000000000000")
            .header("cookie", cookie.unwrap_or(""))
            .send()
            .await
            .expect("auth-request");
        let me = proxy()
            .get(format!("{}/api/whoami", app.base))
            .header("remote-email", "boss@example.com")
            .header("cookie", cookie.unwrap_or(""))
            .send()
            .await
            .expect("whoami");
        match cookie {
            None => {
                assert_status(&nginx, StatusCode::UNAUTHORIZED);
                assert_eq!(header(&nginx, "remote-email"), None);
                assert_status(&me, StatusCode::UNAUTHORIZED);
            }
            Some(_) => {
                assert_eq!(header(&nginx, "remote-email"), Some(EMAIL));
                assert_ne!(
                    header(&nginx, "remote-user"),
                    Some("00000000-0000-0000-0000-000000000000")
                );
                let body: serde_json::Value = json(me).await;
                assert_eq!(body["email"], EMAIL);
            }
        }
    }
}

#[tokio::test]
async fn strangers_are_sent_to_sign_in_with_the_original_url_percent_encoded() {
    let app = spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let expected = format!(
        "{}/sign-in?next=http%3A%2F%2Fapp.example.com%2Fwiki%2Fpage%3Fx%3D1%26y%3Dtwo",
        app.base
    );
    for cookie in [
        None,
        Some("latchkey_session=AAAAAAAAAAAAAAAAAAAAAA"),
        Some("latchkey_session=not-a-session-id-at-all"),
        Some("other=1; latchkey_session=Zm9vYmFyYmF6cXV4cXV1dQ"),
    ] {
        let nginx = auth_request(&app.base, Some(APP_URL), cookie).await;
        assert_status(&nginx, StatusCode::UNAUTHORIZED);
        assert_eq!(header(&nginx, "location"), Some(expected.as_str()));
        assert_eq!(header(&nginx, "remote-user"), None);
        assert_no_store_and_no_cookie(&nginx);

        let page = forward_auth(
            &app.base,
            "GET",
            "text/html,application/xhtml+xml",
            "app.example.com",
            "/wiki/page?x=1&y=two",
            cookie,
        )
        .await;
        assert_status(&page, StatusCode::FOUND);
        assert_eq!(header(&page, "location"), Some(expected.as_str()));
        assert_no_store_and_no_cookie(&page);

        for (method, accept) in [("GET", "application/json"), ("POST", "text/html")] {
            let api = forward_auth(&app.base, method, accept, "app.example.com", "/", cookie).await;
            assert_status(&api, StatusCode::UNAUTHORIZED);
            assert_no_store_and_no_cookie(&api);
        }

        let me = whoami(&app.base, cookie).await;
        assert_status(&me, StatusCode::UNAUTHORIZED);
        assert_no_store_and_no_cookie(&me);
        let body: serde_json::Value = json(me).await;
        assert_eq!(body, serde_json::json!({ "error": "not signed in" }));
    }
}

#[tokio::test]
async fn a_missing_or_malformed_original_url_is_400_and_a_host_not_allowed_is_403() {
    let app = spawn().await;
    let (_browser, cookie, _) = signed_in(&app).await;
    for malformed in [
        None,
        Some(""),
        Some("/wiki/page"),
        Some("app.example.com/wiki"),
        Some("ftp://app.example.com/"),
        Some("http://user:pw@app.example.com/"),
        Some("http://app.example.com:99x/"),
        Some("http:app.example.com/"),
        Some("http://app.example.com\\@evil.com/"),
    ] {
        let response = auth_request(&app.base, malformed, Some(&cookie)).await;
        assert_status(&response, StatusCode::BAD_REQUEST);
        assert_eq!(header(&response, "remote-user"), None);
        assert_no_store_and_no_cookie(&response);
    }
    for foreign in [
        "http://evil.com/",
        "http://app.example.com.evil.com/",
        "http://evil.com#@app.example.com",
        "http://apps.example.com/",
        "http://xn--pp-example-9db.com/",
    ] {
        let response = auth_request(&app.base, Some(foreign), Some(&cookie)).await;
        assert_status(&response, StatusCode::FORBIDDEN);
        assert_eq!(
            header(&response, "location"),
            None,
            "{foreign}: never a redirect"
        );
        assert_eq!(header(&response, "remote-user"), None);
        assert_no_store_and_no_cookie(&response);
        let stranger = auth_request(&app.base, Some(foreign), None).await;
        assert_status(&stranger, StatusCode::FORBIDDEN);
        assert_eq!(header(&stranger, "location"), None);
    }
    let traefik = forward_auth(&app.base, "GET", "text/html", "evil.com", "/", None).await;
    assert_status(&traefik, StatusCode::FORBIDDEN);
    let no_host = proxy()
        .get(format!("{}/api/authz/forward-auth", app.base))
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-uri", "/")
        .send()
        .await
        .expect("forward-auth");
    assert_status(&no_host, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn forwarding_headers_from_a_peer_outside_trusted_proxies_get_403() {
    let app = spawn().await;
    let (_browser, cookie, _) = signed_in(&app).await;
    let outsider = proxy_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    for cookie in [None, Some(cookie.as_str())] {
        let nginx = auth_request_from(&outsider, &app.base, Some(APP_URL), cookie).await;
        assert_status(&nginx, StatusCode::FORBIDDEN);
        assert_eq!(header(&nginx, "remote-user"), None);
        assert_no_store_and_no_cookie(&nginx);
        let traefik = outsider
            .get(format!("{}/api/authz/forward-auth", app.base))
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", "app.example.com")
            .header("x-forwarded-uri", "/")
            .header("cookie", cookie.unwrap_or(""))
            .send()
            .await
            .expect("forward-auth");
        assert_status(&traefik, StatusCode::FORBIDDEN);
        assert_eq!(header(&traefik, "remote-user"), None);
    }
    // whoami reads only the cookie: an application may ask from anywhere.
    let me = outsider
        .get(format!("{}/api/whoami", app.base))
        .header("cookie", &cookie)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .expect("whoami");
    assert_status(&me, StatusCode::OK);
}

#[tokio::test]
async fn a_proxy_in_a_configured_network_is_believed() {
    let app = TestApp::spawn_with(|c| {
        c.allowed_hosts = vec!["app.example.com".into()];
        c.trusted_proxies = vec!["127.0.0.0/29".into()];
    })
    .await;
    let from_two = proxy_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let from_nine = proxy_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)));
    let inside = auth_request_from(&from_two, &app.base, Some(APP_URL), None).await;
    assert_status(&inside, StatusCode::UNAUTHORIZED);
    let outside = auth_request_from(&from_nine, &app.base, Some(APP_URL), None).await;
    assert_status(&outside, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn half_signed_in_sessions_do_not_pass_and_next_survives_the_second_step() {
    let app = spawn().await;
    let (_first, secret, _) = enabled(&app, EMAIL).await;
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let response = browser
        .client
        .post(browser.url("/sign-in"))
        .form(&[
            ("email", EMAIL),
            ("password", PASSWORD),
            ("next", APP_URL),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .expect("POST");
    assert_eq!(location(&response), "/sign-in/two-factor");
    let half = format!(
        "latchkey_session={}",
        browser.session_cookie().expect("cookie")
    );
    assert_status(
        &auth_request(&app.base, Some(APP_URL), Some(&half)).await,
        StatusCode::UNAUTHORIZED,
    );
    assert_status(
        &whoami(&app.base, Some(&half)).await,
        StatusCode::UNAUTHORIZED,
    );

    let done = browser.second_step(&code_at(&secret, 1)).await;
    assert_status(&done, StatusCode::SEE_OTHER);
    assert_eq!(
        location(&done),
        "http://app.example.com/wiki/page?x=1&y=two"
    );
    let full = format!(
        "latchkey_session={}",
        browser.session_cookie().expect("cookie")
    );
    assert_status(
        &auth_request(&app.base, Some(APP_URL), Some(&full)).await,
        StatusCode::OK,
    );
    let body: serde_json::Value = json(whoami(&app.base, Some(&full)).await).await;
    assert_eq!(body["two_factor"], true);
}

#[tokio::test]
async fn next_leads_back_to_allowed_hosts_only_through_sign_in_and_sign_out() {
    let app = spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let allowed = [
        (APP_URL, APP_URL),
        (
            "http://deep.wiki.apps.example.com:8080/x",
            "http://deep.wiki.apps.example.com:8080/x",
        ),
        ("/settings/security", "/settings/security"),
    ];
    let refused = [
        "http://evil.com/",
        "http://app.example.com.evil.com/",
        "http://evil.com#@app.example.com",
        "http://app.example.com@evil.com/",
        "http://user@app.example.com/",
        "http://app.example.com:80@evil.com/",
        "http://xn--pp-example-9db.com/",
        "http://äpp.example.com/",
        "http:\\\\app.example.com/",
        "http:/\\evil.com/",
        "//evil.com",
        "/\\evil.com",
        "https:evil.com",
        "javascript:alert(1)",
        "http://apps.example.com/",
    ];
    for (next, expected) in allowed
        .iter()
        .copied()
        .chain(refused.iter().map(|r| (*r, "/")))
    {
        let browser = app.browser();
        let page = browser
            .get(&format!(
                "/sign-in?next={}",
                url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            ))
            .await
            .text()
            .await
            .expect("page");
        let token = csrf_in(&page).expect("token");
        let response = browser
            .client
            .post(browser.url("/sign-in"))
            .form(&[
                ("email", EMAIL),
                ("password", PASSWORD),
                ("next", next),
                ("csrf_token", &token),
            ])
            .send()
            .await
            .expect("POST");
        assert_status(&response, StatusCode::SEE_OTHER);
        assert_eq!(location(&response), expected, "sign-in next={next:?}");

        let out = browser.submit("/", "/sign-out", &[("next", next)]).await;
        assert_status(&out, StatusCode::SEE_OTHER);
        let after_out = if expected == "/" {
            "/sign-in?notice=signed-out"
        } else {
            expected
        };
        assert_eq!(location(&out), after_out, "sign-out next={next:?}");
    }
    // The query works for sign-out too.
    let browser = app.browser();
    browser.sign_in(EMAIL, PASSWORD).await;
    let cookie = format!(
        "latchkey_session={}",
        browser.session_cookie().expect("cookie")
    );
    let token = browser.csrf_token("/").await;
    let out = browser
        .client
        .post(browser.url("/sign-out?next=http%3A%2F%2Fapp.example.com%2Fbye"))
        .form(&[("csrf_token", &token)])
        .send()
        .await
        .expect("POST");
    assert_eq!(location(&out), "http://app.example.com/bye");
    assert_status(
        &auth_request(&app.base, Some(APP_URL), Some(&cookie)).await,
        StatusCode::UNAUTHORIZED,
    );
}

#[tokio::test]
async fn an_https_public_url_refuses_an_http_next() {
    let app = TestApp::spawn_with(|c| {
        c.allowed_hosts = vec!["app.example.com".into()];
        c.public_url = "https://auth.example.com".parse().expect("url");
    })
    .await;
    let page = app
        .browser()
        .get("/sign-in?next=http%3A%2F%2Fapp.example.com%2F")
        .await
        .text()
        .await
        .expect("page");
    assert!(!page.contains("app.example.com"), "an http next is dropped");
    let page = app
        .browser()
        .get("/sign-in?next=https%3A%2F%2Fapp.example.com%2Fx")
        .await
        .text()
        .await
        .expect("page");
    assert!(
        page.contains("value=\"https://app.example.com/x\""),
        "{page}"
    );
}

/// Polls `check` until it answers `refused`; how long after `since` that took.
async fn refused_within(since: Instant, mut check: impl AsyncFnMut() -> StatusCode) -> Duration {
    loop {
        if check().await == StatusCode::UNAUTHORIZED {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still accepted 5 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_sign_out_on_one_instance_is_refused_by_the_other_within_a_second() {
    let app = spawn().await;
    let sibling = app.spawn_sibling().await;
    let (browser, cookie, _) = signed_in(&app).await;
    // The sibling has seen (and may remember) the session.
    for _ in 0..5 {
        assert_status(
            &auth_request(&sibling.base, Some(APP_URL), Some(&cookie)).await,
            StatusCode::OK,
        );
    }
    assert_status(&browser.sign_out().await, StatusCode::SEE_OTHER);
    let answered = Instant::now();
    let took = refused_within(answered, async || {
        auth_request(&sibling.base, Some(APP_URL), Some(&cookie))
            .await
            .status()
    })
    .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // And on the instance that signed out, at once.
    assert_status(
        &auth_request(&app.base, Some(APP_URL), Some(&cookie)).await,
        StatusCode::UNAUTHORIZED,
    );
}

#[tokio::test]
async fn sign_out_other_sessions_and_a_password_change_reach_the_other_instance_within_a_second() {
    let app = spawn().await;
    let sibling = app.spawn_sibling().await;
    let (browser, _, _) = signed_in(&app).await;
    let other = app.browser();
    other.sign_in(EMAIL, PASSWORD).await;
    let other_cookie = format!(
        "latchkey_session={}",
        other.session_cookie().expect("cookie")
    );
    assert_status(
        &auth_request(&sibling.base, Some(APP_URL), Some(&other_cookie)).await,
        StatusCode::OK,
    );
    assert_status(
        &browser.sign_out_other_sessions().await,
        StatusCode::SEE_OTHER,
    );
    let took = refused_within(Instant::now(), async || {
        auth_request(&sibling.base, Some(APP_URL), Some(&other_cookie))
            .await
            .status()
    })
    .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // A change from one browser ends the other's session everywhere.
    let third = app.browser();
    third.sign_in(EMAIL, PASSWORD).await;
    let third_cookie = format!(
        "latchkey_session={}",
        third.session_cookie().expect("cookie")
    );
    assert_status(
        &whoami(&sibling.base, Some(&third_cookie)).await,
        StatusCode::OK,
    );
    let changed = browser
        .change_password(PASSWORD, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_status(&changed, StatusCode::SEE_OTHER);
    let took = refused_within(Instant::now(), async || {
        whoami(&sibling.base, Some(&third_cookie)).await.status()
    })
    .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// Every row's version (xmin) and the row counts of the tables a check could touch.
async fn database_writes_fingerprint(app: &TestApp) -> String {
    let (fingerprint,): (String,) = sqlx::query_as(
        "select concat_ws('|',
             (select string_agg(xmin::text || ':' || last_seen_at::text, ',' order by id_hash) from sessions),
             (select string_agg(xmin::text, ',' order by id) from users),
             (select count(*) from audit_events), (select count(*) from sessions),
             (select count(*) from outbox), (select count(*) from ip_throttle),
             (select count(*) from login_throttle))",
    )
    .fetch_one(&app.pool)
    .await
    .expect("fingerprint");
    fingerprint
}

#[tokio::test]
async fn checks_write_no_rows() {
    let app = spawn().await;
    let (_browser, cookie, _) = signed_in(&app).await;
    let sibling = app.spawn_sibling().await;
    let before = database_writes_fingerprint(&app).await;
    for i in 0..50 {
        let base = if i % 2 == 0 { &app.base } else { &sibling.base };
        assert_status(
            &auth_request(base, Some(APP_URL), Some(&cookie)).await,
            StatusCode::OK,
        );
        assert_status(&whoami(base, Some(&cookie)).await, StatusCode::OK);
        assert_status(
            &auth_request(
                base,
                Some(APP_URL),
                Some("latchkey_session=AAAAAAAAAAAAAAAAAAAAAA"),
            )
            .await,
            StatusCode::UNAUTHORIZED,
        );
        if i % 10 == 0 {
            // Past the cache, so the reads really happen.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(database_writes_fingerprint(&app).await, before);
}

#[tokio::test]
async fn last_active_is_still_refreshed_by_checks_at_most_once_a_minute() {
    let app = spawn().await;
    let (_browser, cookie, _) = signed_in(&app).await;
    sqlx::query("update sessions set last_seen_at = now() - interval '5 minutes'")
        .execute(&app.pool)
        .await
        .expect("age the session");
    for _ in 0..3 {
        assert_status(
            &auth_request(&app.base, Some(APP_URL), Some(&cookie)).await,
            StatusCode::OK,
        );
    }
    assert_eq!(
        app.count("select count(*) from sessions where last_seen_at > now() - interval '1 minute'")
            .await,
        1
    );
}

#[tokio::test]
async fn the_session_cookie_goes_on_cookie_domain_and_the_csrf_cookie_stays_host_only() {
    for (public_url, domain, session_name) in [
        (
            "https://auth.example.com",
            Some("example.com"),
            "__Secure-latchkey_session",
        ),
        ("https://auth.example.com", None, "__Host-latchkey_session"),
        (
            "http://auth.example.com",
            Some("example.com"),
            "latchkey_session",
        ),
    ] {
        let app = TestApp::spawn_with(|c| {
            c.public_url = public_url.parse().expect("url");
            c.cookie_domain = domain.map(str::to_owned);
        })
        .await;
        app.create_user(EMAIL, PASSWORD).await;
        // A client without a jar: Secure cookies are sent by hand over the test's http.
        let client = proxy();
        let page = client
            .get(format!("{}/sign-in", app.base))
            .send()
            .await
            .expect("GET");
        let csrf_cookie = set_cookies(&page)
            .into_iter()
            .find(|c| c.contains("latchkey_csrf="))
            .expect("csrf cookie");
        assert!(
            !csrf_cookie.to_ascii_lowercase().contains("domain="),
            "{csrf_cookie}"
        );
        let csrf_pair = csrf_cookie.split(';').next().expect("pair").to_owned();
        let token = csrf_in(&page.text().await.expect("body")).expect("token");
        let response = client
            .post(format!("{}/sign-in", app.base))
            .header("cookie", &csrf_pair)
            .form(&[
                ("email", EMAIL),
                ("password", PASSWORD),
                ("csrf_token", &token),
            ])
            .send()
            .await
            .expect("POST");
        assert_status(&response, StatusCode::SEE_OTHER);
        let session = set_cookies(&response)
            .into_iter()
            .find(|c| c.contains("latchkey_session="))
            .expect("session cookie");
        assert!(
            session.starts_with(&format!("{session_name}=")),
            "{session}"
        );
        let lower = session.to_ascii_lowercase();
        match domain {
            Some(domain) => assert!(lower.contains(&format!("domain={domain}")), "{session}"),
            None => assert!(!lower.contains("domain="), "{session}"),
        }
        assert_eq!(
            lower.contains("secure"),
            public_url.starts_with("https"),
            "{session}"
        );
        assert!(
            lower.contains("httponly") && lower.contains("samesite=lax"),
            "{session}"
        );
        assert!(lower.contains("path=/"), "{session}");
    }
}

fn set_cookies(response: &Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn start_up_refuses_a_cookie_domain_that_is_not_a_parent_of_public_url() {
    for (public_url, domain) in [
        ("https://auth.example.com", "other.com"),
        ("https://auth.example.com", "ample.com"),
        ("https://auth.example.com", "app.example.com"),
        ("https://auth.example.com", "com"),
        ("http://127.0.0.1:8080", "0.0.1"),
        ("https://auth.example.com", "example.com/"),
    ] {
        let mut config = Config::defaults().expect("defaults");
        config.public_url = public_url.parse().expect("url");
        config.cookie_domain = Some(domain.to_owned());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let err = match Server::start(config, listener).await {
            Ok(_) => panic!("{domain:?} under {public_url} was accepted"),
            Err(err) => format!("{err:#}"),
        };
        assert!(err.contains("cookie_domain"), "{err}");
        assert!(err.contains("parent"), "{err}");
    }
}

#[tokio::test]
async fn start_up_refuses_allowed_hosts_and_trusted_proxies_that_do_not_parse() {
    for tweak in [
        (|c: &mut Config| c.allowed_hosts = vec!["https://app.example.com".into()])
            as fn(&mut Config),
        |c: &mut Config| c.trusted_proxies = vec!["localhost".into()],
    ] {
        let mut config = Config::defaults().expect("defaults");
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let err = match Server::start(config, listener).await {
            Ok(_) => panic!("accepted"),
            Err(err) => format!("{err:#}"),
        };
        assert!(
            err.contains("allowed_hosts") || err.contains("trusted_proxies"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn an_operators_disable_is_refused_by_both_instances_within_a_second() {
    use latchkey::auth::operator;
    let app = spawn().await;
    let sibling = app.spawn_sibling().await;
    let (_browser, cookie, _) = signed_in(&app).await;
    for base in [&app.base, &sibling.base] {
        assert_status(
            &auth_request(base, Some(APP_URL), Some(&cookie)).await,
            StatusCode::OK,
        );
    }
    operator::disable(&app.state().accounts, EMAIL, &operator::command_line())
        .await
        .expect("disable");
    let disabled = Instant::now();
    for base in [&app.base, &sibling.base] {
        let took = refused_within(disabled, async || {
            auth_request(base, Some(APP_URL), Some(&cookie))
                .await
                .status()
        })
        .await;
        assert!(took < Duration::from_secs(1), "{base}: took {took:?}");
    }
    let who = whoami(&sibling.base, Some(&cookie)).await;
    assert_status(&who, StatusCode::UNAUTHORIZED);
    // Enabling restores sign-in, not the session.
    operator::enable(&app.state().accounts, EMAIL, &operator::command_line())
        .await
        .expect("enable");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_status(
        &auth_request(&sibling.base, Some(APP_URL), Some(&cookie)).await,
        StatusCode::UNAUTHORIZED,
    );
}
