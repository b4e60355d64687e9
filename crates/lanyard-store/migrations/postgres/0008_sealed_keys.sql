-- Keys every server needs (issue #16): the secrets-sealing key, the token-signing
-- key and each server's audit checkpoint key, sealed under the servers' shared
-- key-encryption key (AES-256-GCM, the name as associated data). The datastore
-- never holds them in the clear. The first server to store one wins.
CREATE TABLE sealed_keys (
    name        TEXT PRIMARY KEY NOT NULL,   -- secrets, token-signing, audit/<server>
    sealed      TEXT NOT NULL,               -- base64url(nonce || ciphertext || tag)
    kek_id      TEXT NOT NULL,               -- which KEK sealed it (SHA-256 prefix, hex)
    created_at  BIGINT NOT NULL
);
