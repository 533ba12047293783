#!/usr/bin/env python3
"""What the sink sends a current ClickHouse, checked on a current engine.

CI's server is Debian's 18.16; users run current releases. PyPI's `chdb`
carries a current ClickHouse engine in-process (no HTTP server), so this
feeds it what the sink would send a server of that version:

1. every ClickHouse migration of the demo's flows (demo/migrations; the
   product has none of its own), as `sink migrate` would send it to a
   server of chdb's version (`sink/examples/chdb_fixture.rs migrations`);
2. one row per case of every column type the sink's encoder writes, sent
   as the sink's insert into a server of chdb's version sends it (the
   encoder's RowBinary, after the header declaring the types the server
   checks: `chdb_fixture encode VERSION`, `insert-format VERSION`) and read
   back: each value must come back as the message meant it;
3. a batch of `user_logins` rows inserted twice (a redelivery): the raw
   count doubles, `FINAL` shows each row once;
4. a batch encoded for a column's old type after an `ALTER` (same width,
   narrowed, widened): refused whole, nothing stored; with the type back,
   accepted with its values;
5. cluster mode (`CLICKHOUSE_CLUSTER`), in a process of its own (chdb
   reads its configuration once per process): what `sink migrate` sends a
   cluster of this version — every statement parsed as written (`ON
   CLUSTER` included), then created without `ON CLUSTER` (no distributed
   DDL in-process) on an engine configured with the cluster's macros and
   an in-memory ZooKeeper (`testkeeper`): each target a Replicated table
   behind a `Distributed` one whose definition (`engine_full`, as this
   version writes it) the sink reads as sharded by the source id; and the
   sink's choice of shard equal to this engine's `intHash64(id) % 2`.


Usage: chdb_check.py FIXTURE_BINARY [--cluster]. Exit 0 when every check
holds, 1 naming each that does not.
"""
import json
import os
import subprocess
import sys
import tempfile

import chdb
from chdb import session

FIXTURE = sys.argv[1]
failures = []


def check(what, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + what + ("" if ok else f": {detail}"))
    if not ok:
        failures.append(what)


def encode(columns, messages, version):
    """The body of the sink's insert of `messages` into a server of `version`."""
    spec = json.dumps({"columns": columns, "messages": messages})
    out = subprocess.run([FIXTURE, "encode", version], input=spec.encode(), capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode())
    return out.stdout


def server_types(sess, table, columns):
    """`columns` with their types as the server names them (what the sink plans with)."""
    named = {
        r["name"]: r["type"]
        for r in rows(sess, f"SELECT name, type FROM system.columns WHERE database = 'chk' AND table = '{table}'")
    }
    return [[n, named[n]] for n, _ in columns]


def insert_as_sink(sess, table, columns, body, fmt, workdir):
    """Sends `body` as the sink's INSERT into `table` does (format `fmt`)."""
    path = os.path.join(workdir, f"{table}.bin")
    with open(path, "wb") as f:
        f.write(body)
    names = ", ".join(f"`{n}`" for n, _ in columns)
    sess.query(f"INSERT INTO chk.{table} ({names}) FROM INFILE '{path}' FORMAT {fmt}")


def rows(sess, sql):
    text = sess.query(
        sql + " FORMAT JSONEachRow SETTINGS output_format_json_quote_64bit_integers = 1, "
        "output_format_json_quote_decimals = 1, session_timezone = 'UTC'",
        "CSV",
    )
    return [json.loads(line) for line in str(text).splitlines() if line.strip()]


