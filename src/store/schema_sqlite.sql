-- apa-gateway storage, SQLite dialect. See docs/storage.md for the design.
CREATE TABLE IF NOT EXISTS resource (
    pk      INTEGER PRIMARY KEY,
    rtype   TEXT    NOT NULL,
    id      TEXT    NOT NULL,
    version INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS resource_type_id ON resource (rtype, id);
CREATE INDEX IF NOT EXISTS resource_type_updated ON resource (rtype, updated);
CREATE INDEX IF NOT EXISTS resource_type_pk ON resource (rtype, pk);

CREATE TABLE IF NOT EXISTS resource_version (
    vpk     INTEGER PRIMARY KEY,
    pk      INTEGER NOT NULL,
    version INTEGER NOT NULL,
    rtype   TEXT    NOT NULL,
    updated INTEGER NOT NULL,
    method  INTEGER NOT NULL,
    body    BLOB,
    -- The patients this version concerns, space-separated ('' for none;
    -- NULL in versions stored before 2026-11): what its audit record
    -- names, read with the version (docs/storage.md).
    patients TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS resource_version_pk ON resource_version (pk, version);
CREATE INDEX IF NOT EXISTS resource_version_type ON resource_version (rtype, vpk);
CREATE INDEX IF NOT EXISTS resource_version_updated ON resource_version (updated);

CREATE TABLE IF NOT EXISTS idx_token (
    param INTEGER NOT NULL, code INTEGER NOT NULL, pk INTEGER NOT NULL, sys INTEGER NOT NULL,
    PRIMARY KEY (param, code, pk, sys)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_token_pk ON idx_token (pk, param);

CREATE TABLE IF NOT EXISTS idx_string (
    param INTEGER NOT NULL, norm TEXT NOT NULL, pk INTEGER NOT NULL, exact TEXT NOT NULL,
    PRIMARY KEY (param, norm, pk, exact)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_string_pk ON idx_string (pk, param);

CREATE TABLE IF NOT EXISTS idx_date (
    param INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, pk INTEGER NOT NULL,
    PRIMARY KEY (param, lo, hi, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_date_hi ON idx_date (param, hi);
CREATE INDEX IF NOT EXISTS idx_date_pk ON idx_date (pk, param);

CREATE TABLE IF NOT EXISTS idx_number (
    param INTEGER NOT NULL, value REAL NOT NULL, pk INTEGER NOT NULL,
    PRIMARY KEY (param, value, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_number_pk ON idx_number (pk, param);

CREATE TABLE IF NOT EXISTS idx_quantity (
    param INTEGER NOT NULL, value REAL NOT NULL, pk INTEGER NOT NULL, code INTEGER NOT NULL, sys INTEGER NOT NULL,
    PRIMARY KEY (param, value, pk, code, sys)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_quantity_pk ON idx_quantity (pk, param);

CREATE TABLE IF NOT EXISTS idx_reference (
    param INTEGER NOT NULL, ttype TEXT NOT NULL, tid TEXT NOT NULL, pk INTEGER NOT NULL,
    PRIMARY KEY (param, ttype, tid, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_reference_pk ON idx_reference (pk, param);
CREATE INDEX IF NOT EXISTS idx_reference_target ON idx_reference (ttype, tid);

CREATE TABLE IF NOT EXISTS idx_uri (
    param INTEGER NOT NULL, value TEXT NOT NULL, pk INTEGER NOT NULL,
    PRIMARY KEY (param, value, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_uri_pk ON idx_uri (pk, param);

-- Organisation compartments (docs/storage.md): the patients each resource
-- has ever concerned (kept after deletion, so that history stays guarded),
-- and which party may see which patient (`denied`: the patient's consent
-- withholds it for now, see security/consent.rs).
CREATE TABLE IF NOT EXISTS resource_patient (
    pk      INTEGER NOT NULL,
    patient TEXT    NOT NULL,
    PRIMARY KEY (pk, patient)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS access_grant (
    party   TEXT NOT NULL,
    patient TEXT NOT NULL,
    denied  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (party, patient)
) WITHOUT ROWID;

-- Security: registered clients, seen client-assertion ids (replay), server secrets.
CREATE TABLE IF NOT EXISTS client (
    id       TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    organization TEXT,
    scope    TEXT NOT NULL,
    jwks     TEXT,
    jwks_url TEXT,
    tls_cert_sha256 TEXT,
    created  INTEGER NOT NULL,
    revoked  INTEGER
);
CREATE TABLE IF NOT EXISTS client_jti (
    client_id TEXT NOT NULL,
    jti       TEXT NOT NULL,
    expires   INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE TABLE IF NOT EXISTS server_secret (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

-- The search parameters each resource type was indexed with (a hash of
-- them): when they change, the stored resources of the type are indexed
-- again at start (store/reindex.rs).
CREATE TABLE IF NOT EXISTS index_fingerprint (
    rtype       TEXT PRIMARY KEY,
    fingerprint INTEGER NOT NULL
);

-- Idempotency keys of the flat API: per client and key, the hash of the
-- request and the response given (status, JSON body), kept so that a
-- retry gets the same answer and another request under the key a 409.
CREATE TABLE IF NOT EXISTS idempotency (
    client       TEXT    NOT NULL,
    ikey         TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    status       INTEGER NOT NULL,
    response     TEXT    NOT NULL,
    created      INTEGER NOT NULL,
    PRIMARY KEY (client, ikey)
) WITHOUT ROWID;
