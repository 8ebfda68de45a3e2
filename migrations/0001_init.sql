-- latchkey schema: accounts, sessions, throttles, reset tokens, outbox, audit.

create table users (
    id uuid primary key default gen_random_uuid(),
    email text not null,
    password_hash text not null,
    password_changed_at timestamptz not null default now(),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
-- Addresses are unique regardless of case: Alice@Example.com and alice@example.com are one account.
create unique index users_email_key on users (lower(email));

-- Server-side sessions (the tower-sessions store). The id is stored only as a SHA-256
-- digest; user_id is copied out of the session data so revocation is one indexed delete.
create table sessions (
    id_hash bytea primary key,
    public_id uuid not null default gen_random_uuid() unique,
    user_id uuid references users (id) on delete cascade,
    data jsonb not null,
    ip text,
    user_agent text,
    created_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index sessions_user_id on sessions (user_id) where user_id is not null;
create index sessions_expires_at on sessions (expires_at);

-- Consecutive failed sign-ins per normalised address (whether or not an account exists).
create table login_throttle (
    email_key text primary key,
    failures int not null default 0,
    blocked_until timestamptz,
    updated_at timestamptz not null default now()
);

-- Fixed one-minute windows of attempts per client IP and action.
create table ip_throttle (
    scope text not null,
    ip text not null,
    window_start timestamptz not null,
    attempts int not null,
    primary key (scope, ip)
);

create table reset_tokens (
    id bigserial primary key,
    token_hash bytea not null unique,
    user_id uuid not null references users (id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz,
    requested_ip text
);
create index reset_tokens_user_id on reset_tokens (user_id);

create table outbox (
    id bigserial primary key,
    to_address text not null,
    subject text not null,
    text_body text,
    html_body text,
    status text not null default 'pending' check (status in ('pending', 'sent', 'failed')),
    attempts int not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error text,
    created_at timestamptz not null default now(),
    sent_at timestamptz
);
create index outbox_due on outbox (next_attempt_at) where status = 'pending';

create table audit_events (
    id bigserial primary key,
    user_id uuid references users (id) on delete cascade,
    kind text not null,
    email text,
    ip text,
    user_agent text,
    detail text,
    created_at timestamptz not null default now()
);
create index audit_events_user_id on audit_events (user_id, created_at desc);
