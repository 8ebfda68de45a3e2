//! The forms of a page as a browser without JavaScript sees them: each form's action,
//! method, fields (hidden ones with their values) and submit buttons, read from the HTML
//! latchkey serves (no HTML library: the pages are ours and well-formed, and what this
//! reads is only tags and attributes). For tests that act on a page they do not know in
//! advance, such as a consent or sign-in page met in the middle of an OpenID flow.

/// One submit button: its `name`/`value` (sent when it is the one pressed) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Button {
    pub name: Option<String>,
    pub value: Option<String>,
    pub text: String,
}

/// One `<form>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// The `action` attribute as written (relative or absolute); empty when absent.
    pub action: String,
    /// `GET` or `POST`, upper-case.
    pub method: String,
    /// Every `<input>` and `<textarea>` with a name: `(name, type, value)`.
    pub fields: Vec<(String, String, String)>,
    pub buttons: Vec<Button>,
}

impl Form {
    /// Whether the form has a field named `name`.
    pub fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|(n, _, _)| n == name)
    }

    /// The first button whose text contains `text` (case-insensitive).
    pub fn button(&self, text: &str) -> Option<&Button> {
        let wanted = text.to_lowercase();
        self.buttons
            .iter()
            .find(|b| b.text.to_lowercase().contains(&wanted))
    }

    /// What the browser posts when `button` is pressed: every hidden field with its value,
    /// `values` for the fields a person fills in, and the button's own name and value.
    pub fn submission(
        &self,
        values: &[(&str, &str)],
        button: Option<&Button>,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, kind, value) in &self.fields {
            if let Some((_, v)) = values.iter().find(|(n, _)| n == name) {
                out.push((name.clone(), (*v).to_owned()));
            } else if kind == "hidden" {
                out.push((name.clone(), value.clone()));
            }
        }
        if let Some(Button {
            name: Some(name),
            value,
            ..
        }) = button
        {
            out.push((name.clone(), value.clone().unwrap_or_default()));
        }
        out
    }
}

/// Every form on `page`, in order.
pub fn forms(page: &str) -> Vec<Form> {
    let mut out = Vec::new();
    let mut rest = page;
    while let Some(start) = find_tag(rest, "form") {
        let (attributes, after_tag) = tag_at(&rest[start..]);
        let body_start = start + after_tag;
        let end = rest[body_start..]
            .find("</form>")
            .map(|i| body_start + i)
            .unwrap_or(rest.len());
        let body = &rest[body_start..end];
        out.push(Form {
            action: attribute(&attributes, "action").unwrap_or_default(),
            method: attribute(&attributes, "method")
                .unwrap_or_else(|| "get".to_owned())
                .to_uppercase(),
            fields: fields(body),
            buttons: buttons(body),
        });
        rest = &rest[end.min(rest.len())..];
        if rest.starts_with("</form>") {
            rest = &rest["</form>".len()..];
        }
    }
    out
}

/// The visible text of `html` (tags removed, entities decoded, whitespace collapsed).
pub fn text_of(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    decode(&text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The byte offset of the next `<name` tag (followed by whitespace or `>`).
fn find_tag(html: &str, name: &str) -> Option<usize> {
    let needle = format!("<{name}");
    let mut from = 0;
    while let Some(i) = html[from..].find(&needle) {
        let at = from + i;
        let next = html[at + needle.len()..].chars().next();
        if matches!(next, Some(c) if c.is_whitespace() || c == '>' || c == '/') {
            return Some(at);
        }
        from = at + needle.len();
    }
    None
}

/// The attribute text of the tag starting at `html[0]`, and the offset after its `>`.
fn tag_at(html: &str) -> (String, usize) {
    let mut quote: Option<char> = None;
    for (i, c) in html.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return (html[..i].to_owned(), i + 1),
            _ => {}
        }
    }
    (html.to_owned(), html.len())
}

/// The decoded value of attribute `name` in a tag's attribute text (`Some("")` for a
/// bare attribute such as `hidden`).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let bytes = tag.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Skip to the start of an attribute name.
        while i < bytes.len()
            && !(bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-' || bytes[i] == b'_')
        {
            if bytes[i] == b'"' || bytes[i] == b'\'' {
                let q = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
            }
            i += 1;
        }
        let start = i;
        while i < bytes.len()
            && (bytes[i].is_ascii_alphanumeric()
                || bytes[i] == b'-'
                || bytes[i] == b'_'
                || bytes[i] == b':')
        {
            i += 1;
        }
        let found = tag[start..i].eq_ignore_ascii_case(name);
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let value = if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                let q = bytes[i];
                let value_start = i + 1;
                i = value_start;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
                let value = &tag[value_start..i.min(tag.len())];
                i += 1;
                value.to_owned()
            } else {
                let value_start = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                tag[value_start..i].to_owned()
            }
        } else {
            String::new()
        };
        if found && start < i {
            return Some(decode(&value));
        }
    }
    None
}

