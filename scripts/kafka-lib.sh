# A real Apache Kafka broker for this machine, without Docker: sourced by
# lib.sh. Fetches the broker with Maven (devstack/kafka/pom.xml) into a cache
# folder later runs reuse offline, generates a throw-away CA, formats the
# storage with SCRAM users and runs one KRaft node (broker and controller in
# one JVM) on 127.0.0.1 with four listeners:
#
#   PLAINTEXT  $KAFKA_PORT        (default 9092)  no TLS, no authentication
#   SSL        $KAFKA_SSL_PORT    (default 9093)  TLS, server certificate only
#   SASL_SSL   $KAFKA_SASL_PORT   (default 9094)  TLS + SASL PLAIN, SCRAM-SHA-256/512
#   MTLS       $KAFKA_MTLS_PORT   (default 9095)  TLS, client certificate required
#
# Topics are never created by the broker (auto.create.topics.enable=false,
# as in production): the daemons create the topics they write, and tests
# create those they write themselves.
#
# The version is the one docker-compose.yml's apache/kafka image pins (the one
# place it is set). `kafka_env` prints the endpoints, CA, client certificate
# and the throw-away users as shell variables.

KAFKA_VERSION=$(sed -n 's/^ *image: .*apache\/kafka:\([0-9.]*\).*/\1/p' "$ROOT/docker-compose.yml" | head -1)
KAFKA_CACHE=${KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/kafka-$KAFKA_VERSION}
KAFKA_DIR=$STACK_DIR/kafka
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_SSL_PORT=${KAFKA_SSL_PORT:-9093}
KAFKA_SASL_PORT=${KAFKA_SASL_PORT:-9094}
KAFKA_MTLS_PORT=${KAFKA_MTLS_PORT:-9095}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9097}
KAFKA_HEAP=${KAFKA_HEAP:-512m}
# Throw-away credentials of the local broker (made at format time).
KAFKA_SASL_USER=outbox
KAFKA_SASL_SECRET=local-broker-secret

# The broker's jars: fetched once with Maven (runtime scope), then offline.
kafka_jars() {
    [ -n "$KAFKA_VERSION" ] || die "no apache/kafka image version in docker-compose.yml"
    if [ -f "$KAFKA_CACHE/.complete" ]; then return 0; fi
    command -v mvn >/dev/null || apt_install maven
    command -v java >/dev/null || apt_install openjdk-17-jre-headless
    log "fetching Apache Kafka $KAFKA_VERSION with Maven into $KAFKA_CACHE"
    rm -rf "$KAFKA_CACHE"
    mkdir -p "$KAFKA_CACHE"
    mvn -q -B -f "$ROOT/devstack/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$KAFKA_CACHE/libs" >&2 ||
        die "Maven could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
    touch "$KAFKA_CACHE/.complete"
}

