-- Least privilege for reshard: the roles and grants its own sessions need, with no superuser.
-- Run as a superuser (or the database owner where noted) on each cluster, in the
-- application database. PostgreSQL 15 or newer (GRANT SET ON PARAMETER).
--
-- Two roles:
--   reshard          on every shard cluster. A cluster is a source (copy, slot, publication,
--                    Debezium) and, once the migration is cut over, a target's writes flow
--                    back to it through reverse replication, so one role serves both sides.
--   reshard_control  owns the control database (migrations, map versions, audit log).
-- Debezium connects with the shard role (REPLICATION, SELECT on the moving tables).
--
-- What would otherwise need a superuser, and the grant that replaces it:
--   session_replication_role = replica (the copy and the applier write rows as logical
--     replication does: FKs and user triggers do not fire)  -> GRANT SET ON PARAMETER
--   replication origins (tag the applier's writes so echoes are recognised)
--                                                          -> GRANT EXECUTE on the functions
--   CREATE PUBLICATION … FOR TABLE needs to own the tables -> membership in the owner role
--
-- Replace app_owner with the role that owns the moving tables, and list the moving tables.

-- ---- on every shard cluster (sources and targets) ------------------------------------
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reshard') THEN
        CREATE ROLE reshard LOGIN REPLICATION;   -- REPLICATION: create, read and drop its slots
    END IF;
END $$;
-- its bookkeeping schema "reshard" (positions, copy cursors, heartbeat, fence function)
DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO reshard', current_database()); END $$;
-- publications FOR TABLE: PostgreSQL requires table ownership; membership in the owning
-- role gives it (and with it: SELECT/INSERT/UPDATE/DELETE/TRIGGER on those tables, the
-- fence trigger, sequence values at cutover, deleting moved rows at `complete`). It is
-- broad: reshard can do whatever the owner can (FOR TABLES IN SCHEMA would need a
-- superuser in PostgreSQL 15). Grant it for the migration and revoke it after `complete`.
GRANT app_owner TO reshard;
GRANT USAGE ON SCHEMA public TO reshard;
-- the copy's adaptive throttle samples the application's transactions in pg_stat_activity; without
-- this it sees only reshard's own sessions and judges by its sampling statement's round trip alone
GRANT pg_read_all_stats TO reshard;
-- instead of superuser for session_replication_role = replica
GRANT SET ON PARAMETER session_replication_role TO reshard;
-- instead of superuser for replication origins
GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), pg_replication_origin_drop(text),
    pg_replication_origin_session_setup(text), pg_replication_origin_session_reset(),
    pg_replication_origin_oid(text) TO reshard;
GRANT SELECT ON pg_catalog.pg_replication_origin TO reshard;
-- Schema changes during a migration are captured by an event trigger, which only a superuser
-- may create. Once reshard's schema exists on the cluster (after the first `reshard start`,
-- or `reshard fence install`), run once as a superuser; the function it calls is reshard's
-- (SECURITY DEFINER, it writes only to reshard's own tables). Without it, `start` says so and
-- a schema change pauses the applier as drift (docs/schema-changes.md).
-- CREATE EVENT TRIGGER reshard_ddl_capture ON ddl_command_end EXECUTE FUNCTION reshard.capture_ddl();

-- ---- on the control cluster --------------------------------------------------------------
-- CREATE ROLE reshard_control LOGIN;
-- CREATE DATABASE reshard OWNER reshard_control;
