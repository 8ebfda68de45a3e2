//! How many statements a sign-in sends to Postgres, counted on the wire: the service
//! reaches its database through a proxy that reads the client's protocol messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

/// One statement executed: which proxied connection, and its SQL.
pub(crate) type Executed = Arc<Mutex<Vec<(usize, String)>>>;

/// Forwards to Postgres and records every statement each connection executes (a simple
/// `Query`, or an `Execute` of the statement last bound). TLS is off on this leg, so the
/// messages can be read.
async fn counting_proxy(upstream: SocketAddr) -> (SocketAddr, Executed) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let executed = Executed::default();
    let log = executed.clone();
    tokio::spawn(async move {
        let mut next_id = 0;
        while let Ok((client, _)) = listener.accept().await {
            next_id += 1;
            let (id, log) = (next_id, log.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let _ = relay_counting(&mut client_read, &mut server_write, id, &log).await;
            });
        }
    });
    (addr, executed)
}

async fn relay_counting(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    id: usize,
    log: &Executed,
) -> std::io::Result<()> {
    // Untyped start-up messages: an SSL or GSS request first (refused: TLS is off), then
    // the startup packet.
    loop {
        let len = from.read_u32().await?;
        let mut body = vec![0; len as usize - 4];
        from.read_exact(&mut body).await?;
        to.write_all(&len.to_be_bytes()).await?;
        to.write_all(&body).await?;
        let code = u32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
        if code != 80877103 && code != 80877104 {
            break;
        }
    }
    let mut prepared: HashMap<String, String> = HashMap::new();
    let mut bound = String::new();
    loop {
        let kind = from.read_u8().await?;
        let len = from.read_u32().await?;
        let mut body = vec![0; len as usize - 4];
        from.read_exact(&mut body).await?;
        to.write_all(&[kind]).await?;
        to.write_all(&len.to_be_bytes()).await?;
        to.write_all(&body).await?;
        let mut strings = body
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned());
        match kind {
            b'Q' => log
                .lock()
                .expect("log")
                .push((id, strings.next().unwrap_or_default())),
            b'P' => {
                let name = strings.next().unwrap_or_default();
                prepared.insert(name, strings.next().unwrap_or_default());
            }
            b'B' => {
                let _portal = strings.next();
                let name = strings.next().unwrap_or_default();
                bound = prepared.get(&name).cloned().unwrap_or_default();
            }
            b'E' => log.lock().expect("log").push((id, bound.clone())),
            _ => {}
        }
    }
}

/// The statements of the request, `log[window]`, leaving out the outbox worker's: its
/// poll runs every second on a pooled connection, in a transaction of its own, so any
/// statement of a transaction (`begin` … `commit` / `rollback`, found on the same
/// connection in the whole `log`, which may start before the window and end after it)
/// that touches the outbox is not the request's. sqlx sends the `rollback` of a dropped
/// transaction lazily, so the worker's can arrive well after its `select`.
pub(crate) fn of_the_request(
    log: &[(usize, String)],
    window: std::ops::Range<usize>,
) -> Vec<String> {
    let of_the_worker = |sql: &str| sql.contains("outbox");
    // Each statement's transaction, numbered in one pass over every connection's
    // statements: `begin` opens one, `commit` / `rollback` closes it (both belong to it).
    let mut open: HashMap<usize, usize> = HashMap::new();
    let mut transaction_of = Vec::with_capacity(log.len());
    for (at, (id, sql)) in log.iter().enumerate() {
        let word = sql.trim().to_ascii_lowercase();
        if word == "begin" {
            open.insert(*id, at);
        }
        transaction_of.push(open.get(id).copied());
        if matches!(word.as_str(), "commit" | "rollback") {
            open.remove(id);
        }
    }
    let workers: std::collections::HashSet<usize> = log
        .iter()
        .zip(&transaction_of)
        .filter_map(|((_, sql), tx)| tx.filter(|_| of_the_worker(sql)))
        .collect();
    window
        .filter(|at| {
            let sql = log[*at].1.as_str();
            let in_workers = transaction_of[*at].is_some_and(|tx| workers.contains(&tx));
            !of_the_worker(sql) && !in_workers
        })
        .map(|at| log[at].1.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The service, reaching Postgres through [`counting_proxy`], once its start-up
/// statements are done; `tweak` adjusts its settings.
pub(crate) async fn spawn_counted(
    tweak: impl FnOnce(&mut latchkey::config::Config),
) -> (TestApp, Executed) {
    let upstream: SocketAddr = {
        let url = url::Url::parse(&postgres_base()).expect("LATCHKEY_TEST_PG is a URL");
        let host = match url.host_str() {
            Some("localhost") | None => "127.0.0.1".to_owned(),
            Some(host) => host.to_owned(),
        };
        format!("{host}:{}", url.port().unwrap_or(5432))
            .parse()
            .expect("Postgres host is an IP address")
    };
    let (proxy, executed) = counting_proxy(upstream).await;
    let app = TestApp::spawn_with(|config| {
        let mut url = url::Url::parse(config.database_url.expose_secret()).expect("url");
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(proxy.port())).expect("port");
        url.query_pairs_mut().append_pair("sslmode", "disable");
        config.database_url = SecretString::from(url.to_string());
        tweak(config);
    })
    .await;
    // The sweep that runs at start-up ends with the outbox; the window opens after it.
    for _ in 0..100 {
        let swept = executed
            .lock()
            .expect("log")
            .iter()
            .any(|(_, sql)| sql.contains("delete from outbox"));
        if swept {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (app, executed)
}

/// Statements the POST /sign-in of `email` with `password` executes.
async fn statements_of_a_sign_in(ip_rate_limit: u32, email: &str, password: &str) -> Vec<String> {
    let (app, executed) = spawn_counted(|config| config.ip_rate_limit = ip_rate_limit).await;
    app.create_user("alice@example.com", PASSWORD).await;
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .cookie_store(true)
        .build()
        .expect("client");
    let page = client
        .get(format!("{}/sign-in", app.base))
        .send()
        .await
        .expect("GET");
    let token = csrf_in(&page.text().await.expect("body")).expect("csrf token");
    // Whatever start-up and the GET still had in flight settles first.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = executed.lock().expect("log").len();
    let response = client
        .post(format!("{}/sign-in", app.base))
        .header("origin", &app.base)
        .form(&[
            ("email", email),
            ("password", password),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .expect("POST");
    let status = response.status();
    let end = executed.lock().expect("log").len();
    // A worker transaction that began in the window ends just after it; its statements
    // must be in the log to be recognised as the worker's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = executed.lock().expect("log").clone();
    let expected = if password == PASSWORD {
        StatusCode::SEE_OTHER
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    assert_eq!(status, expected);
    of_the_request(&log, before..end)
}

#[tokio::test]
async fn a_sign_in_costs_at_most_three_statements() {
    for ip_rate_limit in [30, 0] {
        let statements =
            statements_of_a_sign_in(ip_rate_limit, "alice@example.com", PASSWORD).await;
        assert!(
            statements.len() <= 3,
            "ip_rate_limit {ip_rate_limit}: {} statements: {statements:#?}",
            statements.len()
        );
    }
}

#[tokio::test]
async fn a_failed_sign_in_costs_at_most_two_statements() {
    for email in ["alice@example.com", "nobody@example.com"] {
        let statements = statements_of_a_sign_in(30, email, "not the password at all").await;
        assert!(
            statements.len() <= 2,
            "{email}: {} statements: {statements:#?}",
            statements.len()
        );
    }
}
