//! Reading a MIME message back: headers (unfolded, RFC 2047 words decoded) and the
//! decoded text and HTML parts. The development mailbox shows the file transport's
//! messages with it, and the test SMTP sink reads what it received with it.

use base64::Engine as _;

/// Headers and body of a MIME entity (both CRLF-separated).
pub fn split_entity(entity: &str) -> (&str, &str) {
    if let Some((headers, body)) = entity.split_once("\r\n\r\n") {
        (headers, body)
    } else if let Some(body) = entity.strip_prefix("\r\n") {
        ("", body)
    } else {
        (entity, "")
    }
}

pub fn header_value(headers: &str, name: &str) -> Option<String> {
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

pub fn find_part(entity: &str, wanted: &str) -> Option<String> {
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
    // The CRLF before a boundary belongs to the boundary.
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
    Some(String::from_utf8_lossy(&bytes).into_owned())
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
pub fn decode_encoded_words(value: &str) -> String {
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

    #[test]
    fn quoted_printable_soft_breaks_and_escapes_are_decoded() {
        assert_eq!(
            decode_quoted_printable("token=3Dab=\r\ncd caf=C3=A9 =\r\n"),
            "token=abcd café ".as_bytes()
        );
    }

    #[test]
    fn encoded_words_in_headers_are_decoded() {
        assert_eq!(
            decode_encoded_words("=?utf-8?b?UsOpaW5pdA==?= now"),
            "Réinit now"
        );
        assert_eq!(
            decode_encoded_words("=?UTF-8?Q?caf=C3=A9_au?= =?utf-8?q?_lait?="),
            "café au lait"
        );
        assert_eq!(decode_encoded_words("plain subject"), "plain subject");
    }

    #[test]
    fn a_base64_part_with_line_breaks_is_decoded() {
        let raw = "Content-Transfer-Encoding: base64\r\n\r\naHR0cHM6Ly94LnRl\r\nc3Qv\r\n";
        assert_eq!(
            find_part(raw, "text/plain").as_deref(),
            Some("https://x.test/")
        );
    }
}
