-- shared/FLOWS.md §4 (seed 002): sales and warehouse stock movements.
-- event_time is text, as the demo's generator sends it; the sink parses it
-- best-effort. Made as 0001 says.
CREATE TABLE IF NOT EXISTS sales (
    id BIGSERIAL PRIMARY KEY,
    event_id UUID NOT NULL DEFAULT gen_random_uuid(),
    event_type TEXT NOT NULL DEFAULT 'sale',
    event_time TEXT NOT NULL,
    product_id BIGINT NOT NULL,
    product_name TEXT NOT NULL,
    category TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    price NUMERIC(10, 2) NOT NULL,
    discount NUMERIC(10, 2) NOT NULL DEFAULT 0,
    total NUMERIC(10, 2) NOT NULL,
    store_id INTEGER NOT NULL,
    cashier_id INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    sent_to_kafka BOOLEAN DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS warehouse (
    id BIGSERIAL PRIMARY KEY,
    event_id UUID NOT NULL DEFAULT gen_random_uuid(),
    event_type TEXT NOT NULL DEFAULT 'stock_movement',
    event_time TEXT NOT NULL,
    product_id BIGINT NOT NULL,
    product_name TEXT NOT NULL,
    category TEXT NOT NULL,
    warehouse TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    movement_type TEXT NOT NULL,
    source TEXT NOT NULL,
    responsible TEXT NOT NULL,
    sent_to_kafka BOOLEAN DEFAULT FALSE
);
DROP TRIGGER IF EXISTS sales_outbox_notify ON sales;
CREATE TRIGGER sales_outbox_notify AFTER INSERT ON sales
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
DROP TRIGGER IF EXISTS warehouse_outbox_notify ON warehouse;
CREATE TRIGGER warehouse_outbox_notify AFTER INSERT ON warehouse
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

SELECT outbox_tune_source('sales');
SELECT outbox_tune_source('warehouse');
SELECT outbox_protect_pending('sales');
SELECT outbox_protect_pending('warehouse');
