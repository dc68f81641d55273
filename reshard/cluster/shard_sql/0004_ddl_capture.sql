-- DDL capture (reshard/ddl/capture.py). An event trigger (created apart, it needs a
-- superuser once) compares each watched table's shape after every DDL command with the
-- shape recorded here; a change is logged with the statement, both shapes and the WAL
-- position, for the applier's DDL follower to place on the destinations. reshard's own
-- DDL sessions (reshard.ddl_apply = on) move the recorded shape without logging.
CREATE TABLE IF NOT EXISTS reshard.ddl_watch (
    migration text  NOT NULL,
    tbl       text  NOT NULL,
    relid     oid   NOT NULL,
    shape     jsonb,
    PRIMARY KEY (migration, tbl)
);

CREATE TABLE IF NOT EXISTS reshard.ddl_log (
    id        bigserial   PRIMARY KEY,
    migration text        NOT NULL,
    tbl       text        NOT NULL,
    tag       text        NOT NULL,
    statement text        NOT NULL,
    before    jsonb,
    after     jsonb,
    lsn       pg_lsn      NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ddl_log_migration ON reshard.ddl_log (migration, id);

-- A table's shape: what a destination must match for rows of either shape to apply.
-- NOT NULL constraints (pg_constraint 'n' on 18) are read from attnotnull instead.
CREATE OR REPLACE FUNCTION reshard.table_shape(rel oid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
SELECT jsonb_build_object(
    'table', format('%s.%s', n.nspname, c.relname),
    'columns', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'num', a.attnum, 'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                   'notnull', a.attnotnull, 'default', pg_get_expr(d.adbin, d.adrelid),
                   'generated', a.attgenerated::text, 'identity', a.attidentity::text) ORDER BY a.attnum)
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'::jsonb),
    'indexes', coalesce((
        SELECT jsonb_agg(jsonb_build_object('name', ic.relname, 'def', pg_get_indexdef(i.indexrelid),
                                            'unique', i.indisunique) ORDER BY ic.relname)
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = c.oid
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = c.oid)),
        '[]'::jsonb),
    'constraints', coalesce((
        SELECT jsonb_agg(jsonb_build_object('name', k.conname, 'type', k.contype::text,
                                            'def', pg_get_constraintdef(k.oid)) ORDER BY k.conname)
        FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype <> 'n'), '[]'::jsonb))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = rel
$$;

CREATE OR REPLACE FUNCTION reshard.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w        record;
    now_is   jsonb;
    own      boolean := coalesce(current_setting('reshard.ddl_apply', true), '') = 'on';
BEGIN
    FOR w IN SELECT migration, tbl, relid, shape FROM reshard.ddl_watch ORDER BY migration, tbl FOR UPDATE LOOP
        now_is := reshard.table_shape(w.relid);
        IF now_is IS DISTINCT FROM w.shape THEN
            UPDATE reshard.ddl_watch SET shape = now_is WHERE migration = w.migration AND tbl = w.tbl;
            IF NOT own THEN
                INSERT INTO reshard.ddl_log (migration, tbl, tag, statement, before, after, lsn)
                VALUES (w.migration, w.tbl, tg_tag, current_query(), w.shape, now_is, pg_current_wal_insert_lsn());
            END IF;
        END IF;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    -- never fail the application's DDL: an uncaptured change stops the applier as drift
    RAISE WARNING 'reshard: DDL capture failed (%): the applier will pause on the schema drift', SQLERRM;
END
$$;