# Every type the encoder writes, with messages as the relay writes them:
# times as Unix seconds (fractional) or text, decimals as text or numbers.
TYPES = [
    ("id", "UInt64"), ("u8", "UInt8"), ("u16", "UInt16"), ("u32", "UInt32"),
    ("i8", "Int8"), ("i16", "Int16"), ("i32", "Int32"), ("i64", "Int64"),
    ("f32", "Float32"), ("f64", "Float64"), ("b", "Bool"),
    ("s", "String"), ("fs", "FixedString(4)"), ("lc", "LowCardinality(String)"),
    ("d", "Date"), ("dt", "DateTime"), ("dt64", "DateTime64(3)"), ("dtz", "DateTime('UTC')"),
    ("dec", "Decimal(18, 4)"), ("dec32", "Decimal32(2)"), ("dec128", "Decimal128(6)"),
    ("ip", "IPv4"), ("uid", "UUID"),
    ("ns", "Nullable(String)"), ("ni", "Nullable(Int32)"), ("ndt", "Nullable(DateTime)"),
]
MESSAGES = [
    {
        "id": 1, "u8": 255, "u16": 65535, "u32": 4294967295, "i8": -128, "i16": -32768,
        "i32": -2147483648, "i64": -9223372036854775808, "f32": 1.5, "f64": -2.25, "b": True,
        "s": "h\u00e9llo \"q\"\ttab", "fs": "abcd", "lc": "low", "d": "2026-11-23",
        "dt": 1700000000, "dt64": 1700000000.123, "dtz": "2023-11-14 22:13:20",
        "dec": "12345678901234.5678", "dec32": "-1234567.89", "dec128": "123456789012.345678",
        "ip": "192.168.1.20", "uid": "6f1c2b8e-0000-4000-8000-00000000abcd",
        "ns": "x", "ni": 42, "ndt": 1700000000,
    },
    {
        "id": 2, "u8": 0, "u16": 0, "u32": 0, "i8": 127, "i16": 32767, "i32": 2147483647,
        "i64": 9223372036854775807, "f32": 0, "f64": 1e300, "b": False, "s": "", "fs": "ab",
        "lc": "", "d": "1970-01-02", "dt": "2026-11-23 10:00:00", "dt64": 0, "dtz": 0,
        "dec": 0.5, "dec32": 7, "dec128": "-0.000001", "ip": "0.0.0.0",
        "uid": "00000000-0000-0000-0000-000000000000", "ns": None, "ni": None, "ndt": None,
    },
]
EXPECTED = [
    {
        "id": "1", "u8": 255, "u16": 65535, "u32": 4294967295, "i8": -128, "i16": -32768,
        "i32": -2147483648, "i64": "-9223372036854775808", "f32": 1.5, "f64": -2.25, "b": True,
        "s": "h\u00e9llo \"q\"\ttab", "fs": "abcd", "lc": "low", "d": "2026-11-23",
        "dt": "2023-11-14 22:13:20", "dt64": "2023-11-14 22:13:20.123",
        "dtz": "2023-11-14 22:13:20", "dec": "12345678901234.5678", "dec32": "-1234567.89",
        "dec128": "123456789012.345678", "ip": "192.168.1.20",
        "uid": "6f1c2b8e-0000-4000-8000-00000000abcd", "ns": "x", "ni": 42,
        "ndt": "2023-11-14 22:13:20",
    },
    {
        "id": "2", "u8": 0, "u16": 0, "u32": 0, "i8": 127, "i16": 32767, "i32": 2147483647,
        "i64": "9223372036854775807", "f32": 0, "f64": 1e300, "b": False, "s": "",
        "fs": "ab\u0000\u0000", "lc": "", "d": "1970-01-02", "dt": "2026-11-23 10:00:00",
        "dt64": "1970-01-01 00:00:00.000", "dtz": "1970-01-01 00:00:00", "dec": "0.5",
        "dec32": "7", "dec128": "-0.000001", "ip": "0.0.0.0",
        "uid": "00000000-0000-0000-0000-000000000000", "ns": None, "ni": None, "ndt": None,
    },
]


CLUSTER_CONFIG = """<clickhouse>
  <zookeeper><implementation>testkeeper</implementation></zookeeper>
  <macros><shard>1</shard><replica>r1</replica></macros>
  <remote_servers><chk_cluster>
    <shard><internal_replication>true</internal_replication><replica><host>127.0.0.1</host><port>9000</port></replica></shard>
    <shard><internal_replication>true</internal_replication><replica><host>127.0.0.2</host><port>9000</port></replica></shard>
  </chk_cluster></remote_servers>
</clickhouse>
"""


# Objects never released before os._exit (see cluster_mode).
KEPT = []


