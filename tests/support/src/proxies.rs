//! The real nginx and Caddy from Debian's packages (`.ci/install-proxies`), run in the
//! foreground under the files shipped in `deploy/` with only their `@…@` placeholders
//! replaced, in front of latchkey and an application: what an operator copies is what
//! the tests run. Each has its own scratch directory for pid, logs, temp files and state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NGINX: &str = "/usr/sbin/nginx";
pub const CADDY: &str = "/usr/bin/caddy";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Caddy,
}

impl Kind {
    pub fn program(self) -> &'static str {
        match self {
            Kind::Nginx => NGINX,
            Kind::Caddy => CADDY,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Caddy => "caddy",
        }
    }

    /// The shipped file this proxy runs under.
    pub fn shipped_file(self) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        match self {
            Kind::Nginx => root.join("deploy/nginx/latchkey.conf"),
            Kind::Caddy => root.join("deploy/caddy/Caddyfile"),
        }
    }

    /// Whether this proxy is installed. Missing, it fails the test under `CI` (so CI
    /// cannot pass by skipping) and skips it with a loud message otherwise.
    pub fn installed(self, test: &str) -> bool {
        if Path::new(self.program()).exists() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {} not installed (run .ci/install-proxies)",
            self.program()
        );
        eprintln!(
            "\n*** {test}: SKIPPED, {} not installed (run .ci/install-proxies) ***\n",
            self.program()
        );
        false
    }
}

/// What the proxy serves: latchkey's host and the protected application's hosts, all
/// on one port of 127.0.0.1 (told apart by the Host header).
#[derive(Debug, Clone)]
pub struct Sites {
    pub port: u16,
    pub latchkey_host: String,
    /// The first is the application; every one is served as the protected application.
    pub app_hosts: Vec<String>,
    pub latchkey_addr: SocketAddr,
    pub app_addr: SocketAddr,
}

/// A free port on 127.0.0.1 (bound and let go: the proxy binds it next).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// `text` with each `(placeholder, value)` replaced; every placeholder must occur (a
/// renamed one fails here, not as a puzzling proxy error) and none may remain.
pub fn substitute(text: &str, values: &[(&str, String)]) -> String {
    let mut out = text.to_owned();
    for (placeholder, value) in values {
        assert!(
            out.contains(placeholder),
            "{placeholder} is not in the shipped file"
        );
        out = out.replace(placeholder, value);
    }
    let config_lines = out.lines().filter(|l| !l.trim_start().starts_with('#'));
    for line in config_lines {
        assert!(
            !line.contains("@LATCHKEY") && !line.contains("@APP") && !line.contains("@LISTEN"),
            "placeholder left in: {line}"
        );
    }
    out
}

