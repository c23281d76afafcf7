-- The audit trail (docs/audit.md), SQLite dialect: in the database file (the
-- events of writes, in the transaction of the change) and, alone, in the
-- trail file (the events of requests that changed nothing). Append-only,
-- one narrow row per event with the columns auditors search by; `detail` is
-- the rest, opaque to the store. Ids are time-ordered (UUID v7), so every
-- index but the patient's and the entities' grows at its end.
CREATE TABLE IF NOT EXISTS audit_event (
    seq      INTEGER PRIMARY KEY,
    id       TEXT    NOT NULL UNIQUE,
    recorded INTEGER NOT NULL,
    client   TEXT,
    patient  TEXT,
    subtype  TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    outcome  TEXT    NOT NULL,
    network  TEXT,
    detail   BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_event_recorded ON audit_event (recorded, id);
CREATE INDEX IF NOT EXISTS audit_event_patient ON audit_event (patient, recorded, id) WHERE patient IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_event_client ON audit_event (client, recorded, id) WHERE client IS NOT NULL;
-- The resources an event is about (`Type/id`), for `entity=` searches.
CREATE TABLE IF NOT EXISTS audit_entity (
    ref   TEXT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (ref, event)
) WITHOUT ROWID;
