-- Self-service sign-up (LATCHKEY_SIGN_UP=open). One row per sign-up request: for a new
-- address it holds the link's token (only as its SHA-256 digest) and the chosen password
-- (only as its argon2id hash) until the link is confirmed, expires or is voided by a newer
-- request; for an address that already has an account it holds neither (the mail says so
-- and carries no token) and is kept only to count the address's requests per hour.
create table sign_ups (
    id bigserial primary key,
    email text not null,
    email_key text not null,
    token_hash bytea unique,
    password_hash text,
    requested_ip text,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz,
    constraint sign_ups_token_with_password check ((token_hash is null) = (password_hash is null))
);
create index sign_ups_email_key_created_at on sign_ups (email_key, created_at);