fn fields(body: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for tag in ["input", "textarea", "select"] {
        let mut rest = body;
        while let Some(start) = find_tag(rest, tag) {
            let (attributes, after) = tag_at(&rest[start..]);
            if let Some(name) = attribute(&attributes, "name") {
                let kind = attribute(&attributes, "type").unwrap_or_else(|| "text".to_owned());
                let kind = if tag == "input" {
                    kind.to_lowercase()
                } else {
                    tag.to_owned()
                };
                if kind != "submit" {
                    let value = attribute(&attributes, "value").unwrap_or_default();
                    out.push((name, kind, value));
                }
            }
            rest = &rest[start + after..];
        }
    }
    out
}

fn buttons(body: &str) -> Vec<Button> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(start) = find_tag(rest, "button") {
        let (attributes, after) = tag_at(&rest[start..]);
        let inner_start = start + after;
        let inner_end = rest[inner_start..]
            .find("</button>")
            .map(|i| inner_start + i)
            .unwrap_or(rest.len());
        let kind = attribute(&attributes, "type").unwrap_or_else(|| "submit".to_owned());
        if kind.eq_ignore_ascii_case("submit") {
            out.push(Button {
                name: attribute(&attributes, "name"),
                value: attribute(&attributes, "value"),
                text: text_of(&rest[inner_start..inner_end]),
            });
        }
        rest = &rest[inner_end..];
    }
    // <input type="submit"> counts as a button too.
    let mut rest = body;
    while let Some(start) = find_tag(rest, "input") {
        let (attributes, after) = tag_at(&rest[start..]);
        if attribute(&attributes, "type").is_some_and(|t| t.eq_ignore_ascii_case("submit")) {
            out.push(Button {
                name: attribute(&attributes, "name"),
                value: attribute(&attributes, "value"),
                text: attribute(&attributes, "value").unwrap_or_default(),
            });
        }
        rest = &rest[start + after..];
    }
    out
}

/// HTML character references that askama's escaping produces, and the numeric ones.
fn decode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<main><h1>Allow Grafana?</h1>
<form method="post" action="/oauth/authorize/consent?x=1&amp;y=2">
  <input type="hidden" name="csrf_token" value="abc&#x2F;def">
  <input type=hidden name=request value='r1'>
  <label for="email">Email</label><input id="email" name="email" type="email" autocomplete="username">
  <button type="submit" name="decision" value="allow">Allow</button>
  <button class="secondary" name="decision" value="deny"><span>Deny</span></button>
  <button type="button">Show</button>
</form>
<form action="/sign-out" method="post"><input type="hidden" name="csrf_token" value="t"><button>Sign out</button></form>"#;

    #[test]
    fn reads_actions_fields_and_buttons_with_entities_decoded() {
        let forms = forms(PAGE);
        assert_eq!(forms.len(), 2);
        let consent = &forms[0];
        assert_eq!(consent.action, "/oauth/authorize/consent?x=1&y=2");
        assert_eq!(consent.method, "POST");
        assert!(consent.has_field("email"));
        let deny = consent.button("deny").expect("Deny");
        assert_eq!(deny.value.as_deref(), Some("deny"));
        assert_eq!(consent.buttons.len(), 2, "a type=button is not a submit");
        assert_eq!(
            consent.submission(&[("email", "a@b.c")], Some(deny)),
            vec![
                ("csrf_token".to_owned(), "abc/def".to_owned()),
                ("request".to_owned(), "r1".to_owned()),
                ("email".to_owned(), "a@b.c".to_owned()),
                ("decision".to_owned(), "deny".to_owned()),
            ]
        );
        assert_eq!(forms[1].action, "/sign-out");
        assert_eq!(
            forms[1].button("sign out").map(|b| b.name.clone()),
            Some(None)
        );
    }

    #[test]
    fn text_of_drops_tags_and_collapses_space() {
        assert_eq!(
            text_of("<p>Allow <b>Grafana</b>\n to&nbsp;see</p>"),
            "Allow Grafana to see"
        );
    }
}
