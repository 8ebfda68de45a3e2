//! A tiny SMTP server for tests: accepts everything lettre's client sends over plain
//! `smtp://`, keeps each message in memory, and can be switched off to simulate an outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latchkey::mail::mime::{decode_encoded_words, find_part, header_value, split_entity};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Longest command or data line accepted; a longer one ends the session.
const MAX_LINE: usize = 64 * 1024;

/// One message as the server received it.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    /// Envelope sender (`MAIL FROM`), without the angle brackets.
    pub from: String,
    /// Envelope recipients (`RCPT TO`), without the angle brackets.
    pub to: Vec<String>,
    /// The raw message (headers and body), CRLF line endings, dot-unstuffed.
    pub data: String,
}

#[derive(Default)]
struct State {
    messages: Mutex<Vec<ReceivedMail>>,
    down: AtomicBool,
}

impl State {
    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    fn push(&self, mail: ReceivedMail) {
        self.messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(mail);
    }

    fn messages(&self) -> Vec<ReceivedMail> {
        self.messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Listens on 127.0.0.1 on a free port until dropped.
#[allow(dead_code)]
pub struct SmtpSink {
    pub port: u16,
    state: Arc<State>,
    server: JoinHandle<()>,
}

#[allow(dead_code)]
impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("smtp sink: bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("smtp sink: local address")
            .port();
        let state = Arc::new(State::default());
        let server = tokio::spawn(serve(listener, Arc::clone(&state)));
        SmtpSink {
            port,
            state,
            server,
        }
    }

    /// `smtp://127.0.0.1:<port>`, ready for `LATCHKEY_SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.state.messages()
    }

    /// Messages whose envelope includes `address` (case-insensitive), oldest first.
    pub fn messages_to(&self, address: &str) -> Vec<ReceivedMail> {
        self.messages()
            .into_iter()
            .filter(|mail| mail.to.iter().any(|to| to.eq_ignore_ascii_case(address)))
            .collect()
    }

    /// How many messages have `address` among their recipients, without copying them.
    pub fn count_to(&self, address: &str) -> usize {
        let messages = self
            .state
            .messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        messages
            .iter()
            .filter(|mail| mail.to.iter().any(|to| to.eq_ignore_ascii_case(address)))
            .count()
    }

