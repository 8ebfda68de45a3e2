//! The development mailbox: the `.eml` files the file transport wrote, read back for
//! `/dev/mailbox`. A message is named only by a file name the listing produced (a uuid and
//! `.eml`), so no request can reach any other file.

use std::path::Path;
use std::time::SystemTime;

use super::mime::{decode_encoded_words, find_part, header_value, split_entity};
use anyhow::Context as _;

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
        text: find_part(&raw, "text/plain").map(|text| text.replace("\r\n", "\n")),
        html: find_part(&raw, "text/html").map(|html| html.replace("\r\n", "\n")),
        name: entry.name,
        modified: entry.modified,
        to: entry.to,
        subject: entry.subject,
    }))
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
}
