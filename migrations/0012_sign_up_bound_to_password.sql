-- A sign-up link is bound to the password chosen with it: confirming asks for that
-- password again. Wrong tries are counted on the link (void after 5), and a new request
-- for the address no longer voids older links: the first confirmed link makes the
-- account and voids the others.
alter table sign_ups add column failed_attempts integer not null default 0;
