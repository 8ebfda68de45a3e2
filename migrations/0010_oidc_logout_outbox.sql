-- Back-channel logout deliveries are an outbox like the mail one: named so, for the
-- operator and for tools that tell the delivery workers' statements from a request's.
alter table oidc_logout_deliveries rename to oidc_logout_outbox;
alter index oidc_logout_deliveries_due rename to oidc_logout_outbox_due;

create or replace function oidc_session_ended() returns trigger language plpgsql as $$
begin
    with ended as (
        update oidc_grants set revoked_at = now()
        where session_hash = old.id_hash and revoked_at is null
        returning client_id, user_id, sid, redeemed_at
    )
    insert into oidc_logout_outbox (client_id, user_id, sid)
    select distinct e.client_id, e.user_id, e.sid
    from ended e join oidc_clients c on c.id = e.client_id
    where e.redeemed_at is not null and c.backchannel_logout_uri is not null;
    return null;
end
$$;
