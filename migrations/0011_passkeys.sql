-- Passkeys (WebAuthn discoverable credentials) and the server-side state of their
-- ceremonies. The account id is the credential's user handle.

create table passkeys (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references users (id) on delete cascade,
    -- The credential id the authenticator chose; unique across every account.
    credential_id bytea not null unique,
    -- webauthn-rs's `Passkey` as JSON: the public key, counter and flags it verifies with.
    passkey text not null,
    -- Copies of what the serialised passkey holds, for the guard on the counter and for
    -- people: the signature counter (0 for synced passkeys, which keep no counter) and
    -- the backup flags (eligible: a synced passkey; state: backed up now).
    counter bigint not null default 0,
    backup_eligible boolean not null default false,
    backup_state boolean not null default false,
    name text not null,
    created_at timestamptz not null default now(),
    last_used_at timestamptz
);
create index passkeys_user_id on passkeys (user_id, created_at);

-- A registration or authentication in progress: used once (deleted as it is read),
-- valid five minutes, bound to the browser that began it, readable by any instance.
create table passkey_ceremonies (
    id uuid primary key default gen_random_uuid(),
    -- 'register', 'sign_in' or 'reset'.
    purpose text not null,
    -- The account a registration or a reset is for; none for a discoverable sign-in.
    user_id uuid references users (id) on delete cascade,
    -- SHA-256 of the browser's CSRF cookie: another browser cannot finish it.
    binding bytea not null,
    -- webauthn-rs's registration or authentication state as JSON.
    state text not null,
    expires_at timestamptz not null
);
create index passkey_ceremonies_expires_at on passkey_ceremonies (expires_at);
