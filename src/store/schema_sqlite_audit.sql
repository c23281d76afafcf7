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
    detail   BLOB    NOT NULL,
    -- The first resource the event names (`Type/id`), the others in
    -- `audit_entity`: most events name one (a read), and one more index
    -- entry in this statement costs less than a row of another table
    -- inserted by a second one. (Added 2026-11: `SQLITE_AUDIT_ENTITY`.)
    entity   TEXT
);
-- No id in these indexes: SQLite ends every index entry with the rowid
-- (`seq`) anyway, and a search sorts the events of one instant by id as it
-- reads them; the id made each entry 37 bytes longer. (Until 2026-11 they
-- held it: dropped below, built once under the new names.)
CREATE INDEX IF NOT EXISTS audit_event_at ON audit_event (recorded);
CREATE INDEX IF NOT EXISTS audit_event_of_patient ON audit_event (patient, recorded) WHERE patient IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_event_of_client ON audit_event (client, recorded) WHERE client IS NOT NULL;
DROP INDEX IF EXISTS audit_event_recorded;
DROP INDEX IF EXISTS audit_event_patient;
DROP INDEX IF EXISTS audit_event_client;
-- The resources an event names after its first (`Type/id`), for
-- `entity=` searches.
CREATE TABLE IF NOT EXISTS audit_entity (
    ref   TEXT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (ref, event)
) WITHOUT ROWID;