# A throw-away CA, the broker's certificate (127.0.0.1 and localhost) and a
# client certificate for mutual TLS, all PEM; keys unencrypted PKCS#8.
kafka_certs() {
    local dir=$KAFKA_DIR/tls
    [ -f "$dir/client.pem" ] && return 0
    command -v openssl >/dev/null || apt_install openssl
    mkdir -p "$dir"
    log "generating a throw-away CA and certificates in $dir"
    (
        cd "$dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=outbox-relay local CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        for who in broker client; do
            openssl req -newkey rsa:2048 -nodes -subj "/CN=$who" -keyout "$who.key" -out "$who.csr" 2>/dev/null
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$who.ext"
            openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
                -extfile "$who.ext" -out "$who.pem" 2>/dev/null
        done
        # The broker's PEM key store: PKCS#8 key, then its certificate chain.
        { openssl pkcs8 -topk8 -nocrypt -in broker.key; cat broker.pem ca.pem; } >broker-keystore.pem
        # A CA nobody trusts, for the "untrusted certificate" tests.
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=some other CA" \
            -keyout other-ca.key -out other-ca.pem 2>/dev/null
        rm -f ./*.csr ./*.ext
    ) || die "could not generate Kafka certificates"
}

kafka_properties() {
    local tls=$KAFKA_DIR/tls
    cat <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,MTLS://127.0.0.1:$KAFKA_MTLS_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,MTLS://127.0.0.1:$KAFKA_MTLS_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.segment.bytes=268435456
log.retention.hours=24
ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
listener.name.mtls.ssl.client.auth=required
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_SECRET";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
}

# Runs a Kafka main class; with KAFKA_EXEC=exec the shell becomes the JVM
# (so the pid file names the broker itself).
kafka_java() {
    ${KAFKA_EXEC:-} java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true -Dkafka.logs.dir="$KAFKA_DIR/logs" \
        -Dlog4j2.configurationFile="$ROOT/devstack/kafka/log4j2.xml" \
        -cp "$KAFKA_CACHE/libs/*" "$@"
}

# Whether the broker answers a Kafka request (ApiVersions, with error code 0)
# on the PLAINTEXT listener: a real protocol round trip, not an open port.
kafka_up() {
    python3 - "$KAFKA_PORT" <<'PY' 2>/dev/null
import socket, struct, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    # ApiVersions v0: api_key 18, version 0, correlation id 7, null client id
    s.sendall(struct.pack(">ihhih", 10, 18, 0, 7, -1))
    head = b""
    while len(head) < 10:
        chunk = s.recv(10 - len(head))
        if not chunk:
            sys.exit(1)
        head += chunk
    _, correlation, error = struct.unpack(">iih", head)
    sys.exit(0 if correlation == 7 and error == 0 else 1)
PY
}

# Starts the broker unless one already runs from $KAFKA_DIR; waits until it
# answers a Kafka request.
ensure_kafka() {
    if [ -f "$KAFKA_DIR/pid" ] && kill -0 "$(cat "$KAFKA_DIR/pid")" 2>/dev/null && kafka_up; then
        return 0
    fi
    kafka_jars
    kafka_certs
    mkdir -p "$KAFKA_DIR/logs"
    kafka_properties >"$KAFKA_DIR/server.properties"
    if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
        log "formatting Kafka storage in $KAFKA_DIR/data (SCRAM users created now)"
        kafka_java kafka.tools.StorageTool format -t "$(kafka_java kafka.tools.StorageTool random-uuid)" \
            -c "$KAFKA_DIR/server.properties" \
            --add-scram "SCRAM-SHA-256=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_SECRET]" \
            --add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_SECRET]" \
            >"$KAFKA_DIR/logs/format.log" 2>&1 || die "formatting Kafka storage failed; see $KAFKA_DIR/logs/format.log"
    fi
    log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (KRaft, heap $KAFKA_HEAP; logs in $KAFKA_DIR/logs)"
    nohup bash -c "$(declare -f kafka_java); ROOT='$ROOT' KAFKA_DIR='$KAFKA_DIR' KAFKA_HEAP='$KAFKA_HEAP' KAFKA_CACHE='$KAFKA_CACHE'; KAFKA_EXEC=exec kafka_java kafka.Kafka '$KAFKA_DIR/server.properties'" \
        >"$KAFKA_DIR/logs/stdout.log" 2>&1 &
    echo $! >"$KAFKA_DIR/pid"
    local deadline=$((SECONDS + 90))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$(cat "$KAFKA_DIR/pid")" 2>/dev/null || die "Kafka exited; see $KAFKA_DIR/logs/stdout.log"
        if kafka_up; then
            log "Kafka answers on 127.0.0.1:$KAFKA_PORT"
            return 0
        fi
        sleep 0.5
    done
    die "Kafka did not answer within 90 s; see $KAFKA_DIR/logs"
}

stop_kafka() { stop_pidfile "$KAFKA_DIR/pid"; }


# The local broker's endpoints and throw-away credentials, as shell variables.
kafka_env() {
    cat <<ENV
KAFKA_VERSION=$KAFKA_VERSION
KAFKA_PLAINTEXT_BROKERS=127.0.0.1:$KAFKA_PORT
KAFKA_SSL_BROKERS=127.0.0.1:$KAFKA_SSL_PORT
KAFKA_SASL_SSL_BROKERS=127.0.0.1:$KAFKA_SASL_PORT
KAFKA_MTLS_BROKERS=127.0.0.1:$KAFKA_MTLS_PORT
KAFKA_LOCAL_CA=$KAFKA_DIR/tls/ca.pem
KAFKA_LOCAL_OTHER_CA=$KAFKA_DIR/tls/other-ca.pem
KAFKA_LOCAL_CLIENT_CERT=$KAFKA_DIR/tls/client.pem
KAFKA_LOCAL_CLIENT_KEY=$KAFKA_DIR/tls/client.key
KAFKA_LOCAL_SASL_USER=$KAFKA_SASL_USER
KAFKA_LOCAL_SASL_PASSWORD=$KAFKA_SASL_SECRET
ENV
}
