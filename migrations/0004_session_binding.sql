-- Sessions are bound to the password they began with: a signed-in session's data holds
-- `password_set_at`, the account's password_changed_at in microseconds since the epoch,
-- and is refused once that is no longer the account's (src/auth/session.rs). Signed-in
-- sessions from before this version began with the account's current password.
update sessions s
set data = s.data || jsonb_build_object(
        'password_set_at', (extract(epoch from u.password_changed_at) * 1000000)::bigint)
from users u
where s.user_id = u.id and not (s.data ? 'password_set_at');