def cluster_mode():
    """Check 5, in this process of its own."""
    with tempfile.TemporaryDirectory() as workdir:
        config = os.path.join(workdir, "config.xml")
        with open(config, "w") as f:
            f.write(CLUSTER_CONFIG)
        # The connection held: dropped, it closes the cursor under us. Kept
        # past this function too: chdb 4.4's Connection.close() on an engine
        # configured from a file never returns (py-spy: main → __del__ →
        # close), so it is never closed; main() ends with os._exit.
        conn = chdb.connect(f":memory:?config-file={config}")
        KEPT.append(conn)
        cur = conn.cursor()
        KEPT.append(cur)

        def query(sql):
            cur.execute(sql)
            return cur.fetchall()

        version = query("SELECT version()")[0][0]
        out = subprocess.run([FIXTURE, "migrations", version, "chk_cluster"], capture_output=True, check=True)
        statements = [s.strip() for s in out.stdout.decode().split("-- ;;") if s.strip()]
        for statement in statements:
            name, sql = statement.split("\n", 1)
            what = f"cluster DDL {name.removeprefix('-- ')}: {sql[:70]}"
            try:
                query("EXPLAIN AST " + sql)
                query(sql.replace(" ON CLUSTER `chk_cluster`", ""))
                check(what, True)
            except Exception as e:  # noqa: BLE001 - report any refusal
                check(what, False, str(e)[:300])
        tables = dict(query("SELECT name, engine_full FROM system.tables WHERE database = 'chk'"))
        distributed = {n: e for n, e in tables.items() if e.startswith("Distributed(")}
        check("cluster DDL: a Distributed table per target", len(distributed) == 9, sorted(distributed))
        for name, engine in sorted(distributed.items()):
            local = tables.get(f"{name}_local", "")
            check(f"{name}_local is Replicated", local.startswith("ReplicatedReplacingMergeTree("), local[:100])
            columns = query(f"SELECT name, type FROM system.columns WHERE database = 'chk' AND table = '{name}'")
            pairs = [part for column in columns for part in column]
            read = subprocess.run([FIXTURE, "sharding", engine, *pairs], capture_output=True)
            key = "source_id" if name == "events_processed" else "event_id" if name == "events" else "id"
            got = read.stdout.decode().split()
            check(
                f"the sink reads {name}'s Distributed definition as sharded by {key}",
                read.returncode == 0 and got[:2] == [f"{name}_local", key],
                read.stdout.decode() + read.stderr.decode() + f" ({engine})",
            )
        ids = [str(i) for i in range(1, 2001)]
        sink = subprocess.run([FIXTURE, "shards", "2", *ids], capture_output=True, check=True)
        engine = [str(r[0]) for r in query("SELECT intHash64(number) % 2 + 1 FROM numbers(1, 2000) ORDER BY number")]
        check("the sink's shard of each id is intHash64(id) % 2 here", sink.stdout.decode().split() == engine)
        city = query("SELECT countIf(cityHash64(toUInt64(number)) != intHash64(toUInt64(number))) FROM numbers(100000)")
        check("cityHash64 of a UInt64 is its intHash64 here (the sink takes both keys)", city[0][0] == 0, city)


