//! End-to-end tests in headless Chromium (Debian's chromium + chromedriver, set up by
//! `.ci/setup-browser`). Each flow gets the real server in-process (the shared harness
//! of tests/support/: fresh Postgres database, real SMTP sink) and a fresh browser
//! profile, and is done by keyboard alone, once with JavaScript and once without. Every page is
//! checked for console errors, CSP violations and axe-core violations, and
//! photographed at 375 and 1280 px, light and dark, into `target/screenshots/`.
//!
//! `cargo test --test browser` runs them all, one browser at a time;
//! `cargo test --test browser -- two_factor` runs the flows whose name contains it.

mod driver;
mod flows;
mod page;
mod passkeys;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use driver::Driver;
use latchkey_test_support::helpers::{self, TestApp};
use page::{Page, Report};

const FLOWS: [&str; 11] = [
    "sign_in_and_out",
    "forgot_password",
    "change_password",
    "sign_out_other_sessions",
    "two_factor",
    "dead_ends",
    "forward_auth",
    "sign_up",
    "passkeys",
    "oidc_apache",
    "oidc",
];

async fn run_flow(name: &str, app: &TestApp, page: &Page, driver: &Driver) {
    match name {
        "sign_in_and_out" => flows::sign_in_and_out(app, page).await,
        "forgot_password" => flows::forgot_password(app, page).await,
        "change_password" => flows::change_password(app, page).await,
        "sign_out_other_sessions" => flows::sign_out_other_sessions(app, page, driver).await,
        "two_factor" => flows::two_factor(app, page).await,
        "dead_ends" => flows::dead_ends(app, page).await,
        "sign_up" => flows::sign_up(app, page).await,
        "passkeys" => passkeys::passkeys(app, page).await,
        "oidc" => flows::oidc(app, page).await,
        other => unreachable!("unknown flow {other}"),
    }
}

fn main() -> ExitCode {
    // Arguments libtest would take (--nocapture, --test-threads=…) are accepted and
    // ignored; anything else filters flows by name.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for flow in FLOWS {
            println!("{flow}: test");
        }
        return ExitCode::SUCCESS;
    }
    let mut filters: Vec<&String> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if [
            "--test-threads",
            "--skip",
            "--color",
            "--format",
            "--logfile",
            "-Z",
        ]
        .contains(&arg.as_str())
        {
            rest.next(); // the flag's value
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    let selected: Vec<(&str, bool)> = FLOWS
        .iter()
        .flat_map(|flow| [(*flow, true), (*flow, false)])
        .filter(|(flow, js)| {
            let full = format!("{flow}{}", if *js { "" } else { "_without_javascript" });
            filters.is_empty() || filters.iter().any(|f| full.contains(f.as_str()))
        })
        .collect();
    if selected.is_empty() {
        // `cargo test some_other_test` passes its filter here too.
        println!("\nrunning 0 browser flows\n\nbrowser test result: ok");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(selected))
}

async fn run(selected: Vec<(&'static str, bool)>) -> ExitCode {
    let started = Instant::now();
    let axe = Arc::new(driver::axe_source());
    let driver = Arc::new(Driver::start().await);
    let report = Arc::new(Mutex::new(Report::default()));
    let total = selected.len();
    println!("\nrunning {total} browser flows");
    let mut failed = Vec::new();
    for (flow, javascript) in selected {
        let label = format!(
            "{flow}{}",
            if javascript { "" } else { " (JavaScript off)" }
        );
        let flow_started = Instant::now();
        // forward_auth and oidc_apache open their own Chromium, once their stack is up.
        let client = if flow == "forward_auth" || flow == "oidc_apache" {
            None
        } else {
            Some(driver.session(javascript).await)
        };
        let closer = client.clone();
        let (axe, report, flow_driver) = (axe.clone(), report.clone(), driver.clone());
        let outcome = tokio::spawn(async move {
            let Some(client) = client else {
                if flow == "oidc_apache" {
                    flows::oidc_apache(&flow_driver, javascript, axe, report).await;
                } else {
                    flows::forward_auth(&flow_driver, javascript, axe, report).await;
                }
                return;
            };
            // Sign-up is closed by default; its flow runs with it open.
            let app = if flow == "sign_up" {
                TestApp::spawn_with(|c| c.sign_up = latchkey::config::SignUp::Open).await
            } else if flow == "passkeys" {
                // Passkeys need a domain name for their RP id, and localhost is a
                // secure context for the browser.
                TestApp::spawn_with(|c| {
                    let port = c.listen.port();
                    c.public_url = format!("http://localhost:{port}").parse().expect("url");
                })
                .await
            } else {
                TestApp::spawn().await
            };
            let base = if flow == "passkeys" {
                app.state()
                    .config
                    .public_url
                    .as_str()
                    .trim_end_matches('/')
                    .to_owned()
            } else {
                app.base.clone()
            };
            let page = Page::new(client, &base, javascript, axe, report).await;
            run_flow(flow, &app, &page, &flow_driver).await;
        })
        .await;
        if let Some(closer) = closer {
            let _ = closer.close().await;
        }
        let secs = flow_started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => println!("test {label} ... ok ({secs:.1} s)"),
            Err(e) => {
                println!("test {label} ... FAILED ({secs:.1} s)");
                if !e.is_panic() {
                    println!("  {e}");
                }
                failed.push(label);
            }
        }
    }
    drop(driver);

    let report = report.lock().expect("report");
    println!("\npages checked ({}):", report.pages.len());
    for (name, page) in &report.pages {
        // Reset links' tokens stay out of the output.
        let path = page.path.split("?token=").next().unwrap_or_default();
        println!("  {name:32} {path:40} {}", page.title);
        for line in &page.minor {
            println!("      axe: {line}");
        }
    }
    let counts: Vec<String> = ["critical", "serious", "moderate", "minor"]
        .iter()
        .map(|impact| {
            format!(
                "{impact} {}",
                report.axe_by_impact.get(*impact).copied().unwrap_or(0)
            )
        })
        .collect();
    println!("axe-core violations by impact: {}", counts.join(", "));
    println!(
        "{} screenshots in target/screenshots/; {:.1} s",
        report.screenshots,
        started.elapsed().as_secs_f64()
    );
    // The plain closing line CI reads in any language, besides libtest's own lines.
    println!(
        "\nbrowser: {} passed, {} failed",
        total - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        println!("browser test result: ok");
        ExitCode::SUCCESS
    } else {
        println!("browser test result: FAILED: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
