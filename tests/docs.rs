//! The documentation keeps up with the code: every module under `src/` has its line in
//! `docs/architecture.md`, and every variable the configuration reads is in the table of
//! `docs/configuration.md`. A new module or setting without its documentation fails here.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {dir:?}: {e}"));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `src/…/x.rs` paths, relative to the repository.
fn modules() -> Vec<String> {
    let mut found = Vec::new();
    rust_files(&root().join("src"), &mut found);
    let mut modules: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .expect("under the repository")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    modules.sort();
    modules
}

/// The modules `architecture` does not name.
fn modules_missing_from(architecture: &str) -> Vec<String> {
    modules()
        .into_iter()
        .filter(|m| !architecture.contains(&format!("`{m}`")))
        .collect()
}

#[test]
fn every_module_is_named_in_the_architecture_page() {
    let missing = modules_missing_from(&read("docs/architecture.md"));
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name these modules (add a line each): {missing:?}"
    );
}

#[test]
fn the_module_check_notices_a_module_left_out() {
    let architecture = read("docs/architecture.md");
    let without_sign_in = architecture.replace("`src/web/sign_in.rs`", "");
    assert_eq!(
        modules_missing_from(&without_sign_in),
        vec!["src/web/sign_in.rs".to_owned()]
    );
}

/// The fields of `pub struct NAME { … }` in config.rs, with their types.
fn struct_fields(config_rs: &str, name: &str) -> Vec<(String, String)> {
    let start = config_rs
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("config.rs has no struct {name}"));
    let body = &config_rs[start..];
    let end = body.find("\n}").expect("the struct ends");
    let mut fields = Vec::new();
    // A field under `#[serde(skip)]` is not read from the configuration.
    let mut skipped = false;
    for line in body[..end].lines().skip(1) {
        let line = line.trim();
        if line.starts_with("#[serde(skip") {
            skipped = true;
            continue;
        }
        let Some((name, ty)) = line.strip_prefix("pub ").and_then(|f| f.split_once(':')) else {
            continue;
        };
        if !std::mem::take(&mut skipped) {
            fields.push((
                name.trim().to_owned(),
                ty.trim().trim_end_matches(',').to_owned(),
            ));
        }
    }
    fields
}

/// Every environment variable the configuration reads: the typed settings (figment maps
/// `LATCHKEY_SECTION__KEY` to `[section] key`), and any `LATCHKEY_…` the code names itself.
fn variables() -> BTreeSet<String> {
    let config_rs = read("src/config.rs");
    let mut variables = BTreeSet::new();
    for (name, ty) in struct_fields(&config_rs, "Config") {
        if name == "database_url" {
            variables.insert("DATABASE_URL".to_owned());
        } else if ty.ends_with("Config") {
            for (field, _) in struct_fields(&config_rs, &ty) {
                variables.insert(format!(
                    "LATCHKEY_{}__{}",
                    name.to_uppercase(),
                    field.to_uppercase()
                ));
            }
        } else {
            variables.insert(format!("LATCHKEY_{}", name.to_uppercase()));
        }
    }
    let mut sources = Vec::new();
    rust_files(&root().join("src"), &mut sources);
    for path in sources {
        let text = fs::read_to_string(&path).expect("a source file");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("LATCHKEY_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // A prefix the code builds names from (`LATCHKEY_SMTP_` …) is not a variable.
            if !name.ends_with('_') {
                variables.insert(name.clone());
            }
            rest = &rest[at + name.len()..];
        }
    }
    variables
}

/// Whether the configuration page documents `variable`: by its full name, or, for a
/// section's key, as `__KEY` on a row that names `LATCHKEY_SECTION__`.
fn documented(page: &str, variable: &str) -> bool {
    if page.contains(&format!("`{variable}`")) {
        return true;
    }
    let Some((section, key)) = variable.split_once("__") else {
        return false;
    };
    page.lines()
        .any(|line| line.contains(&format!("`{section}__")) && line.contains(&format!("`__{key}`")))
}

fn variables_missing_from(page: &str) -> Vec<String> {
    variables()
        .into_iter()
        .filter(|v| !documented(page, v))
        .collect()
}

#[test]
fn every_variable_is_in_the_configuration_table() {
    let missing = variables_missing_from(&read("docs/configuration.md"));
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document these variables: {missing:?}"
    );
}

#[test]
fn the_variable_check_notices_a_variable_left_out() {
    let page = read("docs/configuration.md").replace("`LATCHKEY_SIGN_UP_DOMAINS`", "");
    assert_eq!(
        variables_missing_from(&page),
        vec!["LATCHKEY_SIGN_UP_DOMAINS".to_owned()]
    );
    // A section's key, too.
    let page = read("docs/configuration.md").replace("`__QUEUE`", "");
    assert_eq!(
        variables_missing_from(&page),
        vec!["LATCHKEY_ARGON2__QUEUE".to_owned()]
    );
}

#[test]
fn the_readme_is_read_in_five_minutes() {
    let lines = read("README.md").lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines; keep it to 200 and move the rest to docs/"
    );
}

#[test]
fn the_documentation_stands_on_its_own() {
    let mut pages = vec!["README.md".to_owned()];
    for entry in fs::read_dir(root().join("docs")).expect("docs/") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(format!(
                "docs/{}",
                path.file_name().expect("a name").to_string_lossy()
            ));
        }
    }
    for page in pages {
        let text = read(&page);
        assert!(
            !text.contains("../shared"),
            "{page} sends readers outside the repository"
        );
        // Every relative link to another page or image resolves.
        let base = Path::new(&page).parent().unwrap_or(Path::new(""));
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = &after[..end];
            rest = &after[end..];
            if target.starts_with("http") || target.starts_with('#') || target.starts_with('<') {
                continue;
            }
            let file = target.split('#').next().unwrap_or(target);
            assert!(
                root().join(base).join(file).exists(),
                "{page} links to {target}, which does not exist"
            );
        }
    }
}
