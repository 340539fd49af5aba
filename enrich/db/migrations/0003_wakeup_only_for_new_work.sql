-- enrich schema, version 3: notify only when an INSERT stored new work.
-- Version 2 notified for every INSERT statement, including those that stored nothing
-- (a batch of redeliveries: ON CONFLICT DO NOTHING) or only rate-limited rows (never
-- processed). Each such notification woke every worker for a poll that found nothing,
-- and every notifying transaction takes PostgreSQL's cluster-wide notify lock through its
-- commit. The transition table holds exactly the rows this statement inserted.

CREATE OR REPLACE FUNCTION enrich_inbound_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_inbound WHERE status = 'received') THEN
        PERFORM pg_notify('enrich_inbound', '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER inbound_messages_wakeup ON inbound_messages;

CREATE TRIGGER inbound_messages_wakeup
    AFTER INSERT ON inbound_messages
    REFERENCING NEW TABLE AS new_inbound
    FOR EACH STATEMENT
    EXECUTE FUNCTION enrich_inbound_notify();
