//! Sessions as the account rules see them: who a session says is signed in and with which
//! password, whether that still holds, and signing sessions out with their audit rows.
//! The session itself (cookie, id, stored keys) is `web::session`; here it is only values
//! and the id's digest.

use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

pub use super::session_cache::SessionCache;
use super::{Accounts, Origin};
use crate::domain::{EmailAddress, SessionDigest};
use crate::store::audit::{self, EventKind};
use crate::store::sessions;
use crate::store::users::{self, User};

/// A half-signed-in session: whose, where to go after, and the password it began with.
#[derive(Debug, Clone)]
pub struct PendingSecondStep {
    pub user_id: Uuid,
    pub next: Option<String>,
    pub password_set_at: time::OffsetDateTime,
}

/// How a sign-in was completed; recorded in the session so that the OpenID provider can
/// say it (`amr`, RFC 8176) and re-authentication rules can weigh it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInMethod {
    /// The password alone.
    Password,
    /// The password, then a two-factor code or a recovery code.
    PasswordAndCode,
    /// A passkey with user verification (possession of the key plus PIN or biometrics).
    Passkey,
}

impl SignInMethod {
    /// The RFC 8176 authentication method references this sign-in stands for.
    pub fn amr(self) -> &'static [&'static str] {
        match self {
            SignInMethod::Password => &["pwd"],
            SignInMethod::PasswordAndCode => &["pwd", "otp", "mfa"],
            SignInMethod::Passkey => &["hwk", "user", "mfa"],
        }
    }

    /// The method a session recorded; sessions from before it was recorded were signed in
    /// with a password (a second step, if any, is not known).
    pub fn from_recorded(recorded: Option<&str>) -> SignInMethod {
        match recorded {
            Some("password_and_code") => SignInMethod::PasswordAndCode,
            Some("passkey") => SignInMethod::Passkey,
            _ => SignInMethod::Password,
        }
    }

    /// How the session records it.
    pub fn as_recorded(self) -> &'static str {
        match self {
            SignInMethod::Password => "password",
            SignInMethod::PasswordAndCode => "password_and_code",
            SignInMethod::Passkey => "passkey",
        }
    }
}

/// A signed-in session: whose, and the password it began with.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user_id: Uuid,
    /// `None` when nothing was recorded: it proves nothing.
    password_set_at: Option<i64>,
}

impl SignedIn {
    /// What a session recorded: its user, and the [`password_stamp`] it began with.
    pub fn new(user_id: Uuid, password_set_at: Option<i64>) -> SignedIn {
        SignedIn {
            user_id,
            password_set_at,
        }
    }

    /// Whether this session began with the password set at `password_changed_at` (the
    /// account's current one).
    pub fn began_with(&self, password_changed_at: time::OffsetDateTime) -> bool {
        self.password_set_at == Some(password_stamp(password_changed_at))
    }
}

/// How a session records a `password_changed_at`: microseconds since the epoch
/// (Postgres's precision, and what migration 0004 writes for older sessions).
pub fn password_stamp(at: time::OffsetDateTime) -> i64 {
    // Microseconds since the epoch fit an i64 for ±292,000 years.
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MIN)
}

/// Who a session belongs to now.
#[derive(Debug)]
pub enum SessionHolder {
    /// Nobody signed in.
    Nobody,
    /// The account, whose current password the session began with.
    SignedIn(User),
    /// The account is gone or disabled, or its password was reset or changed since the
    /// session began: the session is over and must be signed out.
    Ended,
}

/// The signed-in person of a session, checked against the account's current password,
/// and the session's "last active" refreshed (at most about once a minute).
pub async fn current_user(
    accounts: &Accounts,
    signed_in: Option<SignedIn>,
    session: Option<&SessionDigest>,
) -> anyhow::Result<SessionHolder> {
    let Some(signed_in) = signed_in else {
        return Ok(SessionHolder::Nobody);
    };
    let holder = holder_of(accounts, &signed_in).await?;
    if let (SessionHolder::SignedIn(_), Some(digest)) = (&holder, session) {
        let s = &accounts.settings;
        sessions::touch(&accounts.pool, digest, s.session_idle, s.session_absolute).await?;
    }
    Ok(holder)
}

