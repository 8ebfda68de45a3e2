//! Real OpenID Connect relying parties against latchkey's provider, and the person in
//! the browser between them.
//!
//! - [`run_script`] runs one of the Node scripts in `tests/oidc-rp/` (npm's
//!   `openid-client` and `oauth4webapi`, pinned in its package-lock.json and installed by
//!   `.ci/install-oidc-rp`) as a child process. Whenever the script needs a browser it
//!   prints `{"browser": URL, "as": …}`; the test walks that URL as a person (see
//!   [`walk`]) and writes back the URL the browser ended at; the script's last line is
//!   `{"result": …}` (or `{"error": …}`).
//! - [`walk`] follows a URL the way a browser without JavaScript would, through
//!   latchkey's sign-in, two-factor and consent pages, posting each form as it is
//!   written (hidden fields, CSRF token and the pressed button included), until it
//!   reaches where it was going.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use url::Url;

use crate::html_form::{self, Form};

/// The npm project with the relying parties (tests/oidc-rp).
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../oidc-rp")
}

/// Whether Node and the pinned npm packages are there. Missing, the test fails under
/// `CI` (CI must not pass by skipping) and is skipped with a loud message otherwise.
pub fn node_ready(test: &str) -> bool {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    let packages = ["openid-client", "oauth4webapi", "jose"].iter().all(|p| {
        scripts_dir()
            .join("node_modules")
            .join(p)
            .join("package.json")
            .is_file()
    });
    if node && packages {
        return true;
    }
    let what = if node {
        "tests/oidc-rp/node_modules is not installed"
    } else {
        "node is not installed"
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {what} (run .ci/install-oidc-rp)"
    );
    eprintln!("\n*** {test}: SKIPPED, {what} (run .ci/install-oidc-rp) ***\n");
    false
}

/// Who is at the browser when a script hands it a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The signed-in person, who presses **Allow** if asked.
    Allow,
    /// A person who presses **Deny** on the consent page.
    Deny,
    /// A browser with no latchkey session.
    Anonymous,
}

/// One `{"browser": …}` step of a script.
#[derive(Debug, Clone)]
pub struct BrowserStep {
    pub url: String,
    pub who: Who,
}

/// What a script found, or why it failed.
#[derive(Debug)]
pub struct ScriptOutcome {
    /// `{"result": …}`'s value, or `{"error": …}`'s.
    pub result: Result<Json, Json>,
    /// What the script wrote to stderr.
    pub stderr: String,
}

impl ScriptOutcome {
    /// The findings; panics with the script's error and stderr when it failed.
    pub fn findings(self) -> Json {
        match self.result {
            Ok(findings) => findings,
            Err(error) => panic!(
                "the relying party failed: {}\nstderr:\n{}",
                serde_json::to_string_pretty(&error).unwrap_or_default(),
                self.stderr
            ),
        }
    }
}

/// Runs `tests/oidc-rp/<script>` with `env`, answering each browser step with what
/// `browser` returns (the URL the browser ended at). Gives the script 120 s.
pub async fn run_script<F, Fut>(
    script: &str,
    env: &[(&str, String)],
    mut browser: F,
) -> ScriptOutcome
where
    F: FnMut(BrowserStep) -> Fut,
    Fut: Future<Output = String>,
{
    let mut command = tokio::process::Command::new("node");
    command
        .arg(script)
        .current_dir(scripts_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("node {script}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let talk = async {
        while let Some(line) = stdout.next_line().await.expect("read the script's output") {
            let message: Json = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("{script} printed a line that is not JSON ({e}): {line}")
            });
            if let Some(url) = message.get("browser").and_then(Json::as_str) {
                let who = match message.get("as").and_then(Json::as_str) {
                    Some("deny") => Who::Deny,
                    Some("anonymous") => Who::Anonymous,
                    _ => Who::Allow,
                };
                let landed = browser(BrowserStep {
                    url: url.to_owned(),
                    who,
                })
                .await;
                stdin
                    .write_all(format!("{landed}\n").as_bytes())
                    .await
                    .expect("answer the script");
                stdin.flush().await.expect("answer the script");
            } else if let Some(result) = message.get("result") {
                return Ok(result.clone());
            } else if let Some(error) = message.get("error") {
                return Err(error.clone());
            }
        }
        Err(Json::String(format!("{script} ended without a result")))
    };
    let result = tokio::time::timeout(Duration::from_secs(120), talk)
        .await
        .unwrap_or_else(|_| Err(Json::String(format!("{script} took more than 120 s"))));
    let _ = child.kill().await;
    let stderr = stderr_task.await.unwrap_or_default();
    ScriptOutcome { result, stderr }
}

