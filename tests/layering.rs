//! The layers point one way: `main → cli → app → web → {auth, oidc} → {store, mail, domain}`.
//!
//! This reads the sources and fails when a lower layer names a higher one: `auth`,
//! `store`, `domain` and `mail` never reach `app` or `web` nor name the HTTP crates
//! (`axum`, `axum_extra`, `tower_sessions`); `store` never reaches `auth`; `domain`
//! uses nothing of the crate but itself (std and outside crates only).

use std::path::{Path, PathBuf};

/// What a module of `src/` may not name, and why.
struct Rule {
    /// The top-level module the rule applies to (`src/<layer>/`).
    layer: &'static str,
    /// Modules of this crate it must not reach (`crate::<module>`); `None` for "any but
    /// itself".
    forbidden_modules: Option<&'static [&'static str]>,
    /// Outside crates it must not name.
    forbidden_crates: &'static [&'static str],
}

const HTTP_CRATES: &[&str] = &[
    "axum",
    "axum_extra",
    "tower_sessions",
    "tower_http",
    "hyper",
];

const RULES: &[Rule] = &[
    Rule {
        layer: "auth",
        forbidden_modules: Some(&["app", "web", "cli"]),
        forbidden_crates: HTTP_CRATES,
    },
    Rule {
        layer: "oidc",
        forbidden_modules: Some(&["app", "web", "cli"]),
        forbidden_crates: HTTP_CRATES,
    },
    Rule {
        layer: "mail",
        forbidden_modules: Some(&["app", "web", "cli", "auth"]),
        forbidden_crates: HTTP_CRATES,
    },
    Rule {
        layer: "store",
        forbidden_modules: Some(&["app", "web", "cli", "auth", "mail", "oidc"]),
        forbidden_crates: HTTP_CRATES,
    },
    Rule {
        layer: "domain",
        forbidden_modules: None,
        forbidden_crates: HTTP_CRATES,
    },
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The line without its `//` comment (a `//` inside a string literal is rare enough in
/// these modules, and would only make the check stricter).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The first segment of every `crate::…` path in `code`, grouped imports
/// (`crate::{a, b::c}`) included.
fn crate_modules(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(is_ident) {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            items.push(item);
            for item in items {
                let name: String = item.trim().chars().take_while(|c| is_ident(*c)).collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            found.push(name);
        }
    }
    found
}

/// Whether `code` names the outside crate `name` (`name::…` or `use name;`).
fn names_crate(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = &code[at + name.len()..];
        !before.is_some_and(|c| is_ident(c) || c == ':')
            && (after.starts_with("::") || after.trim_start().starts_with(';'))
    })
}

/// Every import of a higher layer, as `file:line: what`.
fn violations() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for rule in RULES {
        let mut files = Vec::new();
        rust_files(&src.join(rule.layer), &mut files);
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read a source file");
            let shown = file
                .strip_prefix(&src)
                .unwrap_or(&file)
                .display()
                .to_string();
            // Multi-line grouped imports: join a `use` statement up to its `;`.
            let mut statement = String::new();
            let mut statement_line = 0;
            for (number, line) in text.lines().enumerate() {
                let code = code_of(line);
                if statement.is_empty() {
                    statement_line = number + 1;
                }
                statement.push_str(code);
                statement.push(' ');
                let open = statement.matches('{').count() > statement.matches('}').count();
                if statement.trim_start().starts_with("use ") && open && !code.contains(';') {
                    continue;
                }
                let code = std::mem::take(&mut statement);
                for module in crate_modules(&code) {
                    let forbidden = match rule.forbidden_modules {
                        Some(modules) => modules.contains(&module.as_str()),
                        None => module != rule.layer,
                    };
                    if forbidden {
                        found.push(format!(
                            "src/{shown}:{statement_line}: {} imports crate::{module}",
                            rule.layer
                        ));
                    }
                }
                for name in rule.forbidden_crates {
                    if names_crate(&code, name) {
                        found.push(format!(
                            "src/{shown}:{statement_line}: {} names {name}",
                            rule.layer
                        ));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let found = violations();
    assert!(
        found.is_empty(),
        "{} imports against the layering (main → cli → app → web → auth → {{store, mail, domain}}):\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_check_sees_grouped_and_plain_imports() {
    assert_eq!(crate_modules("use crate::app::AppState;"), ["app"]);
    assert_eq!(
        crate_modules("use crate::{db, store::users, web};"),
        ["db", "store", "web"]
    );
    assert_eq!(
        crate_modules("state: &crate::app::AppState, x: mycrate::web"),
        ["app"]
    );
    assert!(names_crate("use axum::Router;", "axum"));
    assert!(names_crate(
        "fn f(s: tower_sessions::Session)",
        "tower_sessions"
    ));
    assert!(!names_crate("use crate::web::axum_like;", "axum"));
    assert!(!names_crate("let axum_ish = 1;", "axum"));
}
