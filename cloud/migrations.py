"""Versioned schema migrations, applied in order at start (``schema_migrations`` records them).

Every migration is plain PostgreSQL. When the TimescaleDB extension is present
the ``TIMESCALE`` steps run after the plain ones (hypertable, compression,
retention, the continuous aggregate ``site_hourly``); otherwise ``site_hourly``
is a plain view with the same columns, so every query reads the same names on
both engines. ``charger_daily`` is a roll-up table the ingest path maintains
on both engines; the fleet views read it.
Migrations run under an advisory lock so replicas starting together apply
each one once.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "base schema",
        """
CREATE TABLE sites (
    site_id text PRIMARY KEY,
    name text,
    currency text,
    price_per_kwh double precision,
    state text,
    state_at timestamptz,
    last_data_at timestamptz,
    info jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE chargers (
    charge_point_id text PRIMARY KEY,
    site_id text NOT NULL,
    vendor text,
    model text,
    firmware text,
    connectors int,
    rated_power_w double precision,
    last_data_at timestamptz
);
CREATE INDEX chargers_site ON chargers (site_id);
CREATE TABLE messages (
    message_id text PRIMARY KEY,
    site_id text NOT NULL,
    kind text NOT NULL,
    sent_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE escalations (
    message_id text PRIMARY KEY,
    site_id text NOT NULL,
    incident_id text NOT NULL,
    kind text NOT NULL,
    scope text NOT NULL,
    charge_point_id text,
    connector_id int,
    status text NOT NULL,
    category text NOT NULL,
    fault_code text NOT NULL,
    vendor_code text,
    hw_vendor text,
    hw_model text,
    hw_firmware text,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    sent_at timestamptz NOT NULL,
    body jsonb NOT NULL
);
CREATE INDEX escalations_site ON escalations (site_id, started_at);
CREATE INDEX escalations_signature ON escalations (fault_code, hw_model, started_at);
CREATE TABLE digests (
    message_id text PRIMARY KEY,
    site_id text NOT NULL,
    interval_start timestamptz NOT NULL,
    interval_end timestamptz NOT NULL,
    currency text,
    price_per_kwh double precision,
    cleared_incidents text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX digests_site ON digests (site_id, interval_end);
CREATE TABLE charger_intervals (
    site_id text NOT NULL,
    charge_point_id text NOT NULL,
    interval_start timestamptz NOT NULL,
    interval_end timestamptz NOT NULL,
    message_id text NOT NULL,
    vendor text,
    model text,
    firmware text,
    connectors int,
    connected_s double precision NOT NULL,
    disconnects int NOT NULL,
    faults int NOT NULL,
    self_resolved int NOT NULL,
    sessions_started int NOT NULL,
    sessions_failed int NOT NULL,
    sessions_ended_early int NOT NULL,
    energy_wh double precision NOT NULL,
    max_power_w double precision,
    rated_power_w double precision,
    max_temperature_c double precision,
    mean_temperature_c double precision,
    resets int NOT NULL,
    health_score double precision,
    anomaly_score double precision
);
CREATE INDEX charger_intervals_cp ON charger_intervals (charge_point_id, interval_start);
CREATE INDEX charger_intervals_site ON charger_intervals (site_id, interval_start);
CREATE TABLE self_resolved (
    site_id text NOT NULL,
    incident_id text NOT NULL,
    message_id text NOT NULL,
    charge_point_id text,
    connector_id int,
    scope text NOT NULL,
    kind text NOT NULL,
    fault_code text NOT NULL,
    category text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL,
    fixed_by text NOT NULL,
    PRIMARY KEY (site_id, incident_id)
);
CREATE INDEX self_resolved_site ON self_resolved (site_id, started_at);
CREATE TABLE replies (
    message_id text PRIMARY KEY,
    site_id text NOT NULL,
    request_id text NOT NULL,
    body jsonb NOT NULL
);
CREATE TABLE dead_letters (
    id bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    last_received_at timestamptz NOT NULL DEFAULT now(),
    fingerprint text NOT NULL UNIQUE,
    times int NOT NULL DEFAULT 1,
    topic text NOT NULL,
    reason text NOT NULL,
    payload bytea NOT NULL
);
CREATE TABLE issues (
    id text PRIMARY KEY,
    site_id text NOT NULL,
    scope text NOT NULL,
    charge_point_id text,
    connector_id int,
    signature text NOT NULL,
    kind text NOT NULL,
    status text NOT NULL,
    resolution text,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    last_seen_at timestamptz NOT NULL,
    priority double precision NOT NULL DEFAULT 0,
    doc jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX issues_one_unresolved ON issues
    (site_id, scope, coalesce(charge_point_id, ''), coalesce(connector_id, -1), signature)
    WHERE status <> 'resolved';
CREATE INDEX issues_status_priority ON issues (status, priority DESC);
CREATE INDEX issues_site ON issues (site_id, status);
CREATE INDEX issues_signature ON issues (signature);
CREATE TABLE issue_incidents (
    site_id text NOT NULL,
    incident_id text NOT NULL,
    issue_id text NOT NULL,
    PRIMARY KEY (site_id, incident_id)
);
CREATE TABLE charger_daily (
    charge_point_id text NOT NULL,
    day date NOT NULL,
    site_id text NOT NULL,
    vendor text,
    model text,
    firmware text,
    intervals int NOT NULL DEFAULT 0,
    covered_s double precision NOT NULL DEFAULT 0,
    connected_s double precision NOT NULL DEFAULT 0,
    disconnects int NOT NULL DEFAULT 0,
    faults int NOT NULL DEFAULT 0,
    self_resolved int NOT NULL DEFAULT 0,
    sessions_started int NOT NULL DEFAULT 0,
    sessions_failed int NOT NULL DEFAULT 0,
    sessions_ended_early int NOT NULL DEFAULT 0,
    energy_wh double precision NOT NULL DEFAULT 0,
    health_sum double precision NOT NULL DEFAULT 0,
    health_n int NOT NULL DEFAULT 0,
    PRIMARY KEY (charge_point_id, day)
);
CREATE INDEX charger_daily_model ON charger_daily (model, firmware, day);
CREATE INDEX charger_daily_site ON charger_daily (site_id, day);
CREATE TABLE network (
    id int PRIMARY KEY,
    doc jsonb NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
""",
    ),
    (
        2,
        "index charger intervals by hardware model (related units by early symptoms)",
        "CREATE INDEX IF NOT EXISTS charger_intervals_model ON charger_intervals (model, interval_start);",
    ),
    (
        3,
        "daily roll-up per hardware model and firmware (fleet views)",
        """
CREATE TABLE model_daily (
    day date NOT NULL,
    vendor text NOT NULL DEFAULT '',
    model text NOT NULL DEFAULT '',
    firmware text NOT NULL DEFAULT '',
    covered_s double precision NOT NULL DEFAULT 0,
    self_resolved bigint NOT NULL DEFAULT 0,
    health_sum double precision NOT NULL DEFAULT 0,
    health_n bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, vendor, model, firmware)
);
INSERT INTO model_daily
SELECT day, coalesce(vendor, ''), coalesce(model, ''), coalesce(firmware, ''), sum(covered_s),
       sum(self_resolved), sum(health_sum), sum(health_n)
FROM charger_daily GROUP BY 1, 2, 3, 4;
""",
    ),
    (
        4,
        "fault categories and Foresight features per charger interval (training/edge parity)",
        """
ALTER TABLE charger_intervals ADD COLUMN IF NOT EXISTS faults_by_category jsonb NOT NULL
    DEFAULT '{}';
ALTER TABLE charger_intervals ADD COLUMN IF NOT EXISTS features jsonb;
""",
    ),
    (
        5,
        "vendor codes of self-resolved incidents; per-charger lookups (repeating faults)",
        """
ALTER TABLE self_resolved ADD COLUMN IF NOT EXISTS vendor_code text;
CREATE INDEX IF NOT EXISTS self_resolved_charger ON self_resolved (charge_point_id, started_at);
""",
    ),
    (
        6,
        "connector occupancy per charger interval (revenue: how long a session keeps a connector)",
        """
ALTER TABLE charger_intervals ADD COLUMN IF NOT EXISTS occupied_s double precision;
""",
    ),
    (
        7,
        "operators' requests to edge agents (their replies are in replies)",
        """
CREATE TABLE IF NOT EXISTS edge_requests (
    request_id text PRIMARY KEY,
    site_id text NOT NULL,
    kind text NOT NULL,
    params jsonb NOT NULL,
    requested_by text,
    sent_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_request ON replies (request_id);
""",
    ),
    (
        8,
        "each connector's health as the edge scored it",
        """
ALTER TABLE charger_intervals ADD COLUMN IF NOT EXISTS connector_health jsonb;
""",
    ),
    (
        9,
        "room on the roll-up tables' pages for in-place (HOT) updates",
        # every stored digest updates its chargers' day rows and its model's day row: with
        # full pages each update writes a new tuple elsewhere plus an entry in every index;
        # with 30 % free, the new version lands on the same page and no index is touched
        # (the updated columns are counters, in no index). Pages written from now on.
        """
ALTER TABLE charger_daily SET (fillfactor = 70);
ALTER TABLE model_daily SET (fillfactor = 70);
""",
    ),
    (
        10,
        "the sessions a self-resolved fault cut short, as the edge measured",
        """
ALTER TABLE self_resolved ADD COLUMN IF NOT EXISTS sessions_cut int;
ALTER TABLE self_resolved ADD COLUMN IF NOT EXISTS energy_unmet_wh double precision;
""",
    ),
    (
        11,
        "stored but not yet analysed: one row per stored batch until its analysis succeeded",
        # ``owner`` is the collector that will analyse the batch; it holds the session advisory
        # lock (ANALYSIS_OWNER_LOCK, owner) while it lives, so a collector that can take that
        # lock knows the owner is gone and analyses its rows (cloud/catchup.py).
        # ``escalations.analysed_at``: an escalation is applied to its issue once, whoever
        # analyses it and however often.
        """
CREATE TABLE IF NOT EXISTS unanalysed (
    batch_key text PRIMARY KEY,
    owner int NOT NULL,
    message_ids text[] NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now(),
    attempts int NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS unanalysed_owner ON unanalysed (owner, stored_at);
CREATE SEQUENCE IF NOT EXISTS analysis_owner_seq AS int;
ALTER TABLE escalations ADD COLUMN IF NOT EXISTS analysed_at timestamptz;
""",
    ),
]

PLAIN_VIEWS = """
CREATE OR REPLACE VIEW site_hourly AS
SELECT site_id, date_trunc('hour', interval_start) AS hour,
       sum(sessions_started) AS sessions_started, sum(energy_wh) AS energy_wh,
       sum(faults) AS faults, sum(disconnects) AS disconnects
FROM charger_intervals
GROUP BY site_id, date_trunc('hour', interval_start);
"""

TIMESCALE = [
    "CREATE EXTENSION IF NOT EXISTS timescaledb",
    "SELECT create_hypertable('charger_intervals', 'interval_start', if_not_exists => TRUE,"
    " migrate_data => TRUE)",
    "ALTER TABLE charger_intervals SET (timescaledb.compress,"
    " timescaledb.compress_segmentby = 'charge_point_id')",
    "SELECT add_compression_policy('charger_intervals', INTERVAL '{compress} days',"
    " if_not_exists => TRUE)",
    "SELECT add_retention_policy('charger_intervals', INTERVAL '{retention} days',"
    " if_not_exists => TRUE)",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS site_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT site_id, time_bucket(INTERVAL '1 hour', interval_start) AS hour,
       sum(sessions_started) AS sessions_started, sum(energy_wh) AS energy_wh,
       sum(faults) AS faults, sum(disconnects) AS disconnects
FROM charger_intervals
GROUP BY site_id, time_bucket(INTERVAL '1 hour', interval_start)
WITH NO DATA""",
    "SELECT add_continuous_aggregate_policy('site_hourly', start_offset => INTERVAL '30 days',"
    " end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour',"
    " if_not_exists => TRUE)",
]