/// The one rule for whether a signed-in session still holds, shared by the pages
/// ([`current_user`]) and forward auth ([`authenticate`]): whatever ends a session for
/// one ends it for the other.
async fn holder_of(accounts: &Accounts, signed_in: &SignedIn) -> anyhow::Result<SessionHolder> {
    let Some(user) = users::find_by_id(&accounts.pool, signed_in.user_id).await? else {
        return Ok(SessionHolder::Ended);
    };
    // Bound to the password it began with: after a reset or a change (even one that
    // committed while this session's sign-in was still verifying the old password),
    // the session is over, on every instance.
    if !signed_in.began_with(user.password_changed_at) {
        return Ok(SessionHolder::Ended);
    }
    // Disabled by an operator: every session is over, including one whose sign-in was
    // still in flight when `latchkey user disable` deleted the account's sessions.
    if user.is_disabled() {
        return Ok(SessionHolder::Ended);
    }
    Ok(SessionHolder::SignedIn(user))
}

/// Who a forward-auth check or `/api/whoami` says is signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: Uuid,
    pub email: EmailAddress,
    pub two_factor: bool,
    /// When the session was signed in (`None` for sessions from before it was recorded).
    pub signed_in_at: Option<time::OffsetDateTime>,
}

/// The fully signed-in person of the session with this digest, for forward auth: the
/// same rule as the pages ([`holder_of`]), on a live session that is not half-signed-in.
/// It writes nothing but the session's "last active", at most once a minute, and it
/// answers from a per-instance cache for at most [`SessionCache`]'s TTL, so a revocation
/// anywhere reaches every instance within that time.
pub async fn authenticate(
    accounts: &Accounts,
    digest: &SessionDigest,
) -> anyhow::Result<Option<Arc<Identity>>> {
    let cache = &accounts.session_cache;
    if let Some(known) = cache.get(digest) {
        return Ok(known);
    }
    // The entry's life starts before the read, so it never outlives a revocation that
    // committed during the read by more than the TTL.
    let asked_at = Instant::now();
    let identity = look_up(accounts, digest).await?.map(Arc::new);
    cache.put(digest, identity.clone(), asked_at);
    Ok(identity)
}

async fn look_up(accounts: &Accounts, digest: &SessionDigest) -> anyhow::Result<Option<Identity>> {
    let Some(live) = sessions::find_signed_in(&accounts.pool, digest).await? else {
        return Ok(None);
    };
    let signed_in = SignedIn::new(live.user_id, live.password_set_at);
    let SessionHolder::SignedIn(user) = holder_of(accounts, &signed_in).await? else {
        return Ok(None);
    };
    if !live.recently_seen {
        let s = &accounts.settings;
        sessions::touch(&accounts.pool, digest, s.session_idle, s.session_absolute).await?;
    }
    Ok(Some(Identity {
        user_id: user.id,
        two_factor: user.has_two_factor(),
        email: user.email,
        signed_in_at: live
            .signed_in_at
            .and_then(|at| time::OffsetDateTime::from_unix_timestamp(at).ok()),
    }))
}

/// Records a sign-out of `user_id`'s session (when the session had one); the caller then
/// ends the session itself.
pub async fn record_sign_out(
    accounts: &Accounts,
    user_id: Option<Uuid>,
    origin: &Origin,
) -> anyhow::Result<()> {
    if let Some(user_id) = user_id {
        audit::record(
            &accounts.pool,
            EventKind::SignOut,
            Some(user_id),
            None,
            origin,
            None,
        )
        .await?;
    }
    Ok(())
}

/// Signs out every session of the account but `keep`, with its audit row, in one
/// transaction; returns how many live sessions went.
pub async fn sign_out_others(
    accounts: &Accounts,
    user: &User,
    keep: Option<&SessionDigest>,
    origin: &Origin,
) -> anyhow::Result<u64> {
    let mut tx = accounts.pool.begin().await?;
    let count = sessions::delete_for_user(&mut tx, user.id, keep).await?;
    audit::record(
        &mut *tx,
        EventKind::SessionsRevoked,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        Some(&format!("{count} sessions")),
    )
    .await?;
    tx.commit().await?;
    Ok(count)
}

/// Signs out the account's session named by `public_id`, with its audit row, in one
/// transaction; whether there was one.
pub async fn sign_out_one(
    accounts: &Accounts,
    user: &User,
    public_id: Uuid,
    origin: &Origin,
) -> anyhow::Result<bool> {
    let mut tx = accounts.pool.begin().await?;
    if !sessions::delete_one(&mut tx, user.id, public_id).await? {
        return Ok(false);
    }
    audit::record(
        &mut *tx,
        EventKind::SessionsRevoked,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        Some("1 session"),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
