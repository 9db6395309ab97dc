-- Requests start in seconds (issue 23): every statement that inserts requests notifies the channel
-- toygres_requests, on commit, with the kind alone ('image' or 'restore'), never a value of a row.
-- The request listener (toygres_pipelines/requests/listener.py) LISTENs and claims them at once;
-- the request sensors remain the sweep for anything a listener misses.
CREATE FUNCTION toygres_cms.notify_requests() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('toygres_requests', TG_ARGV[0]);
    RETURN NULL;
END
$$;

CREATE TRIGGER image_requests_notify
    AFTER INSERT ON toygres_cms.image_requests
    FOR EACH STATEMENT EXECUTE FUNCTION toygres_cms.notify_requests('image');

CREATE TRIGGER restore_requests_notify
    AFTER INSERT ON toygres_cms.restore_requests
    FOR EACH STATEMENT EXECUTE FUNCTION toygres_cms.notify_requests('restore');
