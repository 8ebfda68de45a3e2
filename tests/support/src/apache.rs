//! Debian's Apache with `libapache2-mod-auth-openidc` (`.ci/install-oidc-rp`) as a
//! relying party of latchkey, in front of the echo application: run in the foreground
//! under `deploy/apache/latchkey-oidc.conf` with only its `@…@` placeholders replaced,
//! on a loopback port, with its own ServerRoot, pid, logs and runtime directory. What an
//! operator copies is what the tests run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proxies::free_port;

pub const APACHE: &str = "/usr/sbin/apache2";
pub const MODULES: &str = "/usr/lib/apache2/modules";
pub const AUTH_OPENIDC: &str = "/usr/lib/apache2/modules/mod_auth_openidc.so";

/// The application's host name in the Apache tests: `localhost`, so that it is another
/// site than latchkey's `127.0.0.1` (cookies are per host, not per port) while latchkey
/// itself can still resolve it to post back-channel logout tokens.
pub const APP_HOST: &str = "localhost";

/// The path of mod_auth_openidc's redirect URI in the shipped file.
pub const CALLBACK_PATH: &str = "/oidc/callback";

/// Whether Apache and mod_auth_openidc are installed. Missing, the test fails under
/// `CI` (so CI cannot pass by skipping) and is skipped with a loud message otherwise.
pub fn installed(test: &str) -> bool {
    let missing: Vec<&str> = [APACHE, AUTH_OPENIDC]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {} not installed (run .ci/install-oidc-rp)",
        missing.join(", ")
    );
    eprintln!(
        "\n*** {test}: SKIPPED, {} not installed (run .ci/install-oidc-rp) ***\n",
        missing.join(", ")
    );
    false
}

/// The shipped site file.
pub fn shipped_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/apache/latchkey-oidc.conf")
}

/// What the site needs to know.
#[derive(Debug, Clone)]
pub struct Site {
    /// Apache's port on 127.0.0.1.
    pub port: u16,
    /// latchkey's public URL (the issuer), no trailing slash.
    pub latchkey_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Where the echo application listens.
    pub app_addr: SocketAddr,
}

impl Site {
    /// A site on a free port.
    pub fn on_free_port(
        latchkey_url: &str,
        client_id: &str,
        client_secret: &str,
        app_addr: SocketAddr,
    ) -> Site {
        Site {
            port: free_port(),
            latchkey_url: latchkey_url.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            app_addr,
        }
    }

    /// The application's public URL: `http://localhost:<port>`.
    pub fn app_url(&self) -> String {
        format!("http://{APP_HOST}:{}", self.port)
    }

    /// mod_auth_openidc's redirect URI (register it as the client's `--redirect-uri`).
    pub fn redirect_uri(&self) -> String {
        format!("{}{CALLBACK_PATH}", self.app_url())
    }

    /// Where latchkey posts logout tokens (the client's `--backchannel-logout-uri`).
    pub fn backchannel_logout_uri(&self) -> String {
        format!("{}?logout=backchannel", self.redirect_uri())
    }
}

/// `text` with each `@NAME@` replaced; every placeholder given must occur, and none may
/// be left over (a renamed one fails here, not as a puzzling Apache error).
pub fn substitute(text: &str, values: &[(&str, String)]) -> String {
    let mut out = text.to_owned();
    for (placeholder, value) in values {
        assert!(
            out.contains(placeholder),
            "{placeholder} is not in the shipped file"
        );
        out = out.replace(placeholder, value);
    }
    for line in out.lines() {
        let mut parts = line.split('@');
        parts.next();
        // "@NAME@": an upper-case name between two @ signs.
        for part in parts {
            assert!(
                part.is_empty() || !part.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "placeholder left in: {line}"
            );
        }
    }
    out
}

/// The shipped file with `site` put in.
pub fn shipped_config(site: &Site, crypto_passphrase: &str) -> String {
    let text = std::fs::read_to_string(shipped_file()).expect("deploy/apache/latchkey-oidc.conf");
    substitute(
        &text,
        &[
            ("@LISTEN@", format!("127.0.0.1:{}", site.port)),
            ("@APP_HOST@", APP_HOST.to_owned()),
            ("@APP_URL@", site.app_url()),
            ("@APP_ADDR@", site.app_addr.to_string()),
            ("@LATCHKEY_URL@", site.latchkey_url.clone()),
            ("@CLIENT_ID@", site.client_id.clone()),
            ("@CLIENT_SECRET@", site.client_secret.clone()),
            ("@CRYPTO_PASSPHRASE@", crypto_passphrase.to_owned()),
        ],
    )
}

/// A running Apache, stopped (and its scratch directory removed) when dropped.
pub struct Apache {
    pub site: Site,
    child: Child,
    dir: PathBuf,
}

