//! One function per email, each rendered from `templates/email/<name>/{subject,text,html}`.

use anyhow::Context;
use askama::Template;
use time::OffsetDateTime;

use super::OutgoingMail;
use crate::domain::describe_user_agent;
use crate::store::audit::{EventKind, Origin};

/// Where and when something happened, as the mail tells it.
struct Circumstances {
    when: String,
    ip: String,
    browser: String,
}

impl Circumstances {
    fn new(origin: &Origin) -> Circumstances {
        let now = OffsetDateTime::now_utc();
        let when = now
            .format(time::macros::format_description!(
                "[day] [month repr:long] [year], [hour]:[minute] UTC"
            ))
            .unwrap_or_else(|_| now.to_string());
        Circumstances {
            when,
            ip: origin
                .ip
                .clone()
                .unwrap_or_else(|| "an unknown address".into()),
            browser: describe_user_agent(origin.user_agent.as_deref()),
        }
    }
}

#[derive(Template)]
#[template(path = "email/reset/text.txt")]
struct ResetText<'a> {
    link: &'a str,
    minutes: u64,
    at: &'a Circumstances,
}

#[derive(Template)]
#[template(path = "email/reset/html.html")]
struct ResetHtml<'a> {
    link: &'a str,
    minutes: u64,
    at: &'a Circumstances,
}

/// "Reset your latchkey password": the single-use link, on its own line.
pub fn reset(to: &str, link: &str, ttl_secs: u64, origin: &Origin) -> anyhow::Result<OutgoingMail> {
    let at = Circumstances::new(origin);
    let minutes = ttl_secs.div_ceil(60);
    Ok(OutgoingMail {
        to: to.to_owned(),
        subject: "Reset your latchkey password".to_owned(),
        text: ResetText {
            link,
            minutes,
            at: &at,
        }
        .render()
        .context("rendering the reset mail")?,
        html: Some(
            ResetHtml {
                link,
                minutes,
                at: &at,
            }
            .render()
            .context("rendering the reset mail")?,
        ),
    })
}

#[derive(Template)]
#[template(path = "email/password_changed/text.txt")]
struct ChangedText<'a> {
    sign_in_link: &'a str,
    at: &'a Circumstances,
    by_reset: bool,
    signed_out: u64,
}

#[derive(Template)]
#[template(path = "email/password_changed/html.html")]
struct ChangedHtml<'a> {
    sign_in_link: &'a str,
    at: &'a Circumstances,
    by_reset: bool,
    signed_out: u64,
}

/// "Your latchkey password was changed": when, from where, and what to do if it was not them.
pub fn password_changed(
    to: &str,
    public_base: &str,
    by_reset: bool,
    signed_out: u64,
    origin: &Origin,
) -> anyhow::Result<OutgoingMail> {
    let at = Circumstances::new(origin);
    let sign_in_link = format!("{public_base}/sign-in");
    let sign_in_link = sign_in_link.as_str();
    Ok(OutgoingMail {
        to: to.to_owned(),
        subject: "Your latchkey password was changed".to_owned(),
        text: ChangedText {
            sign_in_link,
            at: &at,
            by_reset,
            signed_out,
        }
        .render()
        .context("rendering the password-changed mail")?,
        html: Some(
            ChangedHtml {
                sign_in_link,
                at: &at,
                by_reset,
                signed_out,
            }
            .render()
            .context("rendering the password-changed mail")?,
        ),
    })
}

#[derive(Template)]
#[template(path = "email/security_change/text.txt")]
struct SecurityChangeText<'a> {
    what: &'a str,
    settings_link: &'a str,
    sign_in_link: &'a str,
    at: &'a Circumstances,
}

#[derive(Template)]
#[template(path = "email/security_change/html.html")]
struct SecurityChangeHtml<'a> {
    what: &'a str,
    settings_link: &'a str,
    sign_in_link: &'a str,
    at: &'a Circumstances,
}

