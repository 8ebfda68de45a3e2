//! One browser tab as a person uses it: Tab and Enter on the focused element, typing
//! into it, and at every page a checkpoint that asserts what no page may have (console
//! errors, CSP violations, serious accessibility problems) and takes screenshots.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use fantoccini::key::Key;
use fantoccini::{Client, Locator};
use serde_json::{Value as Json, json};

use crate::driver::{cdp, console_log};

/// Listens for CSP violations from the first moment of every document.
const CSP_LISTENER: &str = r#"
window.__latchkeyCsp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__latchkeyCsp.push(e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') +
    ' at ' + e.sourceFile + ':' + e.lineNumber);
});
"#;

/// Widths every page is photographed at.
const WIDTHS: [u32; 2] = [375, 1280];

/// What the run found, across all flows: printed at the end.
#[derive(Default)]
pub struct Report {
    pub pages: BTreeMap<String, PageReport>,
    pub axe_by_impact: BTreeMap<String, usize>,
    pub screenshots: usize,
}

#[derive(Default, Clone)]
pub struct PageReport {
    pub path: String,
    pub title: String,
    /// "impact rule-id (nodes)" for every axe violation below serious.
    pub minor: Vec<String>,
}

pub struct Page {
    pub client: Client,
    pub base: String,
    pub javascript: bool,
    axe: Arc<String>,
    report: Arc<Mutex<Report>>,
    shots: PathBuf,
}