/// The shipped file for `kind` with `sites` put in.
pub fn shipped_config(kind: Kind, sites: &Sites) -> String {
    let text = std::fs::read_to_string(kind.shipped_file()).expect("shipped proxy file");
    let port = sites.port;
    match kind {
        Kind::Nginx => substitute(
            &text,
            &[
                ("@LISTEN@", format!("127.0.0.1:{port}")),
                ("@LATCHKEY_HOST@", sites.latchkey_host.clone()),
                ("@APP_HOST@", sites.app_hosts.join(" ")),
                ("@LATCHKEY_ADDR@", sites.latchkey_addr.to_string()),
                ("@APP_ADDR@", sites.app_addr.to_string()),
            ],
        ),
        Kind::Caddy => substitute(
            &text,
            &[
                (
                    "@LATCHKEY_SITE@",
                    format!("http://{}:{port}", sites.latchkey_host),
                ),
                (
                    "@APP_SITE@",
                    sites
                        .app_hosts
                        .iter()
                        .map(|host| format!("http://{host}:{port}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                ("@LATCHKEY_ADDR@", sites.latchkey_addr.to_string()),
                ("@APP_ADDR@", sites.app_addr.to_string()),
            ],
        ),
    }
}

/// A running nginx or Caddy, killed (and its scratch directory removed) when dropped.
pub struct ReverseProxy {
    pub kind: Kind,
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl ReverseProxy {
    /// Starts `kind` under its shipped file for `sites` and waits until it accepts
    /// connections on `sites.port`.
    pub async fn start(kind: Kind, sites: &Sites) -> ReverseProxy {
        let dir = std::env::temp_dir().join(format!(
            "latchkey-{}-{}",
            kind.name(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("proxy scratch dir");
        let site = shipped_config(kind, sites);
        let log = std::fs::File::create(dir.join("output.log")).expect("proxy log");
        let mut command = match kind {
            Kind::Nginx => {
                std::fs::write(dir.join("latchkey.conf"), site).expect("write nginx site");
                std::fs::write(dir.join("nginx.conf"), nginx_main(&dir)).expect("nginx.conf");
                let mut command = Command::new(NGINX);
                command
                    .arg("-p")
                    .arg(&dir)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-c")
                    .arg(dir.join("nginx.conf"));
                command
            }
            Kind::Caddy => {
                // The test's own global options first (the shipped file has none): no
                // admin endpoint (two Caddys would fight over :2019); what it saves goes to
                // the scratch directory (XDG_CONFIG_HOME).
                let caddyfile = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}");
                std::fs::write(dir.join("Caddyfile"), caddyfile).expect("write Caddyfile");
                let mut command = Command::new(CADDY);
                command
                    .args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(dir.join("Caddyfile"))
                    .env("HOME", &dir)
                    .env("XDG_DATA_HOME", dir.join("data"))
                    .env("XDG_CONFIG_HOME", dir.join("config"));
                command
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("proxy log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", kind.name()));
        let mut proxy = ReverseProxy {
            kind,
            port: sites.port,
            child,
            dir,
        };
        proxy.wait_listening().await;
        proxy
    }

    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited at start ({status}):\n{}",
                    self.kind.name(),
                    self.logs()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening on {} after 20 s:\n{}",
                self.kind.name(),
                self.port,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the proxy has written to its output and error log (for failure messages).
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("output.log"), read("error.log"))
    }
}

impl Drop for ReverseProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx's main file around the shipped site file, as /etc/nginx/nginx.conf is around
/// conf.d/: one process in the foreground, every path in the scratch directory.
fn nginx_main(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/latchkey.conf;
}}
"
    )
}

/// latchkey's host name in the forward-auth tests.
pub const AUTH_HOST: &str = "auth.example.test";
/// The protected application's host name: in latchkey's `allowed_hosts`.
pub const APP_HOST: &str = "app.example.test";
/// Served by the proxy as the application too, but not in `allowed_hosts`.
pub const STRAY_HOST: &str = "stray.example.test";
/// latchkey's `cookie_domain`: the parent of all three.
pub const COOKIE_DOMAIN: &str = "example.test";

/// latchkey (public URL `http://auth.example.test:<port>`, `allowed_hosts =
/// app.example.test`, `cookie_domain = example.test`), the echo application, and nginx
/// or Caddy in front of both on `<port>` of 127.0.0.1, serving latchkey's host and
/// the application's two hosts. Clients resolve the names to 127.0.0.1 themselves.
pub struct Protected {
    pub app: crate::helpers::TestApp,
    pub echo: crate::echo::EchoApp,
    pub proxy: ReverseProxy,
}

impl Protected {
    pub async fn start(kind: Kind) -> Protected {
        let echo = crate::echo::EchoApp::start().await;
        let port = free_port();
        let app = crate::helpers::TestApp::spawn_with(|config| {
            config.public_url = format!("http://{AUTH_HOST}:{port}")
                .parse()
                .expect("public url");
            config.allowed_hosts = vec![APP_HOST.to_owned()];
            config.cookie_domain = Some(COOKIE_DOMAIN.to_owned());
            // The proxy's X-Forwarded-For is the client's address.
            config.trust_forwarded_for = true;
        })
        .await;
        let sites = Sites {
            port,
            latchkey_host: AUTH_HOST.to_owned(),
            app_hosts: vec![APP_HOST.to_owned(), STRAY_HOST.to_owned()],
            latchkey_addr: app.state().config.listen,
            app_addr: echo.addr,
        };
        let proxy = ReverseProxy::start(kind, &sites).await;
        Protected { app, echo, proxy }
    }

    /// `http://<host>:<port><path>` through the proxy.
    pub fn url_on(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.proxy.port)
    }

    /// latchkey's public base, through the proxy.
    pub fn auth_base(&self) -> String {
        self.url_on(AUTH_HOST, "")
    }
}