/// Two-factor turned on or off (by the owner or an operator), new recovery codes, or a
/// sign-in from a new browser: when, from where, what to do.
pub fn security_change(
    to: &str,
    public_base: &str,
    kind: EventKind,
    origin: &Origin,
) -> anyhow::Result<OutgoingMail> {
    let (subject, what) = match kind {
        EventKind::TwoFactorEnabled => (
            "Two-factor authentication is on for your latchkey account",
            "Two-factor authentication was turned on",
        ),
        EventKind::TwoFactorDisabled => (
            "Two-factor authentication is off for your latchkey account",
            "Two-factor authentication was turned off",
        ),
        EventKind::TwoFactorRemovedByOperator => (
            "An administrator turned off two-factor authentication for your latchkey account",
            "An administrator removed your authenticator and recovery codes and signed out every session",
        ),
        EventKind::NewDeviceSignIn => (
            "New sign-in to your account",
            "Someone signed in from a browser not used before",
        ),
        EventKind::PasskeyAdded => (
            "A passkey was added to your latchkey account",
            "A passkey was added",
        ),
        EventKind::PasskeyRemoved => (
            "A passkey was removed from your latchkey account",
            "A passkey was removed",
        ),
        _ => (
            "New recovery codes for your latchkey account",
            "New two-factor recovery codes were made, and the old ones stopped working",
        ),
    };
    let at = Circumstances::new(origin);
    let settings_link = format!("{public_base}/settings/security");
    let sign_in_link = format!("{public_base}/sign-in");
    let (settings_link, sign_in_link) = (settings_link.as_str(), sign_in_link.as_str());
    Ok(OutgoingMail {
        to: to.to_owned(),
        subject: subject.to_owned(),
        text: SecurityChangeText {
            what,
            settings_link,
            sign_in_link,
            at: &at,
        }
        .render()
        .context("rendering a security notification")?,
        html: Some(
            SecurityChangeHtml {
                what,
                settings_link,
                sign_in_link,
                at: &at,
            }
            .render()
            .context("rendering a security notification")?,
        ),
    })
}

#[derive(Template)]
#[template(path = "email/sign_up/text.txt")]
struct SignUpText<'a> {
    link: &'a str,
    minutes: u64,
    at: &'a Circumstances,
}

#[derive(Template)]
#[template(path = "email/sign_up/html.html")]
struct SignUpHtml<'a> {
    link: &'a str,
    minutes: u64,
    at: &'a Circumstances,
}

/// "Confirm your latchkey account": the single-use link that creates the account.
pub fn sign_up(
    to: &str,
    link: &str,
    ttl_secs: u64,
    origin: &Origin,
) -> anyhow::Result<OutgoingMail> {
    let at = Circumstances::new(origin);
    let minutes = ttl_secs.div_ceil(60);
    Ok(OutgoingMail {
        to: to.to_owned(),
        subject: "Confirm your latchkey account".to_owned(),
        text: SignUpText {
            link,
            minutes,
            at: &at,
        }
        .render()
        .context("rendering the sign-up mail")?,
        html: Some(
            SignUpHtml {
                link,
                minutes,
                at: &at,
            }
            .render()
            .context("rendering the sign-up mail")?,
        ),
    })
}

#[derive(Template)]
#[template(path = "email/sign_up_existing/text.txt")]
struct SignUpExistingText<'a> {
    disabled: bool,
    sign_in_link: &'a str,
    forgot_link: &'a str,
    at: &'a Circumstances,
}

#[derive(Template)]
#[template(path = "email/sign_up_existing/html.html")]
struct SignUpExistingHtml<'a> {
    disabled: bool,
    sign_in_link: &'a str,
    forgot_link: &'a str,
    at: &'a Circumstances,
}

/// "You already have a latchkey account": someone tried to sign up with an address that
/// has one. Links to sign in and to reset the password; no token, nothing created. For a
/// disabled account (which neither a sign-in nor a reset would help) it says to contact
/// the operator instead.
pub fn sign_up_existing(
    to: &str,
    disabled: bool,
    public_base: &str,
    origin: &Origin,
) -> anyhow::Result<OutgoingMail> {
    let at = Circumstances::new(origin);
    let sign_in_link = format!("{public_base}/sign-in");
    let forgot_link = format!("{public_base}/forgot-password");
    let (sign_in_link, forgot_link) = (sign_in_link.as_str(), forgot_link.as_str());
    Ok(OutgoingMail {
        to: to.to_owned(),
        subject: "You already have a latchkey account".to_owned(),
        text: SignUpExistingText {
            disabled,
            sign_in_link,
            forgot_link,
            at: &at,
        }
        .render()
        .context("rendering the existing-account mail")?,
        html: Some(
            SignUpExistingHtml {
                disabled,
                sign_in_link,
                forgot_link,
                at: &at,
            }
            .render()
            .context("rendering the existing-account mail")?,
        ),
    })
}
