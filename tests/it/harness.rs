//! The harness tests itself: what the race tests rely on from `burst`.

use crate::burst::{RawRequest, burst, cookie_header, form_post, get, source, tally, target};

#[tokio::test]
async fn a_burst_reaches_the_server_from_several_source_addresses_at_once() {
    let app = crate::helpers::TestApp::spawn().await;
    app.create_user("alice@example.com", crate::helpers::PASSWORD)
        .await;
    // Eight browsers load the sign-in form first; then all eight post at once.
    let mut requests = Vec::new();
    for i in 0..8 {
        let browser = app.browser();
        let token = browser.csrf_token("/sign-in").await;
        let cookie = cookie_header(&browser, &app.base);
        let fields = [
            ("email", "alice@example.com"),
            ("password", crate::helpers::PASSWORD),
            ("csrf_token", token.as_str()),
        ];
        requests.push(RawRequest {
            source: source(i, 4),
            target: target(&app.base),
            bytes: form_post(&app.base, "/sign-in", &cookie, &fields),
        });
    }
    requests.push(RawRequest {
        source: source(0, 4),
        target: target(&app.base),
        bytes: get(&app.base, "/healthz", ""),
    });
    let answers = burst(requests).await;
    assert_eq!(tally(&answers), vec![(200, 1), (303, 8)], "{answers:?}");
    let mut sessions: Vec<String> = answers[..8]
        .iter()
        .map(|a| {
            assert_eq!(a.header("location"), Some("/"));
            a.set_cookie("latchkey_session").expect("a session cookie")
        })
        .collect();
    sessions.sort();
    sessions.dedup();
    assert_eq!(sessions.len(), 8, "each sign-in has its own session");
    assert_eq!(answers[8].body, "ok\n");
}
