-- Attempts in flight per address: each password or code check reserves one before it
-- starts and settles it after (src/store/throttle.rs), so concurrent attempts are held to
-- the free failures that remain. A count not touched for a minute is void (a process died
-- mid-attempt), so it can never lock an address for good.
alter table login_throttle
    add column pending int not null default 0,
    add column pending_since timestamptz;
