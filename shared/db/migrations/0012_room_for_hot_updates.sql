-- The rows every usage batch adds to (counters and the three rollups) are updated in place thousands of times a
-- second. With room left on each page, PostgreSQL writes the new version beside the old one without touching the
-- indexes (a HOT update); at the default fillfactor of 100 most of these updates found their page full and wrote
-- every index again. Applies to pages written from now on.
ALTER TABLE usage_counters SET (fillfactor = 70);
ALTER TABLE usage_rollups SET (fillfactor = 70);
ALTER TABLE usage_rollups_by_model SET (fillfactor = 70);
ALTER TABLE usage_rollups_by_month SET (fillfactor = 70);