impl Apache {
    /// Starts Apache under the shipped file for `site` and waits until it accepts
    /// connections.
    pub async fn start(site: Site) -> Apache {
        let dir =
            std::env::temp_dir().join(format!("latchkey-apache-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("run")).expect("apache scratch dir");
        let passphrase =
            uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
        std::fs::write(
            dir.join("latchkey-oidc.conf"),
            shipped_config(&site, &passphrase),
        )
        .expect("write the site");
        let main = dir.join("apache2.conf");
        std::fs::write(&main, apache_main(&dir, site.port)).expect("write apache2.conf");
        let log = std::fs::File::create(dir.join("output.log")).expect("apache log");
        let child = Command::new(APACHE)
            .arg("-f")
            .arg(&main)
            .arg("-DFOREGROUND")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("apache log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {APACHE}: {e}"));
        let mut apache = Apache { site, child, dir };
        apache.wait_listening().await;
        apache
    }

    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("apache2 exited at start ({status}):\n{}", self.logs());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.site.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "apache2 not listening on {} after 20 s:\n{}",
                self.site.port,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What Apache wrote to its output and error log (for failure messages).
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("output.log"), read("error.log"))
    }

    /// The access log: one line per request, with the status and REMOTE_USER.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        // SIGTERM lets the parent stop its children (a SIGKILLed parent leaves them
        // holding the port for a while); SIGKILL if it has not gone within 5 s.
        let pid = self.child.id() as libc::pid_t;
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Apache's main file around the shipped site file, as /etc/apache2/apache2.conf is
/// around sites-enabled/: the modules the site uses, one small event MPM, every path in
/// the scratch directory, and the access log with REMOTE_USER.
fn apache_main(dir: &Path, port: u16) -> String {
    let d = dir.display();
    let modules = [
        ("mpm_event_module", "mod_mpm_event.so"),
        ("authn_core_module", "mod_authn_core.so"),
        ("authz_core_module", "mod_authz_core.so"),
        // `Require valid-user`.
        ("authz_user_module", "mod_authz_user.so"),
        ("auth_openidc_module", "mod_auth_openidc.so"),
        ("proxy_module", "mod_proxy.so"),
        ("proxy_http_module", "mod_proxy_http.so"),
    ]
    .iter()
    .map(|(name, file)| format!("LoadModule {name} {MODULES}/{file}\n"))
    .collect::<String>();
    // Run as root (a container), Apache's children need a user to become.
    let user = if unsafe { libc::geteuid() } == 0 {
        "User nobody\nGroup nogroup\n"
    } else {
        ""
    };
    format!(
        "ServerRoot \"{d}\"
ServerName localhost
{user}
PidFile \"{d}/run/apache2.pid\"
DefaultRuntimeDir \"{d}/run\"
Mutex file:{d}/run default
ErrorLog \"{d}/error.log\"
LogLevel warn auth_openidc:info
LogFormat \"%h %u \\\"%r\\\" %>s\" latchkey
CustomLog \"{d}/access.log\" latchkey
{modules}StartServers 1
ServerLimit 1
ThreadsPerChild 25
MaxRequestWorkers 25
MinSpareThreads 5
MaxSpareThreads 25
Listen 127.0.0.1:{port}
Include \"{d}/latchkey-oidc.conf\"
"
    )
}

/// Runs the operator's `latchkey <args>` (the real binary) on `app`'s database, with
/// its secret key; panics unless it succeeds; returns its standard output.
pub fn latchkey(app: &crate::helpers::TestApp, args: &[&str]) -> String {
    use base64::Engine;
    let out = Command::new(crate::process::latchkey_binary())
        .args(args)
        .env("DATABASE_URL", &app.database_url)
        .env("LATCHKEY_PUBLIC_URL", &app.base)
        .env(
            "LATCHKEY_SECRET_KEY",
            base64::engine::general_purpose::STANDARD.encode([42u8; 32]),
        )
        .env("LATCHKEY_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run latchkey {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "latchkey {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs the operator's `latchkey oidc client add --id ID --name ID <args>` and returns
/// the secret it printed once (`None` for a `--public` client).
pub fn add_client(app: &crate::helpers::TestApp, id: &str, args: &[&str]) -> Option<String> {
    let mut all = vec!["oidc", "client", "add", "--id", id, "--name", id];
    all.extend_from_slice(args);
    let stdout = latchkey(app, &all);
    if args.contains(&"--public") {
        return None;
    }
    let secret = client_secret_in(&stdout)
        .unwrap_or_else(|| panic!("no client secret in the output of client add:\n{stdout}"));
    Some(secret)
}

/// The secret in `client add`'s output: the longest token of the line that names it (or
/// of the only line).
pub fn client_secret_in(stdout: &str) -> Option<String> {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let line = lines
        .iter()
        .find(|l| l.to_lowercase().contains("secret"))
        .or(if lines.len() == 1 {
            lines.first()
        } else {
            None
        })?;
    line.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
        .filter(|t| t.len() >= 20 && !t.contains(':'))
        .max_by_key(|t| t.len())
        .map(str::to_owned)
}

/// The client id the Apache stacks register.
pub const CLIENT_ID: &str = "apache";

/// latchkey (public URL `http://127.0.0.1:<port>`), the echo application, and Apache
/// with mod_auth_openidc in front of it at `http://localhost:<port>`, registered on
/// latchkey as the confidential client `apache` with its redirect URI, a
/// post-logout redirect URI (`<app>/`) and its back-channel logout URI.
pub struct OidcProtected {
    pub app: crate::helpers::TestApp,
    pub echo: crate::echo::EchoApp,
    pub apache: Apache,
}

impl OidcProtected {
    /// The stack with an RS256 client (the default).
    pub async fn start() -> OidcProtected {
        Self::start_signing("RS256").await
    }

    /// The stack with a client whose ID and logout tokens are signed with `alg` (RS256
    /// or ES256: mod_auth_openidc 2.4.12 cannot verify EdDSA).
    pub async fn start_signing(alg: &str) -> OidcProtected {
        let echo = crate::echo::EchoApp::start().await;
        let app = crate::helpers::TestApp::spawn().await;
        let site = Site::on_free_port(&app.base, CLIENT_ID, "", echo.addr);
        let secret = add_client(
            &app,
            CLIENT_ID,
            &[
                "--redirect-uri",
                &site.redirect_uri(),
                "--post-logout-redirect-uri",
                &format!("{}/", site.app_url()),
                "--backchannel-logout-uri",
                &site.backchannel_logout_uri(),
                "--signing-alg",
                alg,
            ],
        )
        .expect("a confidential client");
        let apache = Apache::start(Site {
            client_secret: secret,
            ..site
        })
        .await;
        OidcProtected { app, echo, apache }
    }
}
