-- Small operational state shared by every app instance.
-- indexing_color: the one blue/green color whose workers index. The deploy
-- switches it together with the traffic, so two versions never index at the
-- same time; absent = every color indexes (a single color, or before the
-- first switch).
CREATE TABLE IF NOT EXISTS app_state (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
