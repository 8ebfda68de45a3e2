-- "Forgot your password?" and sign-up requests, committed before the answer: the answer
-- is the same for every address (it must not tell which have accounts), so the work that
-- differs (a token and its mail, or nothing) runs after it. A row here is that work's
-- promise: whichever instance takes it turns it into a token and an outbox row in one
-- transaction that also deletes it, so a crash or failover after the answer delays the
-- mail but never loses it, and two instances never both do it.
create table mail_requests (
    id bigint generated always as identity primary key,
    kind text not null check (kind in ('reset', 'sign_up')),
    email text not null,
    -- sign-up only: the argon2id hash of the chosen password, as sign_ups keeps it
    password_hash text,
    requested_ip text,
    requested_user_agent text,
    created_at timestamptz not null default now(),
    -- a request whose work failed waits before it is tried again (attempts counts them)
    attempts integer not null default 0,
    not_before timestamptz not null default now(),
    check ((kind = 'sign_up') = (password_hash is not null))
);
create index mail_requests_not_before on mail_requests (not_before);