def main():
    if "--cluster" in sys.argv:
        cluster_mode()
        # os._exit: chdb 4.4's engine configured from a file never closes
        # (see cluster_mode); the parent reads this line and the status.
        print(f"cluster checks done: {len(failures)} failed", flush=True)
        os._exit(1 if failures else 0)
    with tempfile.TemporaryDirectory() as workdir:
        sess = session.Session(os.path.join(workdir, "db"))
        version = str(sess.query("SELECT version()", "CSV")).strip().strip('"')
        print(f"chdb {chdb.__version__}: ClickHouse {version}")
        sess.query("CREATE DATABASE chk")
        sess.query("USE chk")
        sess.query("SET session_timezone = 'UTC'")
        fmt = subprocess.run(
            [FIXTURE, "insert-format", version], capture_output=True, check=True
        ).stdout.decode().strip()
        check("the sink declares its column types to this server", fmt == "RowBinaryWithNamesAndTypes", fmt)

        # 1. The migrations a server of this version gets.
        out = subprocess.run([FIXTURE, "migrations", version], capture_output=True, check=True)
        statements = [s.strip() for s in out.stdout.decode().split("-- ;;") if s.strip()]
        for statement in statements:
            name = statement.splitlines()[0].removeprefix("-- ")
            try:
                sess.query(statement)
                check(f"migration {name}: {statement.splitlines()[1][:60]}", True)
            except Exception as e:  # noqa: BLE001 - report any refusal
                check(f"migration {name}", False, str(e)[:300])
        uses_ipv4 = any("IPv4" in s for s in statements)
        check("the current-server branch uses IPv4 columns", uses_ipv4)

        # 2. Every type, encoded by the sink, read back.
        cols = ", ".join(f"`{n}` {t}" for n, t in TYPES)
        sess.query(f"CREATE TABLE chk.types ({cols}) ENGINE = MergeTree ORDER BY id")
        named = server_types(sess, "types", TYPES)
        insert_as_sink(sess, "types", named, encode(named, MESSAGES, version), fmt, workdir)
        got = rows(sess, "SELECT * FROM chk.types ORDER BY id")
        check("every typed row read back", len(got) == len(EXPECTED), f"{len(got)} rows")
        for want, have in zip(EXPECTED, got):
            for column, _ in TYPES:
                check(
                    f"row {want['id']} {column}",
                    have.get(column) == want[column],
                    f"sent {MESSAGES[int(want['id']) - 1][column]!r}, got {have.get(column)!r}, "
                    f"expected {want[column]!r}",
                )

        # 3. A redelivered batch collapses in FINAL.
        logins = [
            ["id", "UInt64"], ["username", "Nullable(String)"],
            ["event_type", "Nullable(String)"], ["event_time", "Nullable(DateTime)"],
        ]
        batch = [
            {"id": i, "username": f"user-{i % 7}", "event_type": "login", "event_time": 1700000000 + i}
            for i in range(1, 101)
        ]
        logins = server_types(sess, "user_logins", logins)
        data = encode(logins, batch, version)
        insert_as_sink(sess, "user_logins", logins, data, fmt, workdir)
        insert_as_sink(sess, "user_logins", logins, data, fmt, workdir)
        raw = rows(sess, "SELECT count() AS n FROM chk.user_logins")[0]["n"]
        final = rows(sess, "SELECT count() AS n FROM chk.user_logins FINAL")[0]["n"]
        check("a redelivered batch: stored twice", raw == "200", raw)
        check("a redelivered batch: once in FINAL", final == "100", final)

        # 4. A batch encoded before a column's type changed.
        sess.query(
            "CREATE TABLE chk.money (id UInt64, price Decimal32(2), quantity UInt32) "
            "ENGINE = MergeTree ORDER BY id"
        )
        money = server_types(sess, "money", [["id", ""], ["price", ""], ["quantity", ""]])
        body = encode(money, [{"id": 1, "price": "19.99", "quantity": 70000}], version)
        for change in ["price Decimal32(4)", "price Decimal64(2)", "quantity UInt16", "quantity Int64"]:
            sess.query(f"ALTER TABLE chk.money MODIFY COLUMN {change}")
            try:
                insert_as_sink(sess, "money", money, body, fmt, workdir)
                refused = ""
            except Exception as e:  # noqa: BLE001 - the refusal is the point
                refused = str(e)
            check(
                f"a batch encoded for {money[1][1]}, {money[2][1]} refused after MODIFY COLUMN {change}",
                "Code: 117" in refused and "Type of '" in refused,
                refused[:300] or "accepted",
            )
            count = rows(sess, "SELECT count() AS n FROM chk.money")[0]["n"]
            check(f"nothing stored after MODIFY COLUMN {change}", count == "0", count)
            name, ty = change.split(" ", 1)
            sess.query(f"ALTER TABLE chk.money MODIFY COLUMN {name} {dict(money)[name]}")
        insert_as_sink(sess, "money", money, body, fmt, workdir)
        got = rows(sess, "SELECT toString(price) AS price, quantity FROM chk.money")
        check(
            "with the types back, the batch stored with its values",
            got == [{"price": "19.99", "quantity": 70000}],
            got,
        )

    # 5. Cluster mode, in a process of its own (an engine configured from a
    # file), which ends with os._exit: see cluster_mode().
    try:
        cluster = subprocess.run([sys.executable, __file__, FIXTURE, "--cluster"], capture_output=True, timeout=300)
        print(cluster.stdout.decode(), end="")
        done = "cluster checks done: 0 failed" in cluster.stdout.decode()
        check("cluster mode", done and cluster.returncode == 0, cluster.stderr.decode()[-500:])
    except subprocess.TimeoutExpired:
        check("cluster mode", False, "no answer within 300 s")

    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("current ClickHouse: every check holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
