-- Queued bodies are sealed until delivered: nonce || XChaCha20-Poly1305 ciphertext of the
-- text and html bodies, with a key derived from LATCHKEY_SECRET_KEY. text_body/html_body
-- stay for rows queued before this migration, which are still delivered.
alter table outbox
    add column body_enc bytea,
    -- A stable name for the last failure (certificate_not_trusted, auth_refused, …) and when.
    add column last_error_class text,
    add column last_error_at timestamptz;
