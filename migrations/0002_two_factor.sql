-- Two-factor authentication (TOTP, RFC 6238) with single-use recovery codes.

alter table users
    -- Encrypted with a key derived from LATCHKEY_SECRET_KEY: nonce || ciphertext.
    add column totp_secret_enc bytea,
    -- A secret shown on the setup page, not yet confirmed with a code.
    add column totp_pending_enc bytea,
    add column totp_enabled_at timestamptz,
    -- The last 30-second step whose code was accepted: a code works once.
    add column totp_last_step bigint;

create table recovery_codes (
    id bigserial primary key,
    user_id uuid not null references users (id) on delete cascade,
    -- HMAC-SHA256 under a server key: a leaked table cannot be brute-forced offline.
    code_hash bytea not null,
    used_at timestamptz,
    created_at timestamptz not null default now(),
    unique (user_id, code_hash)
);

-- Wrong two-factor codes entered on a reset form; the link dies after five.
alter table reset_tokens add column failed_codes int not null default 0;
