-- The gateway's shared state for several hosts: the prediction log, ground truth, alerts,
-- retrains and leases. JSON is kept as text (appending is the hot path); rows are ordered by
-- an identity column.
CREATE TABLE predictions (
    id BIGINT GENERATED ALWAYS AS IDENTITY,
    request_id TEXT PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    input TEXT NOT NULL,   -- the business object, JSON
    output TEXT NOT NULL   -- the answer, JSON
);
CREATE INDEX predictions_model ON predictions (model, version, id);

CREATE TABLE feedback (
    id BIGINT GENERATED ALWAYS AS IDENTITY,
    request_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,   -- JSON
    ts DOUBLE PRECISION NOT NULL
);

CREATE TABLE alerts (
    key TEXT PRIMARY KEY,  -- one firing episode: seen once, by any controller
    ts DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,  -- monitor | alertmanager
    detail TEXT NOT NULL   -- JSON: the drift window, or Alertmanager's labels
);

CREATE TABLE retrains (
    alert_id TEXT PRIMARY KEY,  -- the trigger recorded on the retrain's MLflow run
    alert_key TEXT,             -- the alert that started it
    model TEXT NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    host TEXT,
    pid INTEGER,
    finished DOUBLE PRECISION,
    result TEXT,                -- promoted | rejected | failed
    detail TEXT,
    version TEXT,
    log TEXT
);

CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL  -- seconds since the epoch, on the database's clock
);
