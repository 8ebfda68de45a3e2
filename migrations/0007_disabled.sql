-- An operator can disable an account (`latchkey user disable`): while disabled_at is set
-- the account cannot sign in, its sessions are refused, and reset links do nothing.
alter table users add column disabled_at timestamptz;
