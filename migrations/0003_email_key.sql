-- One lookup key per account, computed by the service (`EmailAddress::key`: NFKC, then
-- Unicode lowercase), so finding an account no longer depends on Postgres `lower()` and
-- Rust agreeing about non-ASCII letters.
alter table users add column email_key text;
-- Right for ASCII addresses; the service re-keys any non-ASCII address at start-up.
update users set email_key = lower(email);
alter table users alter column email_key set not null;
drop index users_email_key;
alter table users add constraint users_email_key_key unique (email_key);
