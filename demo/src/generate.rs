//! `outbox-demo generate`: inserts realistic rows into a flow's source tables at a
//! steady rate, through plain SQL as any application would — the demos'
//! emitters, but through Postgres. Postgres itself draws the random values
//! (`random()`, `gen_random_uuid()`), so a tick is one INSERT per table.

use std::time::{Duration, Instant};

use flows::Flow;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// How often rows are inserted; each tick inserts what the rate asks for.
const TICK: Duration = Duration::from_millis(50);

/// One source table and the INSERT that adds `$1` random rows to it.
#[derive(Clone, Debug)]
pub struct TableGenerator {
    pub table: String,
    /// Share of the flow's rows (the demos' mixes: 70/30 sales/warehouse,
    /// clicks/views/orders at random).
    pub weight: f64,
    pub insert_sql: String,
}

/// The demos' shapes for the demo's tables.
fn demo_sql(table: &str) -> Option<&'static str> {
    Some(match table {
        "user_logins" => {
            "INSERT INTO user_logins (username, event_type, event_time)
             SELECT 'user' || (1 + floor(random() * 1000))::int,
                    (ARRAY['login', 'registration', 'purchase', 'logout'])[1 + floor(random() * 4)::int],
                    now()
             FROM generate_series(1, $1::int)"
        }
        "my_table" => {
            "INSERT INTO my_table (value)
             SELECT 'value-' || substr(md5(random()::text), 1, 12) FROM generate_series(1, $1::int)"
        }
        "user_clicks" => {
            "INSERT INTO user_clicks (\"timestamp\", user_id, ip_address, url, element_id)
             SELECT now(), gen_random_uuid(),
                    ((1 + floor(random() * 223))::int || '.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.' || (1 + floor(random() * 254))::int)::inet,
                    (ARRAY['/', '/catalog', '/product/42', '/cart', '/checkout', '/about'])[1 + floor(random() * 6)::int],
                    'btn-' || (1 + floor(random() * 20))::int
             FROM generate_series(1, $1::int)"
        }
        "page_views" => {
            "INSERT INTO page_views (\"timestamp\", user_id, ip_address, url, duration_seconds)
             SELECT now(), gen_random_uuid(),
                    ((1 + floor(random() * 223))::int || '.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.' || (1 + floor(random() * 254))::int)::inet,
                    (ARRAY['/', '/catalog', '/product/42', '/cart', '/checkout', '/about'])[1 + floor(random() * 6)::int],
                    5 + floor(random() * 296)::int
             FROM generate_series(1, $1::int)"
        }
        "orders" => {
            "INSERT INTO orders (\"timestamp\", order_id, user_id, ip_address, amount)
             SELECT now(), gen_random_uuid(), gen_random_uuid(),
                    ((1 + floor(random() * 223))::int || '.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.' || (1 + floor(random() * 254))::int)::inet,
                    round((9.99 + random() * 990)::numeric, 2)
             FROM generate_series(1, $1::int)"
        }
        "sales" => {
            "INSERT INTO sales (event_time, product_id, product_name, category, quantity, price, discount, total, store_id, cashier_id, customer_id)
             SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), p, 'Product ' || p,
                    (ARRAY['electronics', 'kitchen', 'clothes', 'books', 'toys'])[1 + p % 5],
                    q, price, round(price * q * d, 2), price * q - round(price * q * d, 2),
                    1 + floor(random() * 10)::int, 1 + floor(random() * 50)::int,
                    'CUST-' || lpad((floor(random() * 10000))::int::text, 4, '0')
             FROM (SELECT (1 + floor(random() * 100))::int AS p, (1 + floor(random() * 5))::int AS q,
                          round((1 + random() * 500)::numeric, 2) AS price,
                          (ARRAY[0, 0, 0, 0.05, 0.1])[1 + floor(random() * 5)::int]::numeric AS d
                   FROM generate_series(1, $1::int)) s"
        }
        "warehouse" => {
            "INSERT INTO warehouse (event_time, product_id, product_name, category, warehouse, quantity, movement_type, source, responsible)
             SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), p, 'Product ' || p,
                    (ARRAY['electronics', 'kitchen', 'clothes', 'books', 'toys'])[1 + p % 5],
                    (ARRAY['Moscow', 'Kazan', 'Novosibirsk', 'Yekaterinburg', 'Samara'])[1 + floor(random() * 5)::int],
                    CASE m WHEN 'write_off' THEN -q ELSE q END, m,
                    (ARRAY['supplier', 'store', 'warehouse'])[1 + floor(random() * 3)::int],
                    (ARRAY['Ivanov', 'Petrova', 'Sidorov', 'Smirnova'])[1 + floor(random() * 4)::int]
             FROM (SELECT (1 + floor(random() * 100))::int AS p, (1 + floor(random() * 100))::int AS q,
                          (ARRAY['supply', 'relocation', 'write_off'])[1 + floor(random() * 3)::int] AS m
                   FROM generate_series(1, $1::int)) s"
        }
        _ => return None,
    })
}

