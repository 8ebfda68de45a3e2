//! Headless Chromium through Debian's chromedriver: start the driver on a free port,
//! open browser sessions with a fresh profile, and the few DevTools commands the tests
//! need (full-page screenshots, dark mode, the console log).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value as Json, json};

const SETUP: &str = "run .ci/setup-browser (it installs Debian's chromium and chromium-driver and runs npm ci in tests/browser)";

/// The first of `names` found on PATH.
fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The repository's tests/browser directory.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// axe-core's source, from the npm project in tests/browser.
pub fn axe_source() -> String {
    let path = browser_dir().join("node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("axe-core is missing ({}: {e}): {SETUP}", path.display()))
}

/// A running chromedriver; killed on drop.
pub struct Driver {
    child: Child,
    url: String,
    chromium: PathBuf,
    profiles: PathBuf,
}

impl Driver {
    pub async fn start() -> Driver {
        let chromedriver = which(&["chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver is not on PATH: {SETUP}"));
        let chromium = which(&["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("chromium is not on PATH: {SETUP}"));
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("port").port()
        };
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}: {SETUP}", chromedriver.display()));
        let url = format!("http://127.0.0.1:{port}/");
        let status = format!("{url}status");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(&status).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {status} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profiles =
            std::env::temp_dir().join(format!("latchkey-browser-{}", std::process::id()));
        std::fs::create_dir_all(&profiles).expect("profiles dir");
        Driver {
            child,
            url,
            chromium,
            profiles,
        }
    }

    /// A new Chromium with a fresh profile; `javascript: false` blocks scripts for
    /// every site, as a person who turned JavaScript off would have it.
    pub async fn session(&self, javascript: bool) -> Client {
        self.session_with(javascript, &[]).await
    }

    /// As `session`, with `extra` Chromium switches (e.g. `--host-resolver-rules=…`).
    pub async fn session_with(&self, javascript: bool, extra: &[&str]) -> Client {
        let profile = self
            .profiles
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&profile).expect("profile dir");
        let mut prefs = json!({
            "credentials_enable_service": false,
            "profile.password_manager_enabled": false,
        });
        if !javascript {
            prefs["profile.managed_default_content_settings.javascript"] = json!(2);
        }
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-quic".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-default-apps".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|arg| (*arg).to_owned()))
            .collect();
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": self.chromium,
                "args": args,
                "prefs": prefs,
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        caps.insert("pageLoadStrategy".into(), json!("normal"));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver could not start Chromium: {e}: {SETUP}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profiles);
    }
}

/// A command on the current session that fantoccini has no method for.
#[derive(Debug)]
struct SessionCommand {
    path: &'static str,
    body: Json,
}

impl WebDriverCompatibleCommand for SessionCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

/// A Chrome DevTools Protocol command, through chromedriver.
pub async fn cdp(client: &Client, cmd: &str, params: Json) -> Json {
    client
        .issue_cmd(SessionCommand {
            path: "goog/cdp/execute",
            body: json!({ "cmd": cmd, "params": params }),
        })
        .await
        .unwrap_or_else(|e| panic!("CDP {cmd}: {e}"))
}

/// The browser console entries since the last call (chromedriver drains the log).
pub async fn console_log(client: &Client) -> Vec<Json> {
    match client
        .issue_cmd(SessionCommand {
            path: "se/log",
            body: json!({ "type": "browser" }),
        })
        .await
    {
        Ok(Json::Array(entries)) => entries,
        Ok(other) => panic!("unexpected browser log: {other}"),
        Err(e) => panic!("reading the browser log: {e}"),
    }
}
