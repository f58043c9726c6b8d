-- Certificate principals: an X.509 subject (its canonical RFC 4514 DN) mapped to a name and
-- scopes, kept like API tokens (expiry, last use, revocation). A client whose verified
-- certificate (or RFC 3820 proxy of it) has a live mapping's subject is that principal.
CREATE TABLE certificate_principals (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._@-]{1,100}$'),
    dn           text NOT NULL CHECK (length(dn) BETWEEN 1 AND 1024),
    scopes       text[] NOT NULL CHECK (scopes <@ ARRAY['read', 'write', 'admin']::text[]
                                        AND cardinality(scopes) > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- One subject, one live principal: a request is never two people. Also the lookup's index.
CREATE UNIQUE INDEX certificate_principals_dn ON certificate_principals (dn)
    WHERE revoked_at IS NULL;
