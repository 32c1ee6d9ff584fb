-- What a data engineer would write in DuckDB for regtally's weekly and monthly unique users:
-- typed read_json, first delivery per id, a window for create vs push repository,
-- approx_count_distinct per ISO week and calendar month, written to Parquet.
-- {INPUT} and {OUTPUT} are replaced by benches/run.py.
COPY (
WITH ev AS (
    SELECT id, "timestamp" AT TIME ZONE 'UTC' AS ts, action,
           target.repository AS repository, target.tag IS NOT NULL AS has_tag,
           target.digest IS NOT NULL AS has_digest,
           CASE WHEN actor.user_type IN ('personal_access_token', 'build', 'gitlab_or_ldap')
                 AND actor.name <> '' THEN lower(actor.name) END AS user_name
    FROM read_json('{INPUT}', format = 'newline_delimited', ignore_errors = true,
        columns = {id: 'VARCHAR', "timestamp": 'TIMESTAMPTZ', action: 'VARCHAR',
                   target: 'STRUCT(repository VARCHAR, tag VARCHAR, digest VARCHAR)',
                   actor: 'STRUCT(name VARCHAR, user_type VARCHAR)'})
    WHERE id <> '' AND repository <> ''
    QUALIFY row_number() OVER (PARTITION BY id ORDER BY ts) = 1
),
kinds AS (
    SELECT *, CASE
        WHEN action = 'push' AND has_tag THEN 'push_tag'
        WHEN action = 'delete' AND has_tag THEN 'delete_tag'
        WHEN action = 'delete' AND has_digest THEN 'manifest_delete'
        WHEN action = 'delete' THEN 'delete_repository'
        WHEN action = 'push' THEN 'repository_push' END AS kind
    FROM ev WHERE action IN ('push', 'delete')
),
ledger AS (
    SELECT *, lag(kind) OVER (PARTITION BY repository ORDER BY ts, id) AS previous
    FROM kinds WHERE kind IN ('push_tag', 'repository_push', 'delete_repository')
),
tracked AS (
    SELECT ts, user_name, CASE
        WHEN kind <> 'repository_push' THEN kind
        WHEN previous IS NULL OR previous = 'delete_repository' THEN 'create_repository'
        ELSE 'push_repository' END AS event
    FROM ledger
    UNION ALL
    SELECT ts, user_name, kind FROM kinds WHERE kind = 'delete_tag'
)
SELECT 'i_container_registry_' || event || '_user' AS event_name, 'week' AS period_kind,
       date_trunc('week', ts) AS period_start, approx_count_distinct(user_name) AS unique_users,
       count(*) AS events
FROM tracked WHERE user_name IS NOT NULL GROUP BY ALL
UNION ALL
SELECT 'i_container_registry_' || event || '_user', 'month', date_trunc('month', ts),
       approx_count_distinct(user_name), count(*)
FROM tracked WHERE user_name IS NOT NULL GROUP BY ALL
) TO '{OUTPUT}' (FORMAT parquet);
