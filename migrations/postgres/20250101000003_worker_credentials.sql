-- Worker session credentials: the SHA-256 (hex) of the secret the scheduler
-- issued with each worker id at Register. A registration or Hello for a known
-- id must present the secret; NULL for workers registered before credentials
-- existed (they are bound at their next registration).
ALTER TABLE workers ADD COLUMN credential_sha256 TEXT;
