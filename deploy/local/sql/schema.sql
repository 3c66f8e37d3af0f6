-- Schema of the local PostgreSQL started by deploy/local/postgres, applied once on the first
-- `up` as the role tally (SET ROLE tally), so tally owns every object here. Idempotent.
--
-- Services write their state and an outbox row in one transaction; Debezium relays the outbox
-- (EventRouter) or captures the tables themselves (CDC) into Kafka, where tally consumes them.
-- Quantities and amounts are integers.

CREATE TABLE IF NOT EXISTS public.inventory_transaction (
  event_id    uuid PRIMARY KEY,
  sku         text NOT NULL,
  seller_id   text NOT NULL,
  location    text NOT NULL,
  bucket      text NOT NULL,
  delta       bigint NOT NULL,
  event_time  timestamptz NOT NULL,
  accepted_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.posting (
  event_id     uuid PRIMARY KEY,
  account_id   text NOT NULL,
  currency     text NOT NULL,
  entry_type   text NOT NULL,
  amount_minor bigint NOT NULL,
  event_time   timestamptz NOT NULL,
  accepted_at  timestamptz NOT NULL DEFAULT now()
);

-- The transactional outbox, in the layout Debezium's outbox EventRouter expects by default:
-- id -> header "id", aggregatetype -> topic outbox.event.<aggregatetype>, aggregateid -> key,
-- payload -> value (expanded from jsonb with table.expand.json.payload=true).
-- `tally load --target postgres` writes one row per event, in the transaction of its history row:
-- id = the event id, aggregatetype inventory|ledger, aggregateid the sku or account, type
-- StockAdjusted or the posting's entry type, payload tally's event JSON (schema_version 1).
-- Its poison rows exist only here: no history row, so folding the history gives tally's state.
CREATE TABLE IF NOT EXISTS public.outbox (
  id            uuid PRIMARY KEY,
  aggregatetype text NOT NULL,
  aggregateid   text NOT NULL,
  type          text NOT NULL,
  payload       jsonb NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now()
);

-- pgoutput streams only tables in a publication. Created here (by the tables' owner) so that the
-- connectors can run with publication.autocreate.mode=disabled and tally needs no superuser.
-- REPLICA IDENTITY stays DEFAULT (the primary key): enough for inserts; an UPDATE's "before" is
-- then null and a DELETE's "before" holds the key only.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'tally_pub') THEN
    CREATE PUBLICATION tally_pub FOR TABLE public.inventory_transaction, public.posting, public.outbox;
  END IF;
END
$$;
