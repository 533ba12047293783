-- shared/FLOWS.md §3 (seed 001): clicks, page views and orders, each with a
-- timestamp and the client's IPv4 address. Made as 0001 says.
CREATE TABLE IF NOT EXISTS user_clicks (
    id BIGSERIAL PRIMARY KEY,
    "timestamp" TIMESTAMP NOT NULL DEFAULT now(),
    user_id UUID NOT NULL,
    ip_address INET NOT NULL,
    url TEXT NOT NULL,
    element_id TEXT NOT NULL,
    sent_to_kafka BOOLEAN DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS page_views (
    id BIGSERIAL PRIMARY KEY,
    "timestamp" TIMESTAMP NOT NULL DEFAULT now(),
    user_id UUID NOT NULL,
    ip_address INET NOT NULL,
    url TEXT NOT NULL,
    duration_seconds INTEGER NOT NULL,
    sent_to_kafka BOOLEAN DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS orders (
    id BIGSERIAL PRIMARY KEY,
    "timestamp" TIMESTAMP NOT NULL DEFAULT now(),
    order_id UUID NOT NULL,
    user_id UUID NOT NULL,
    ip_address INET NOT NULL,
    amount NUMERIC(10, 2) NOT NULL,
    sent_to_kafka BOOLEAN DEFAULT FALSE
);
DROP TRIGGER IF EXISTS user_clicks_outbox_notify ON user_clicks;
CREATE TRIGGER user_clicks_outbox_notify AFTER INSERT ON user_clicks
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
DROP TRIGGER IF EXISTS page_views_outbox_notify ON page_views;
CREATE TRIGGER page_views_outbox_notify AFTER INSERT ON page_views
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
DROP TRIGGER IF EXISTS orders_outbox_notify ON orders;
CREATE TRIGGER orders_outbox_notify AFTER INSERT ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

SELECT outbox_tune_source('user_clicks');
SELECT outbox_tune_source('page_views');
SELECT outbox_tune_source('orders');
SELECT outbox_protect_pending('user_clicks');
SELECT outbox_protect_pending('page_views');
SELECT outbox_protect_pending('orders');
