-- The snapshot copy's keyset cursors become one per chunk of a (move, table) unit:
-- a unit is split into key-range chunks copied in parallel. A chunk covers the keys
-- (chunk_lower, chunk_upper] (NULL: unbounded); its cursor starts at chunk_lower and
-- ends at chunk_upper (done). Cursors from before are chunk 0, unbounded.
ALTER TABLE reshard.copy_cursor ADD COLUMN IF NOT EXISTS chunk integer NOT NULL DEFAULT 0;
ALTER TABLE reshard.copy_cursor ADD COLUMN IF NOT EXISTS chunk_lower jsonb;
ALTER TABLE reshard.copy_cursor ADD COLUMN IF NOT EXISTS chunk_upper jsonb;
DO $$
BEGIN
    IF (SELECT array_length(conkey, 1) FROM pg_constraint
        WHERE conrelid = 'reshard.copy_cursor'::regclass AND contype = 'p') = 3 THEN
        ALTER TABLE reshard.copy_cursor DROP CONSTRAINT copy_cursor_pkey,
            ADD PRIMARY KEY (migration, move_id, tbl, chunk);
    END IF;
END
$$;
