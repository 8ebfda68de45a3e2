//! The development mailbox: the `.eml` files the file transport wrote, read back for
//! `/dev/mailbox`. A message is named only by a file name the listing produced (a uuid and
//! `.eml`), so no request can reach any other file.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use base64::Engine as _;

/// One message of the listing.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The file name, `<uuid>.eml`: what names the message in its URL.
    pub name: String,
    pub modified: SystemTime,
    pub to: String,
    pub subject: String,
}

/// One message, decoded.
#[derive(Debug, Clone)]
pub struct Message {
    pub name: String,
    pub modified: SystemTime,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub date: String,
    pub text: Option<String>,
    pub html: Option<String>,
}

/// Whether `name` is the shape the file transport writes: `<uuid>.eml`, nothing else.
fn is_message_name(name: &str) -> bool {
    name.strip_suffix(".eml")
        .is_some_and(|stem| uuid::Uuid::try_parse(stem).is_ok() && !stem.contains(['/', '\\']))
}

/// The messages under `dir`, newest first; a missing directory is an empty mailbox.
pub async fn list(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut read = match tokio::fs::read_dir(dir).await {
        Ok(read) => read,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(entries),
        Err(err) => return Err(err).context("listing the mail directory"),
    };
    while let Some(item) = read
        .next_entry()
        .await
        .context("listing the mail directory")?
    {
        let Some(name) = item.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_message_name(&name) {
            continue;
        }
        let Ok(meta) = item.metadata().await else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let Ok(raw) = tokio::fs::read(item.path()).await else {
            continue;
        };
        let raw = String::from_utf8_lossy(&raw)
            .replace("\r\n", "\n")
            .replace('\n', "\r\n");
        let (headers, _) = split_entity(&raw);
        entries.push(Entry {
            name,
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            to: header_value(headers, "To").unwrap_or_default(),
            subject: header_value(headers, "Subject")
                .map(|s| decode_encoded_words(&s))
                .unwrap_or_default(),
        });
    }
    entries.sort_by(|a, b| b.modified.cmp(&a.modified).then(b.name.cmp(&a.name)));
    Ok(entries)
}

/// The message `name`, if the listing of `dir` has it.
pub async fn read(dir: &Path, name: &str) -> anyhow::Result<Option<Message>> {
    if !is_message_name(name) {
        return Ok(None);
    }
    let Some(entry) = list(dir).await?.into_iter().find(|e| e.name == name) else {
        return Ok(None);
    };
    let raw = tokio::fs::read(dir.join(&entry.name))
        .await
        .context("reading a mail file")?;
    let raw = String::from_utf8_lossy(&raw)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    let (headers, _) = split_entity(&raw);
    Ok(Some(Message {
        from: header_value(headers, "From").unwrap_or_default(),
        date: header_value(headers, "Date").unwrap_or_default(),
        text: find_part(&raw, "text/plain"),
        html: find_part(&raw, "text/html"),
        name: entry.name,
        modified: entry.modified,
        to: entry.to,
        subject: entry.subject,
    }))
}

/// Headers and body of a MIME entity (both CRLF-separated).
fn split_entity(entity: &str) -> (&str, &str) {
    if let Some((headers, body)) = entity.split_once("\r\n\r\n") {
        (headers, body)
    } else if let Some(body) = entity.strip_prefix("\r\n") {
        ("", body)
    } else {
        (entity, "")
    }
}

fn header_value(headers: &str, name: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for line in headers.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(value) = found.as_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if found.is_some() {
            break;
        }
        if let Some((_, value)) = line
            .split_once(':')
            .filter(|(key, _)| key.trim().eq_ignore_ascii_case(name))
        {
            found = Some(value.trim().to_owned());
        }
    }
    found
}

/// `multipart/alternative; boundary="x"` → (`multipart/alternative`, Some(`x`)).
fn content_type(headers: &str) -> (String, Option<String>) {
    let Some(value) = header_value(headers, "Content-Type") else {
        return ("text/plain".to_owned(), None);
    };
    let mut params = value.split(';');
    let mime = params
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let boundary = params.find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    });
    (mime, boundary)
}

fn find_part(entity: &str, wanted: &str) -> Option<String> {
    let (headers, body) = split_entity(entity);
    let (mime, boundary) = content_type(headers);
    if mime.starts_with("multipart/") {
        let delimiter = format!("--{}", boundary?);
        return body
            .split(delimiter.as_str())
            .skip(1)
            .take_while(|part| !part.starts_with("--"))
            .find_map(|part| find_part(part.strip_prefix("\r\n").unwrap_or(part), wanted));
    }
    if mime != wanted {
        return None;
    }
    let body = body.strip_suffix("\r\n").unwrap_or(body);
    let encoding = header_value(headers, "Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(body.split_whitespace().collect::<String>())
            .ok()?,
        _ => body.as_bytes().to_vec(),
    };
    Some(String::from_utf8_lossy(&bytes).replace("\r\n", "\n"))
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'=' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes[i + 1..].starts_with(b"\r\n") {
            i += 3;
        } else if bytes[i + 1..].starts_with(b"\n") {
            i += 2;
        } else if let (Some(high), Some(low)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) {
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(b'=');
            i += 1;
        }
    }
    out
}

/// Decodes `=?charset?B|Q?…?=` words (UTF-8 and ASCII charsets) in a header value.
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut previous_was_word = false;
    while let Some(start) = rest.find("=?") {
        let decoded = rest[start + 2..].splitn(3, '?').collect::<Vec<_>>();
        let (Some(encoding), Some(tail)) = (decoded.get(1), decoded.get(2)) else {
            break;
        };
        let Some(end) = tail.find("?=") else {
            break;
        };
        let payload = &tail[..end];
        let bytes = match encoding.to_ascii_lowercase().as_str() {
            "b" => base64::engine::general_purpose::STANDARD
                .decode(payload)
                .ok(),
            "q" => Some(decode_quoted_printable(&payload.replace('_', " "))),
            _ => None,
        };
        let Some(bytes) = bytes else {
            break;
        };
        let between = &rest[..start];
        if !(previous_was_word && between.trim().is_empty()) {
            out.push_str(between);
        }
        out.push_str(&String::from_utf8_lossy(&bytes));
        previous_was_word = true;
        let consumed = start + 2 + decoded[0].len() + 1 + encoding.len() + 1 + end + 2;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uuid_eml_names_are_messages() {
        assert!(is_message_name("0b9d6f3e-5d1c-4a52-9a3f-1f6a2b3c4d5e.eml"));
        for bad in [
            "../secret_key",
            "../../etc/passwd.eml",
            "0b9d6f3e-5d1c-4a52-9a3f-1f6a2b3c4d5e",
            "x.eml",
            "",
        ] {
            assert!(!is_message_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_multipart_message_gives_both_parts_decoded() {
        let raw = "Subject: =?utf-8?b?SGVsbG8=?=\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nlink http://127.0.0.1/x?a=3Db\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--b--\r\n";
        let (headers, _) = split_entity(raw);
        assert_eq!(
            header_value(headers, "Subject").map(|s| decode_encoded_words(&s)),
            Some("Hello".into())
        );
        assert_eq!(
            find_part(raw, "text/plain").as_deref(),
            Some("link http://127.0.0.1/x?a=b")
        );
        assert_eq!(find_part(raw, "text/html").as_deref(), Some("<p>hi</p>"));
    }
}
