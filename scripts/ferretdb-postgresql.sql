-- Run once in the PostgreSQL database that FerretDB 1.x uses (as a superuser:
-- event triggers need one). The test session, the benchmarks and `make run-ha`
-- apply it to the PostgreSQL they start (tests/support/postgres.py).
--
-- Why: FerretDB 1.24 creates each collection's `_id` index as a btree on
-- `(_jsonb -> '_id')`, but pushes a filter down as `_jsonb -> '_id' @> '"value"'`,
-- which a btree cannot serve: every find, update and delete, even by `_id`,
-- reads the whole table (FerretDB/FerretDB#4646; 13 ms at 20,000 documents here).
-- A GIN index (jsonb_path_ops) on the same expression serves `@>`, so a filter
-- on `_id` (alone or with other fields, which FerretDB then checks itself) is an
-- index lookup again (1.4 ms at 20,000 documents, as at 100). FerretDB creates
-- a table per collection, lazily and under a hashed name, so the index is added
-- by an event trigger whenever a table with FerretDB's `_jsonb` column appears.
-- fastupdate = off: no pending list that every lookup would have to read.
--
-- Also set `plan_cache_mode = force_custom_plan` on the server: FerretDB sends
-- the field name as a parameter (`_jsonb -> $1 @> $2`), and a generic plan
-- cannot know that $1 is '_id' and so cannot use the index.

CREATE OR REPLACE FUNCTION shards_index_ferretdb_ids() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    created record;
BEGIN
    FOR created IN
        SELECT objid FROM pg_event_trigger_ddl_commands()
        WHERE command_tag = 'CREATE TABLE' AND object_type = 'table'
    LOOP
        IF EXISTS (
            SELECT 1 FROM pg_attribute
            WHERE attrelid = created.objid AND attname = '_jsonb' AND NOT attisdropped
        ) THEN
            EXECUTE format(
                'CREATE INDEX ON %s USING gin ((_jsonb -> ''_id'') jsonb_path_ops) WITH (fastupdate = off)',
                created.objid::regclass
            );
        END IF;
    END LOOP;
END
$$;

DROP EVENT TRIGGER IF EXISTS shards_index_ferretdb_ids;
CREATE EVENT TRIGGER shards_index_ferretdb_ids ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE')
    EXECUTE FUNCTION shards_index_ferretdb_ids();