/// A random value of a Postgres column type, for tables the demo does not
/// know (a user's own flow).
fn random_expr(data_type: &str) -> &'static str {
    match data_type {
        "smallint" => "floor(random() * 1000)::smallint",
        "integer" => "floor(random() * 100000)::int",
        "bigint" => "floor(random() * 1000000)::bigint",
        "numeric" => "round((random() * 1000)::numeric, 2)",
        "real" | "double precision" => "random() * 1000",
        "boolean" => "random() < 0.5",
        "uuid" => "gen_random_uuid()",
        "inet" => {
            "('10.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.1')::inet"
        }
        "date" => "current_date",
        "timestamp without time zone" | "timestamp with time zone" => "now()",
        "json" | "jsonb" => "json_build_object('n', floor(random() * 100)::int)",
        _ => "substr(md5(random()::text), 1, 10)",
    }
}

/// The flow whose tables get rows when generating for `name`: the flow
/// itself, or — for a flow fed by a stage, like `etl` — a flow whose sources
/// publish the stage's inputs (`router`).
pub fn source_flow(catalog: &flows::FlowCatalog, name: &str) -> Result<Flow, String> {
    let flow = catalog
        .flows()
        .iter()
        .find(|f| f.name.as_str() == name)
        .ok_or_else(|| {
            format!(
                "unknown flow `{name}` (known: {})",
                catalog.names().join(", ")
            )
        })?;
    if !flow.sources.is_empty() {
        return Ok(flow.clone());
    }
    let inputs = flow
        .stage
        .as_ref()
        .map(|s| s.inputs.clone())
        .unwrap_or_default();
    catalog
        .flows()
        .iter()
        .find(|f| !f.sources.is_empty() && f.sources.iter().all(|s| inputs.contains(&s.topic)))
        .cloned()
        .ok_or_else(|| format!("flow `{name}` has no source tables"))
}

/// The generators of `flow`'s source tables.
pub async fn generators(
    client: &Client,
    flow: &Flow,
) -> Result<Vec<TableGenerator>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for source in &flow.sources {
        let table = source.table.as_str();
        let weight = match table {
            "sales" => 0.7,
            "warehouse" => 0.3,
            _ => 1.0,
        };
        let insert_sql = match demo_sql(table) {
            Some(sql) => sql.to_owned(),
            None => generic_sql(client, source).await?,
        };
        out.push(TableGenerator {
            table: table.into(),
            weight,
            insert_sql,
        });
    }
    let total: f64 = out.iter().map(|g| g.weight).sum();
    for g in &mut out {
        g.weight /= total;
    }
    Ok(out)
}

async fn generic_sql(
    client: &Client,
    source: &flows::SourceTable,
) -> Result<String, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1",
            &[&source.table.as_str()],
        )
        .await?;
    let mut names = Vec::new();
    let mut values = Vec::new();
    for column in source.columns.iter().filter(|c| c.as_str() != "id") {
        let data_type: String = rows
            .iter()
            .find(|r| r.get::<_, String>(0) == column.as_str())
            .map(|r| r.get(1))
            .unwrap_or_default();
        names.push(column.pg());
        values.push(random_expr(&data_type));
    }
    Ok(format!(
        "INSERT INTO {} ({}) SELECT {} FROM generate_series(1, $1::int)",
        source.table.pg(),
        names.join(", "),
        values.join(", ")
    ))
}

/// Splits `n` rows among the tables by weight, at random.
fn split(n: u64, generators: &[TableGenerator]) -> Vec<i32> {
    let mut counts = vec![0i32; generators.len()];
    for _ in 0..n {
        let mut r: f64 = rand::random();
        let i = generators
            .iter()
            .position(|g| {
                r -= g.weight;
                r < 0.0
            })
            .unwrap_or(generators.len() - 1);
        counts[i] += 1;
    }
    counts
}

/// Inserts at `rate` rows/s until `total` rows (if given) or shutdown,
/// printing the achieved rate every second. Returns the rows inserted.
pub async fn generate(
    client: &Client,
    flow: &Flow,
    rate: u64,
    total: Option<u64>,
    shutdown: &CancellationToken,
) -> Result<u64, tokio_postgres::Error> {
    let generators = generators(client, flow).await?;
    let start = Instant::now();
    let mut inserted: u64 = 0;
    let mut last_report = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        let mut n = due.saturating_sub(inserted);
        if let Some(t) = total {
            n = n.min(t - inserted);
        }
        for (g, count) in generators.iter().zip(split(n, &generators)) {
            if count > 0 {
                client.execute(&g.insert_sql, &[&count]).await?;
            }
        }
        inserted += n;
        if last_report.0.elapsed() >= Duration::from_secs(1) {
            let secs = last_report.0.elapsed().as_secs_f64();
            println!(
                "flow={} inserted={} rate={:.0}/s",
                flow.name,
                inserted,
                (inserted - last_report.1) as f64 / secs
            );
            last_report = (Instant::now(), inserted);
        }
        if total.is_some_and(|t| inserted >= t) {
            break;
        }
    }
    println!(
        "flow={} inserted={} in {:.1}s ({:.0}/s)",
        flow.name,
        inserted,
        start.elapsed().as_secs_f64(),
        inserted as f64 / start.elapsed().as_secs_f64().max(1e-9)
    );
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_the_weights() {
        let g = |w: f64| TableGenerator {
            table: String::new(),
            weight: w,
            insert_sql: String::new(),
        };
        let counts = split(10_000, &[g(0.7), g(0.3)]);
        assert_eq!(counts.iter().sum::<i32>(), 10_000);
        assert!((6_700..=7_300).contains(&counts[0]), "{counts:?}");
    }
}
