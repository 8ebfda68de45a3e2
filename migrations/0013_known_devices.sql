-- Browsers an account has signed in from: a long-lived, signed, host-only device cookie
-- names the browser; only its SHA-256 digest is kept. A sign-in from a browser not listed
-- for the account mails its owner "New sign-in to your account".
create table known_devices (
    user_id uuid not null references users (id) on delete cascade,
    device_hash bytea not null,
    first_seen_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    primary key (user_id, device_hash)
);