    /// How many messages arrived in all, without copying them.
    pub fn count(&self) -> usize {
        self.state
            .messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// The newest message to `address` whose subject is `subject`.
    pub fn last_to(&self, address: &str, subject: &str) -> Option<ReceivedMail> {
        let messages = self
            .state
            .messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        messages
            .iter()
            .rev()
            .find(|mail| {
                mail.to.iter().any(|to| to.eq_ignore_ascii_case(address))
                    && mail.subject().as_deref() == Some(subject)
            })
            .cloned()
    }

    /// Polls until at least `count` messages have arrived or `timeout` has passed, then
    /// returns all messages: fewer than `count` means they did not come in time (which is
    /// also how a test asserts that nothing was sent).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count || tokio::time::Instant::now() >= deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// While down, new connections get `421` and are closed, and open ones answer their
    /// next command with `421` and are closed (so pooled client connections fail too).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every session.
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    sessions.spawn(session(stream, Arc::clone(&state)));
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

enum Read {
    Line(String),
    Closed,
}

async fn read_line(reader: &mut BufReader<TcpStream>) -> Read {
    let mut raw = Vec::new();
    match (&mut *reader)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut raw)
        .await
    {
        Ok(0) | Err(_) => Read::Closed,
        Ok(_) if !raw.ends_with(b"\n") => Read::Closed,
        Ok(_) => {
            let line = String::from_utf8_lossy(&raw);
            Read::Line(line.trim_end_matches(['\r', '\n']).to_owned())
        }
    }
}

async fn reply(reader: &mut BufReader<TcpStream>, text: &str) -> bool {
    reader.get_mut().write_all(text.as_bytes()).await.is_ok()
}

/// `<addr> PARAMS` after `MAIL FROM:` / `RCPT TO:` → `addr`.
fn path_argument(rest: &str) -> String {
    let rest = rest.trim_start();
    match rest
        .strip_prefix('<')
        .and_then(|inner| inner.split_once('>'))
    {
        Some((address, _)) => address.to_owned(),
        None => rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

async fn session(stream: TcpStream, state: Arc<State>) {
    let mut conn = BufReader::new(stream);
    if state.is_down() {
        reply(&mut conn, "421 4.3.2 smtp-sink is down\r\n").await;
        return;
    }
    if !reply(&mut conn, "220 smtp-sink ESMTP ready\r\n").await {
        return;
    }
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    loop {
        let Read::Line(line) = read_line(&mut conn).await else {
            return;
        };
        if state.is_down() {
            reply(&mut conn, "421 4.3.2 smtp-sink is down\r\n").await;
            return;
        }
        let upper = line.to_ascii_uppercase();
        let answer = if upper.starts_with("EHLO") {
            "250-smtp-sink greets you\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            "250 smtp-sink\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(path_argument(&line["MAIL FROM:".len()..]));
            to.clear();
            "250 2.1.0 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                "503 5.5.1 MAIL first\r\n"
            } else {
                to.push(path_argument(&line["RCPT TO:".len()..]));
                "250 2.1.5 ok\r\n"
            }
        } else if upper == "DATA" {
            if from.is_none() || to.is_empty() {
                "503 5.5.1 MAIL and RCPT first\r\n"
            } else {
                if !reply(&mut conn, "354 end data with <CR><LF>.<CR><LF>\r\n").await {
                    return;
                }
                let Some(data) = read_data(&mut conn).await else {
                    return;
                };
                state.push(ReceivedMail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                });
                "250 2.0.0 ok: queued\r\n"
            }
        } else if upper == "RSET" {
            from = None;
            to.clear();
            "250 2.0.0 ok\r\n"
        } else if upper == "NOOP" || upper.starts_with("NOOP ") {
            "250 2.0.0 ok\r\n"
        } else if upper == "QUIT" {
            reply(&mut conn, "221 2.0.0 bye\r\n").await;
            return;
        } else {
            "502 5.5.2 command not implemented\r\n"
        };
        if !reply(&mut conn, answer).await {
            return;
        }
    }
}

/// Reads the DATA section up to the lone `.` line, undoing dot-stuffing.
async fn read_data(conn: &mut BufReader<TcpStream>) -> Option<String> {
    let mut lines: Vec<String> = Vec::new();
    loop {
        let Read::Line(line) = read_line(conn).await else {
            return None;
        };
        if line == "." {
            let mut data = lines.join("\r\n");
            data.push_str("\r\n");
            return Some(data);
        }
        lines.push(match line.strip_prefix('.') {
            Some(unstuffed) => unstuffed.to_owned(),
            None => line,
        });
    }
}

// ---- reading what was received ----

#[allow(dead_code)]
impl ReceivedMail {
    /// A top-level header's value, unfolded; the first one if repeated.
    pub fn header(&self, name: &str) -> Option<String> {
        let (headers, _) = split_entity(&self.data);
        header_value(headers, name)
    }

    /// The Subject, with RFC 2047 encoded words (`=?utf-8?b?…?=`, `=?utf-8?q?…?=`) decoded.
    pub fn subject(&self) -> Option<String> {
        self.header("Subject")
            .map(|value| decode_encoded_words(&value))
    }

    /// The decoded text/plain body (the text/plain part of a multipart message).
    pub fn text_body(&self) -> Option<String> {
        find_part(&self.data, "text/plain")
    }

    /// The decoded text/html part, if any.
    pub fn html_body(&self) -> Option<String> {
        find_part(&self.data, "text/html")
    }

    /// The first `http://` or `https://` URL in the text body.
    pub fn first_link(&self) -> Option<String> {
        let text = self.text_body()?;
        let start = text.find("http://").or_else(|| text.find("https://"))?;
        let link: String = text[start..]
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '<' | '>' | '"'))
            .collect();
        Some(link)
    }
}

#[cfg(test)]
mod decoding_tests {
    use super::*;

    fn mail(data: &str) -> ReceivedMail {
        ReceivedMail {
            from: "a@x.test".to_owned(),
            to: vec!["b@x.test".to_owned()],
            data: data.to_owned(),
        }
    }

    #[test]
    fn a_plain_message_without_content_type_is_text() {
        let received = mail("Subject: hi\r\n\r\nline one\r\nhttps://x.test/a?b=c\r\n");
        assert_eq!(
            received.text_body().as_deref(),
            Some("line one\r\nhttps://x.test/a?b=c")
        );
        assert_eq!(
            received.first_link().as_deref(),
            Some("https://x.test/a?b=c")
        );
        assert_eq!(received.header("subject").as_deref(), Some("hi"));
    }
}