/// A person who can sign in on latchkey's pages.
#[derive(Clone)]
pub struct Person {
    pub email: String,
    pub password: String,
    /// Gives a fresh two-factor code when latchkey asks for one.
    pub second_step: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

/// Which button to press on a consent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

/// Where a [`walk`] ended.
#[derive(Debug)]
pub struct Walked {
    /// The URL it arrived at (not fetched when `arrived` said so before fetching).
    pub url: String,
    /// The last answer fetched: `None` when it stopped before fetching `url`.
    pub status: Option<StatusCode>,
    pub body: String,
    /// The h1 of every latchkey page met on the way, in order.
    pub pages: Vec<String>,
}

enum Next {
    Get(String),
    Post(String, Vec<(String, String)>),
}

/// Follows `start` as a browser without JavaScript, acting on latchkey's pages (those
/// under `latchkey_base`): a sign-in or two-factor page is filled in for `person` (a walk
/// without one panics there), a consent page gets `decision`, a sign-out confirmation is
/// confirmed. It stops before fetching a URL for which `arrived` is true, at any answer
/// that is not latchkey's page to act on (an application's page, an error page), or
/// after 30 steps (panics). Every request says `Accept: text/html`, as a browser does.
pub async fn walk(
    client: &Client,
    latchkey_base: &str,
    start: &str,
    person: Option<&Person>,
    decision: Decision,
    arrived: impl Fn(&str) -> bool,
) -> Walked {
    let mut pages = Vec::new();
    let mut next = Next::Get(start.to_owned());
    for _ in 0..30 {
        let url = match &next {
            Next::Get(url) | Next::Post(url, _) => url.clone(),
        };
        if matches!(next, Next::Get(_)) && arrived(&url) {
            return Walked {
                url,
                status: None,
                body: String::new(),
                pages,
            };
        }
        let request = match &next {
            Next::Get(url) => client.get(url),
            Next::Post(url, form) => client.post(url).form(form),
        };
        let response = request
            .header(
                "Accept",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("{status} without Location from {url}"));
            next = Next::Get(resolve(&url, location));
            continue;
        }
        let body = response.text().await.unwrap_or_default();
        let on_latchkey = url.starts_with(latchkey_base);
        if !on_latchkey || !status.is_success() {
            return Walked {
                url,
                status: Some(status),
                body,
                pages,
            };
        }
        let title = h1_of(&body);
        let forms = html_form::forms(&body);
        let action = |form: &Form| {
            if form.action.is_empty() {
                url.clone()
            } else {
                resolve(&url, &form.action)
            }
        };
        if let Some(form) = forms
            .iter()
            .find(|f| f.has_field("email") && f.has_field("password"))
        {
            let person = person.unwrap_or_else(|| panic!("asked to sign in at {url}"));
            pages.push(title);
            let fields = form.submission(
                &[("email", &person.email), ("password", &person.password)],
                form.buttons.first(),
            );
            next = Next::Post(action(form), fields);
        } else if let Some(form) = forms.iter().find(|f| f.has_field("totp_code")) {
            let person = person.unwrap_or_else(|| panic!("asked for a second step at {url}"));
            let code = person
                .second_step
                .as_ref()
                .unwrap_or_else(|| panic!("asked for a two-factor code at {url}"))(
            );
            pages.push(title);
            let fields = form.submission(&[("totp_code", &code)], form.buttons.first());
            next = Next::Post(action(form), fields);
        } else if let Some((form, button)) = forms.iter().find_map(|f| {
            let wanted = match decision {
                Decision::Allow => "allow",
                Decision::Deny => "deny",
            };
            f.button("allow")
                .and(f.button("deny"))
                .and(f.button(wanted))
                .map(|b| (f, b))
        }) {
            pages.push(title);
            next = Next::Post(action(form), form.submission(&[], Some(button)));
        } else if let Some((form, button)) = forms
            .iter()
            .filter(|f| f.action != "/sign-out")
            .find_map(|f| {
                f.button("sign out")
                    .or_else(|| f.button("log out"))
                    .map(|b| (f, b))
            })
        {
            pages.push(title);
            next = Next::Post(action(form), form.submission(&[], Some(button)));
        } else {
            return Walked {
                url,
                status: Some(status),
                body,
                pages,
            };
        }
    }
    panic!("no end after 30 steps from {start}: {pages:?}");
}

/// `location` resolved against `base`, as a browser does.
pub fn resolve(base: &str, location: &str) -> String {
    Url::parse(base)
        .and_then(|b| b.join(location))
        .map(String::from)
        .unwrap_or_else(|_| location.to_owned())
}

/// The text of a page's first h1 (empty when it has none).
pub fn h1_of(page: &str) -> String {
    let Some(start) = page.find("<h1") else {
        return String::new();
    };
    let Some(open_end) = page[start..].find('>') else {
        return String::new();
    };
    let inner_start = start + open_end + 1;
    let inner_end = page[inner_start..]
        .find("</h1>")
        .map(|i| inner_start + i)
        .unwrap_or(page.len());
    html_form::text_of(&page[inner_start..inner_end])
}

/// The query parameter `name` of `url`, decoded.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
}