impl Page {
    pub async fn new(
        client: Client,
        base: &str,
        javascript: bool,
        axe: Arc<String>,
        report: Arc<Mutex<Report>>,
    ) -> Page {
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&shots).expect("target/screenshots");
        cdp(
            &client,
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": CSP_LISTENER }),
        )
        .await;
        // Start every page in light mode; checkpoints switch to dark and back.
        cdp(
            &client,
            "Emulation.setEmulatedMedia",
            json!({ "features": [] }),
        )
        .await;
        Page {
            client,
            base: base.to_owned(),
            javascript,
            axe,
            report,
            shots,
        }
    }

    /// A second browser for a flow: no checkpoints, so no DevTools set-up.
    pub fn plain(client: Client, base: &str, javascript: bool) -> Page {
        Page {
            client,
            base: base.to_owned(),
            javascript,
            axe: Arc::new(String::new()),
            report: Arc::new(Mutex::new(Report::default())),
            shots: PathBuf::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn goto(&self, path: &str) {
        self.client.goto(&self.url(path)).await.expect("goto");
        self.wait_loaded().await;
    }

    /// Opens an absolute URL (another host than `base`, e.g. a protected application).
    pub async fn goto_url(&self, url: &str) {
        self.client.goto(url).await.expect("goto");
        self.wait_loaded().await;
    }

    /// The whole current URL.
    pub async fn current_url(&self) -> String {
        self.client.current_url().await.expect("url").to_string()
    }

    async fn js(&self, script: &str) -> Json {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    async fn wait_loaded(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.js("return document.readyState").await != json!("complete") {
            assert!(Instant::now() < deadline, "page did not finish loading");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The path and query of the current URL.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The rendered text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.expect("text")
    }

    /// An attribute of the element matching `css` ("" when absent).
    pub async fn attr(&self, css: &str, name: &str) -> String {
        self.element(css)
            .await
            .attr(name)
            .await
            .expect("attr")
            .unwrap_or_default()
    }

    /// A DOM property of the element matching `css` (`value`, `textContent`, …).
    pub async fn prop(&self, css: &str, name: &str) -> String {
        self.element(css)
            .await
            .prop(name)
            .await
            .expect("prop")
            .unwrap_or_default()
    }

    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .len()
    }

    /// Waits (up to 10 s) until the element matching `css` shows `text`.
    pub async fn wait_for_text(&self, css: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.is_displayed(css).await && self.text(css).await.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {text:?} on {}",
                self.path().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .is_empty()
    }

    pub async fn is_displayed(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.is_displayed().await.expect("displayed"),
            Err(_) => false,
        }
    }

    /// Whether the focused element matches `css`.
    pub async fn focused_is(&self, css: &str) -> bool {
        let script = format!(
            "var a = document.activeElement; return !!a && a.matches({});",
            json!(css)
        );
        self.js(&script).await == json!(true)
    }

    /// A short description of the focused element, for failure messages.
    async fn focused(&self) -> String {
        let script = "var a = document.activeElement; if (!a) return 'nothing'; \
            return a.tagName.toLowerCase() + (a.id ? '#' + a.id : '') + \
            (a.getAttribute('href') ? '[href=' + a.getAttribute('href') + ']' : '') + \
            ' \"' + (a.textContent || a.value || '').trim().slice(0, 40) + '\"';";
        self.js(script).await.as_str().unwrap_or("?").to_owned()
    }

    async fn press(&self, key: Key) {
        let active = self.client.active_element().await.expect("active element");
        active.send_keys(&key.to_string()).await.expect("key");
    }

    /// Presses Tab until the element matching `css` has focus: it must be reachable by
    /// keyboard, and within a sensible number of stops.
    pub async fn tab_to(&self, css: &str) {
        let mut visited = Vec::new();
        for _ in 0..40 {
            self.press(Key::Tab).await;
            if self.focused_is(css).await {
                self.assert_focus_visible().await;
                return;
            }
            visited.push(self.focused().await);
        }
        panic!(
            "Tab never reached {css} on {}; focus went: {}",
            self.path().await,
            visited.join(" → ")
        );
    }

    /// The focused element shows a focus ring (outline) a sighted keyboard user sees.
    async fn assert_focus_visible(&self) {
        let script = "var a = document.activeElement; var s = getComputedStyle(a); \
            return [s.outlineStyle, s.outlineWidth, a.matches(':focus-visible')];";
        let style = self.js(script).await;
        let visible = style[2] == json!(true)
            && style[0] != json!("none")
            && style[1]
                .as_str()
                .and_then(|w| w.trim_end_matches("px").parse::<f64>().ok())
                .is_some_and(|w| w >= 2.0);
        assert!(
            visible,
            "focused {} on {} has no visible focus ring: {style}",
            self.focused().await,
            self.path().await
        );
    }

    /// Types into the focused element.
    pub async fn type_text(&self, text: &str) {
        let active = self.client.active_element().await.expect("active element");
        active.send_keys(text).await.expect("typing");
    }

    /// Tab to `css`, then type `text` there.
    pub async fn fill(&self, css: &str, text: &str) {
        self.tab_to(css).await;
        self.type_text(text).await;
    }

    /// Presses Enter on the focused element and waits for the next document to load.
    pub async fn enter_and_wait(&self) {
        let before = self.js("return performance.timeOrigin").await;
        self.press(Key::Enter).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(now) = self
                .client
                .execute(
                    "return [performance.timeOrigin, document.readyState]",
                    vec![],
                )
                .await
                && now[0] != before
                && now[1] == json!("complete")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Enter on {} loaded no new page",
                self.focused().await
            );
        }
    }

    /// Presses Enter on the focused element where no navigation is expected.
    pub async fn enter(&self) {
        self.press(Key::Enter).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Every page passes through here: the document title matches the heading, the
    /// console is clean, no CSP violation, axe finds nothing serious in light or dark
    /// mode, and the page is photographed at both widths in both colour schemes.
    pub async fn checkpoint(&self, name: &str) {
        self.wait_loaded().await;
        let path = self.path().await;
        let h1s = self.client.find_all(Locator::Css("h1")).await.expect("h1");
        assert_eq!(h1s.len(), 1, "{path} has {} h1 elements", h1s.len());
        let h1 = h1s[0].text().await.expect("h1 text");
        let title = self.client.title().await.expect("title");
        assert!(
            title == format!("{h1} – latchkey") || title == format!("Error: {h1} – latchkey"),
            "{path}: title {title:?} does not name the heading {h1:?}"
        );

        let name = if self.javascript {
            name.to_owned()
        } else {
            format!("nojs-{name}")
        };
        let mut minor = Vec::new();
        for dark in [false, true] {
            self.color_scheme(dark).await;
            for v in self.axe().await {
                let impact = v["impact"].as_str().unwrap_or("unknown").to_owned();
                let line = format!(
                    "{impact} {} ({} nodes{}): {}",
                    v["id"].as_str().unwrap_or("?"),
                    v["nodes"].as_array().map_or(0, Vec::len),
                    if dark { ", dark" } else { "" },
                    v["help"].as_str().unwrap_or("")
                );
                assert!(
                    impact != "serious" && impact != "critical",
                    "axe on {path} ({name}): {line}\n{}",
                    serde_json::to_string_pretty(&v["nodes"]).unwrap_or_default()
                );
                *self
                    .report
                    .lock()
                    .expect("report")
                    .axe_by_impact
                    .entry(impact)
                    .or_default() += 1;
                minor.push(line);
            }
            for width in WIDTHS {
                self.screenshot(&name, width, dark).await;
            }
        }
        self.color_scheme(false).await;
        self.assert_fits(320, &path).await;
        self.assert_clean_console(&path).await;

        let mut report = self.report.lock().expect("report");
        report.screenshots += WIDTHS.len() * 2;
        report.pages.insert(name, PageReport { path, title, minor });
    }

    /// Screenshots of an HTML email as a mail client would show it (light only: the
    /// mail declares `color-scheme: light`), opened from a file.
    pub async fn photograph_mail(&self, name: &str, html: &str) {
        let file = self.shots.join(format!("{name}.html"));
        std::fs::write(&file, html).expect("writing the mail");
        self.client
            .goto(&format!("file://{}", file.display()))
            .await
            .expect("opening the mail");
        self.wait_loaded().await;
        for width in WIDTHS {
            self.screenshot(name, width, false).await;
        }
        self.report.lock().expect("report").screenshots += WIDTHS.len();
    }

    async fn color_scheme(&self, dark: bool) {
        let features = if dark {
            json!([{ "name": "prefers-color-scheme", "value": "dark" }])
        } else {
            json!([{ "name": "prefers-color-scheme", "value": "light" }])
        };
        cdp(
            &self.client,
            "Emulation.setEmulatedMedia",
            json!({ "features": features }),
        )
        .await;
    }

    /// Runs axe-core on the document; returns its violations. axe runs asynchronously
    /// (timers, promises), which a page with JavaScript blocked never runs, so the
    /// JavaScript-off pass checks the same templates without it.
    async fn axe(&self) -> Vec<Json> {
        if !self.javascript {
            return Vec::new();
        }
        let loaded = self.js("return typeof window.axe === 'object'").await;
        if loaded != json!(true) {
            self.client
                .execute(&format!("{}\nreturn true;", self.axe), vec![])
                .await
                .expect("injecting axe-core");
        }
        let result = self
            .client
            .execute_async(
                "var done = arguments[arguments.length - 1];\
                 axe.run(document, { resultTypes: ['violations'] })\
                   .then(function (r) { done(JSON.stringify(r.violations)); })\
                   .catch(function (e) { done('error: ' + e); });",
                vec![],
            )
            .await
            .expect("running axe-core");
        let text = result.as_str().unwrap_or("error: no result");
        assert!(!text.starts_with("error:"), "axe-core failed: {text}");
        serde_json::from_str(text).expect("axe JSON")
    }

    /// Nothing sticks out sideways on the narrowest phones: the page needs no
    /// horizontal scrolling at `width` CSS pixels.
    async fn assert_fits(&self, width: u32, path: &str) {
        cdp(
            &self.client,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": 640, "deviceScaleFactor": 1, "mobile": true }),
        )
        .await;
        let scroll_width = self
            .js("return document.documentElement.scrollWidth")
            .await
            .as_u64()
            .unwrap_or(u64::MAX);
        cdp(
            &self.client,
            "Emulation.clearDeviceMetricsOverride",
            json!({}),
        )
        .await;
        assert!(
            scroll_width <= u64::from(width),
            "{path} is {scroll_width} px wide at a {width} px viewport"
        );
    }

    /// A full-page PNG at `width` CSS pixels.
    async fn screenshot(&self, name: &str, width: u32, dark: bool) {
        let mobile = width < 600;
        cdp(
            &self.client,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": 800, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
        let height = self
            .js("return Math.ceil(Math.max(document.documentElement.scrollHeight, document.body.scrollHeight))")
            .await
            .as_u64()
            .unwrap_or(800)
            .clamp(400, 6000);
        cdp(
            &self.client,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
        let shot = cdp(
            &self.client,
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": false }),
        )
        .await;
        cdp(
            &self.client,
            "Emulation.clearDeviceMetricsOverride",
            json!({}),
        )
        .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        let file = self.shots.join(format!(
            "{name}-{width}{}.png",
            if dark { "-dark" } else { "" }
        ));
        std::fs::write(&file, png).expect("writing a screenshot");
    }

    /// No console error and no CSP violation since the last checkpoint. Status codes
    /// the contract asks for (422 after a refused form, 410 for a used link) appear in
    /// the log as a failed "resource"; those are the only entries allowed.
    pub async fn assert_clean_console(&self, path: &str) {
        let mut problems = Vec::new();
        for entry in console_log(&self.client).await {
            let level = entry["level"].as_str().unwrap_or("");
            let message = entry["message"].as_str().unwrap_or("");
            let expected_status = entry["source"] == json!("network")
                && [400, 404, 410, 422, 429]
                    .iter()
                    .any(|s| message.contains(&format!("status of {s}")))
                && !message.contains("/static/");
            if (level == "SEVERE" || level == "WARNING") && !expected_status {
                problems.push(format!("{level}: {message}"));
            }
        }
        if self.javascript {
            let csp = self.js("return window.__latchkeyCsp || []").await;
            for v in csp.as_array().into_iter().flatten() {
                problems.push(format!("CSP: {}", v.as_str().unwrap_or("?")));
            }
        }
        assert!(
            problems.is_empty(),
            "{path}: console problems:\n{}",
            problems.join("\n")
        );
    }
}
