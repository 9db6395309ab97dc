-- Each table's size on the source (heap and TOAST pages as of its last VACUUM or ANALYZE, at least
-- one page), as the JSON array [[schema, table, bytes], ...] the archive reader weighs the backup's
-- percent with. From pg_class alone: pg_table_size would wait on a table another session has locked.
SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(n.nspname, c.relname,
         (greatest(c.relpages, 1) + coalesce(t.relpages, 0))::bigint
           * pg_catalog.current_setting('block_size')::bigint)), '[]')
FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
