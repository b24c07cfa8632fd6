-- The gateway's shared state on one host: the prediction log, ground truth, alerts, retrains and
-- leases. JSON is kept as text; rows are ordered by SQLite's rowid.
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    input TEXT NOT NULL,   -- the business object, JSON
    output TEXT NOT NULL   -- the answer, JSON
);
CREATE INDEX IF NOT EXISTS predictions_model ON predictions (model, version);

CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,   -- JSON
    ts REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY,  -- one firing episode: seen once, by any controller
    ts REAL NOT NULL,
    source TEXT NOT NULL,  -- monitor | alertmanager
    detail TEXT NOT NULL   -- JSON: the drift window, or Alertmanager's labels
);

CREATE TABLE IF NOT EXISTS retrains (
    alert_id TEXT PRIMARY KEY,  -- the trigger recorded on the retrain's MLflow run
    alert_key TEXT,             -- the alert that started it
    model TEXT NOT NULL,
    started REAL NOT NULL,
    host TEXT,
    pid INTEGER,
    finished REAL,
    result TEXT,                -- promoted | rejected | failed
    detail TEXT,
    version TEXT,
    log TEXT
);

CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires REAL NOT NULL       -- seconds since the epoch, on the database's clock
);
