//! Security events of an account: what happened, when, from which IP and browser.

use anyhow::Context as _;
use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

/// The kinds of event recorded; the string is what the table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    SignIn,
    SignInFailed,
    SignOut,
    ResetRequested,
    ResetCompleted,
    PasswordChanged,
    SessionsRevoked,
    TwoFactorEnabled,
    TwoFactorDisabled,
    RecoveryCodesRegenerated,
    /// An operator's `latchkey user disable`.
    AccountDisabled,
    /// An operator's `latchkey user enable`.
    AccountEnabled,
    /// An operator's `latchkey user sign-out`.
    SignedOutByOperator,
    /// An operator's `latchkey user reset-link`.
    ResetLinkByOperator,
    AccountCreated,
    /// An operator's `latchkey user two-factor-off`.
    TwoFactorRemovedByOperator,
    /// A sign-in from a browser the account had not used before (its owner was mailed).
    NewDeviceSignIn,
    PasskeyAdded,
    PasskeyRemoved,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SignIn => "sign_in",
            EventKind::SignInFailed => "sign_in_failed",
            EventKind::SignOut => "sign_out",
            EventKind::ResetRequested => "reset_requested",
            EventKind::ResetCompleted => "reset_completed",
            EventKind::PasswordChanged => "password_changed",
            EventKind::SessionsRevoked => "sessions_revoked",
            EventKind::TwoFactorEnabled => "two_factor_enabled",
            EventKind::TwoFactorDisabled => "two_factor_disabled",
            EventKind::RecoveryCodesRegenerated => "recovery_codes_regenerated",
            EventKind::AccountDisabled => "account_disabled",
            EventKind::AccountEnabled => "account_enabled",
            EventKind::SignedOutByOperator => "signed_out_by_operator",
            EventKind::ResetLinkByOperator => "reset_link_by_operator",
            EventKind::AccountCreated => "account_created",
            EventKind::TwoFactorRemovedByOperator => "two_factor_removed_by_operator",
            EventKind::NewDeviceSignIn => "new_device_sign_in",
            EventKind::PasskeyAdded => "passkey_added",
            EventKind::PasskeyRemoved => "passkey_removed",
        }
    }

    /// The phrase the activity list shows.
    pub fn describe(kind: &str) -> &'static str {
        match kind {
            "sign_in" => "Signed in",
            "sign_in_failed" => "Failed sign-in attempt",
            "sign_out" => "Signed out",
            "reset_requested" => "Password reset requested",
            "reset_completed" => "Password reset",
            "password_changed" => "Password changed",
            "sessions_revoked" => "Other sessions signed out",
            "two_factor_enabled" => "Two-factor authentication turned on",
            "two_factor_disabled" => "Two-factor authentication turned off",
            "recovery_codes_regenerated" => "New recovery codes made",
            "account_disabled" => "An administrator disabled this account",
            "account_enabled" => "An administrator enabled this account again",
            "signed_out_by_operator" => "An administrator signed out every session",
            "reset_link_by_operator" => "An administrator created a reset link",
            "account_created" => "Account created",
            "two_factor_removed_by_operator" => {
                "An administrator removed two-factor authentication and signed out every session"
            }
            "new_device_sign_in" => "Signed in from a new browser",
            "passkey_added" => "Passkey added",
            "passkey_removed" => "Passkey removed",
            _ => "Security event",
        }
    }
}

/// Who did it, from where: copied into every event.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[tracing::instrument(skip(executor, email))]
pub async fn record<'e>(
    executor: impl PgExecutor<'e>,
    kind: EventKind,
    user_id: Option<Uuid>,
    email: Option<&str>,
    origin: &Origin,
    detail: Option<&str>,
) -> anyhow::Result<()> {
    log(kind, user_id, origin, detail);
    sqlx::query!(
        "insert into audit_events (user_id, kind, email, ip, user_agent, detail)
         values ($1, $2, $3, $4, $5, $6)",
        user_id,
        kind.as_str(),
        email,
        origin.ip.as_deref(),
        origin.user_agent.as_deref(),
        detail,
    )
    .execute(executor)
    .await
    .context("recording a security event")?;
    Ok(())
}

/// The log line every recorded event gets (statements that record one along with other
/// work call this themselves).
pub(crate) fn log(kind: EventKind, user_id: Option<Uuid>, origin: &Origin, detail: Option<&str>) {
    tracing::info!(
        event = kind.as_str(),
        user_id = user_id.map(|u| u.to_string()),
        ip = origin.ip.as_deref(),
        user_agent = origin.user_agent.as_deref(),
        detail,
        "security event"
    );
}

#[derive(Debug)]
pub struct Event {
    pub kind: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: OffsetDateTime,
}

/// The newest events of an account from the last 30 days.
#[tracing::instrument(skip(pool))]
pub async fn recent_for_user(
    pool: &PgPool,
    user_id: Uuid,
    limit: i64,
) -> anyhow::Result<Vec<Event>> {
    sqlx::query_as!(
        Event,
        "select kind, ip, user_agent, created_at from audit_events
         where user_id = $1 and created_at > now() - interval '30 days'
         order by created_at desc, id desc limit $2",
        user_id,
        limit,
    )
    .fetch_all(pool)
    .await
    .context("reading an account's security events")
}
