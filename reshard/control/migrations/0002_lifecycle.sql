-- The lifecycle an operator reads (reshard/control/states.py): snapshotting is now
-- building, cut_over baking, completed complete; validating, switching, rolled_back and
-- finalizing are new. A migration stored under an old name is renamed in place.
UPDATE reshard.migrations SET state = CASE state
    WHEN 'snapshotting' THEN 'building'
    WHEN 'cut_over' THEN 'baking'
    WHEN 'completed' THEN 'complete'
    ELSE state END
WHERE state IN ('snapshotting', 'cut_over', 'completed');
