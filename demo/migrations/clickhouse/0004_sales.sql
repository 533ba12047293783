-- shared/FLOWS.md §4 (seed 002): money as Decimal32(2), partitioned by month.
CREATE TABLE IF NOT EXISTS sales (
    id UInt64,
    event_id String,
    event_type String,
    event_time DateTime,
    product_id UInt64,
    product_name String,
    category String,
    quantity UInt32,
    price Decimal32(2),
    discount Decimal32(2),
    total Decimal32(2),
    store_id UInt32,
    cashier_id UInt32,
    customer_id String,
    processing_time DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_time) ORDER BY (event_time, product_id, id);

CREATE TABLE IF NOT EXISTS stock_movements (
    id UInt64,
    event_id String,
    event_type String,
    event_time DateTime,
    product_id UInt64,
    product_name String,
    category String,
    warehouse String,
    quantity Int32,
    movement_type String,
    source String,
    responsible String,
    processing_time DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_time) ORDER BY (event_time, product_id, id);
