-- The OpenID Connect provider: clients, signing keys, consents, grants and what hangs off
-- a grant (codes, access tokens, refresh tokens), authorization requests waiting for a
-- sign-in, and back-channel logout deliveries. Every secret is stored as a SHA-256 digest
-- (codes, tokens, client secrets: 256 random bits each) or sealed (private keys).

create table oidc_clients (
    id text primary key,
    name text not null,
    -- sha-256 of the 256-bit random secret; null for a public client.
    secret_hash bytea,
    redirect_uris text[] not null,
    post_logout_redirect_uris text[] not null default '{}',
    backchannel_logout_uri text,
    skip_consent boolean not null default false,
    signing_alg text not null default 'RS256' check (signing_alg in ('RS256', 'ES256', 'EdDSA')),
    created_at timestamptz not null default now(),
    secret_rotated_at timestamptz
);

-- Private keys sealed under LATCHKEY_SECRET_KEY (nonce || XChaCha20-Poly1305, the kid as
-- associated data). One active key per algorithm; retired ones stay published a while.
create table oidc_signing_keys (
    kid text primary key,
    alg text not null check (alg in ('RS256', 'ES256', 'EdDSA')),
    private_enc bytea not null,
    public_jwk jsonb not null,
    created_at timestamptz not null default now(),
    retired_at timestamptz
);
create unique index oidc_signing_keys_active on oidc_signing_keys (alg) where retired_at is null;

create table oidc_consents (
    user_id uuid not null references users (id) on delete cascade,
    client_id text not null references oidc_clients (id) on delete cascade,
    scopes text[] not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (user_id, client_id)
);

-- One authorization: an account, a client, and the latchkey session that signed it in.
-- It lives as long as that session (the trigger below) and is revoked as a whole.
create table oidc_grants (
    id uuid primary key default gen_random_uuid(),
    client_id text not null references oidc_clients (id) on delete cascade,
    user_id uuid not null references users (id) on delete cascade,
    session_hash bytea not null,
    sid text not null,
    scopes text[] not null,
    nonce text,
    auth_time timestamptz not null,
    amr text[] not null,
    created_at timestamptz not null default now(),
    redeemed_at timestamptz,
    revoked_at timestamptz
);
create index oidc_grants_session on oidc_grants (session_hash) where revoked_at is null;
create index oidc_grants_user_client on oidc_grants (user_id, client_id);

create table oidc_codes (
    code_hash bytea primary key,
    grant_id uuid not null references oidc_grants (id) on delete cascade,
    redirect_uri text not null,
    code_challenge text,
    expires_at timestamptz not null,
    used_at timestamptz
);

create table oidc_access_tokens (
    token_hash bytea primary key,
    grant_id uuid not null references oidc_grants (id) on delete cascade,
    expires_at timestamptz not null,
    revoked_at timestamptz
);
create index oidc_access_tokens_grant on oidc_access_tokens (grant_id);

-- Rotated at each use: a token's children name it as parent. Children made within the
-- grace window are siblings; the first sibling used ends the others.
create table oidc_refresh_tokens (
    token_hash bytea primary key,
    grant_id uuid not null references oidc_grants (id) on delete cascade,
    parent_hash bytea,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz,
    revoked_at timestamptz
);
create index oidc_refresh_tokens_grant on oidc_refresh_tokens (grant_id);
create index oidc_refresh_tokens_parent on oidc_refresh_tokens (parent_hash) where parent_hash is not null;

-- An authorization request waiting for a sign-in or a consent answer.
create table oidc_requests (
    id_hash bytea primary key,
    params jsonb not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);

-- Back-channel logout tokens to deliver (signed at delivery), retried until delivered.
create table oidc_logout_deliveries (
    id bigserial primary key,
    client_id text not null references oidc_clients (id) on delete cascade,
    user_id uuid not null,
    sid text not null,
    status text not null default 'pending' check (status in ('pending', 'sent', 'failed')),
    attempts int not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error text,
    created_at timestamptz not null default now(),
    sent_at timestamptz
);
create index oidc_logout_deliveries_due on oidc_logout_deliveries (next_attempt_at) where status = 'pending';

-- Whatever deletes a session (sign-out, sign out other sessions, a reset or change, the
-- operator's disable and sign-out, housekeeping's expiry, a new session id) revokes the
-- grants it authorized in the same transaction, and queues a back-channel logout for
-- each client that holds tokens from it.
create function oidc_session_ended() returns trigger language plpgsql as $$
begin
    with ended as (
        update oidc_grants set revoked_at = now()
        where session_hash = old.id_hash and revoked_at is null
        returning client_id, user_id, sid, redeemed_at
    )
    insert into oidc_logout_deliveries (client_id, user_id, sid)
    select distinct e.client_id, e.user_id, e.sid
    from ended e join oidc_clients c on c.id = e.client_id
    where e.redeemed_at is not null and c.backchannel_logout_uri is not null;
    return null;
end
$$;
create trigger sessions_end_oidc_grants after delete on sessions
    for each row execute function oidc_session_ended();
