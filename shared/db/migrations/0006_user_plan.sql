-- The subscription that sets each user's plan, defined once. Billing's limit checks, status and change events and
-- usage-sync's counter periods all read it: if they picked different rows, usage-sync would write counters under one
-- period and billing would read them under another.
-- Order: entitled first (active, trialing, past_due = shared/plans.py ENTITLED_STATUSES), then the higher plan
-- (team > pro = PLAN_RANK), then the newest snapshot. Rows without a known plan never set one.
-- tests/integration/test_user_plan.py holds this definition to the Python constants.
CREATE VIEW user_plan AS
SELECT DISTINCT ON (user_id)
       user_id, id, plan, status,
       status IN ('active', 'trialing', 'past_due') AS entitled,
       current_period_start, current_period_end, cancel_at_period_end
FROM subscriptions
WHERE user_id IS NOT NULL AND plan IS NOT NULL
ORDER BY user_id,
         status IN ('active', 'trialing', 'past_due') DESC,
         CASE plan WHEN 'team' THEN 2 WHEN 'pro' THEN 1 ELSE 0 END DESC,
         version DESC, event_ts DESC, id;
