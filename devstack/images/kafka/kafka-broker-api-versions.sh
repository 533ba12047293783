#!/usr/bin/env bash
# The official image's tool of the same name (docker-compose.yml's health
# check): asks the broker for its API versions, exits non-zero when it does
# not answer.
exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile=/opt/kafka/tools-log4j2.xml -cp '/opt/kafka/libs/*' \
    org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
