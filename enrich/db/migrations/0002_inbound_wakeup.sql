-- enrich schema, version 2: wake the job runners as soon as messages are stored.
-- One NOTIFY per INSERT statement on inbound_messages (the webhook stores a whole batch in
-- one statement), sent by PostgreSQL when the webhook's own transaction commits: no extra
-- round trip for the webhook, and a rolled-back INSERT wakes no one. No payload: the
-- notification only says "look now"; the rows are the truth (enrich/pipeline/wakeup.py).
-- Identical notifications of one transaction are delivered once.

CREATE FUNCTION enrich_inbound_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('enrich_inbound', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER inbound_messages_wakeup
    AFTER INSERT ON inbound_messages
    FOR EACH STATEMENT
    EXECUTE FUNCTION enrich_inbound_notify();
