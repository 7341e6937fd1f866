#!/usr/bin/env bash
# A one-node Apache Kafka (KRaft: broker and controller in one JVM) on 127.0.0.1: a real broker for Kafka
# consumers to be tested against (the tunnel worker's Kafka source is being built on it), and for trying one.
# Kafka's jars (54 MB, 91 files for 4.4.0) come from Maven Central through `mvn` and stay in Maven's local
# repository (~/.m2), so only the first run downloads. Measured here: ready in 13-16 s on a loaded 2-core
# machine, about 430 MB RSS with the default 512 MB heap; topics survive a SIGKILL and a restart on DIR.
#
#   scripts/kafka.sh fetch              resolve the jars; print the classpath file
#   scripts/kafka.sh start DIR          format DIR (first time), start the broker on free loopback ports (the same
#                                       ports again when DIR was used before), wait until it answers, print
#                                       `bootstrap=127.0.0.1:PORT pid=PID`
#   scripts/kafka.sh stop DIR [--kill]  stop it (SIGTERM and wait; --kill: SIGKILL, as the crash tests do)
#
# Environment: KAFKA_VERSION (default 4.4.0), KAFKA_HEAP (default 512m), JAVA (default java).
# Extra listeners, for clients that authenticate (each on a free loopback port of its own, kept in DIR like the
# others); when any is asked for, `start` prints a second line after the first, e.g.
# `ssl=127.0.0.1:P mtls=127.0.0.1:Q sasl=127.0.0.1:R sasl_ssl=127.0.0.1:S`:
#   KAFKA_TLS_DIR=D       D holds PEM files: server.pem (the broker's certificate chain, for 127.0.0.1),
#                         server.key (its PKCS#8 key, unencrypted) and ca.pem (the CA client certificates are
#                         checked against). Adds `ssl` (TLS, no client certificate asked for) and `mtls` (TLS, a
#                         client certificate signed by ca.pem required).
#   KAFKA_SASL_USERS=u:p,...  users (names and passwords of [A-Za-z0-9._-]) for PLAIN, SCRAM-SHA-256 and
#                         SCRAM-SHA-512. Adds `sasl` (SASL_PLAINTEXT), and `sasl_ssl` (SASL_SSL) with
#                         KAFKA_TLS_DIR. The SCRAM credentials are written when DIR is formatted (its first start);
#                         PLAIN's users are read at every start.
# The PEM files and passwords are copied into DIR/server.properties (DIR is the caller's, as for the data).
set -euo pipefail

version="${KAFKA_VERSION:-4.4.0}"
heap="${KAFKA_HEAP:-512m}"
java="${JAVA:-java}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/arbor-kafka/$version"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  local cp="$cache/classpath"
  if [ -s "$cp" ] && tr ':' '\n' <"$cp" | head -n 5 | xargs -r ls >/dev/null 2>&1; then
    echo "$cp"; return
  fi
  command -v mvn >/dev/null || die "mvn is needed to fetch Kafka's jars (apt-get install -y maven)"
  mkdir -p "$cache"
  cat >"$cache/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>arbor</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  mvn -B -q -f "$cache/pom.xml" dependency:build-classpath -Dmdep.outputFile="$cp" -Dmdep.includeScope=runtime >&2 \
    || die "mvn could not resolve org.apache.kafka:kafka_2.13:$version"
  echo "$cp"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {
  local dir="${1:?usage: kafka.sh start DIR}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local cp; cp="$(fetch)"
  if [ ! -f "$dir/ports" ]; then
    echo "$(free_port) $(free_port)" >"$dir/ports"
  fi
  local broker controller; read -r broker controller <"$dir/ports"
  # The extra listeners: "NAME:PROTOCOL:PORT" each, NAME as printed (lower case) and as Kafka's listener name.
  local extra=()
  if [ -n "${KAFKA_TLS_DIR:-}" ] || [ -n "${KAFKA_SASL_USERS:-}" ]; then
    if [ ! -f "$dir/extra-ports" ]; then
      echo "$(free_port) $(free_port) $(free_port) $(free_port)" >"$dir/extra-ports"
    fi
    local p_ssl p_mtls p_sasl p_sasl_ssl; read -r p_ssl p_mtls p_sasl p_sasl_ssl <"$dir/extra-ports"
    if [ -n "${KAFKA_TLS_DIR:-}" ]; then
      local f; for f in server.pem server.key ca.pem; do
        [ -r "$KAFKA_TLS_DIR/$f" ] || die "KAFKA_TLS_DIR: $KAFKA_TLS_DIR/$f is not a readable file"
      done
      extra+=("ssl:SSL:$p_ssl" "mtls:SSL:$p_mtls")
    fi
    if [ -n "${KAFKA_SASL_USERS:-}" ]; then
      local pair; for pair in ${KAFKA_SASL_USERS//,/ }; do
        [[ "$pair" =~ ^[A-Za-z0-9._-]+:[A-Za-z0-9._-]+$ ]] \
          || die "KAFKA_SASL_USERS: each user is name:password, both of [A-Za-z0-9._-]"
      done
      extra+=("sasl:SASL_PLAINTEXT:$p_sasl")
      [ -n "${KAFKA_TLS_DIR:-}" ] && extra+=("sasl_ssl:SASL_SSL:$p_sasl_ssl")
    fi
  fi
  local listeners="PLAINTEXT://127.0.0.1:$broker,CONTROLLER://127.0.0.1:$controller"
  local advertised="PLAINTEXT://127.0.0.1:$broker"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  local e name proto port
  for e in "${extra[@]}"; do
    IFS=: read -r name proto port <<<"$e"
    listeners+=",${name^^}://127.0.0.1:$port"
    advertised+=",${name^^}://127.0.0.1:$port"
    protocols+=",${name^^}:$proto"
  done
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.check.interval.ms=1000
PROPS
  cat >"$dir/log4j2.properties" <<'LOG'
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=${sys:kafka.logs.dir}/broker.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=%d %p %c: %m%n
LOG
  if [ -n "${KAFKA_TLS_DIR:-}" ]; then
    # Inline PEM (one line, `\n` for the newlines: Java properties unescape it): a PEM key store read from a
    # file needs an encrypted key and its password, the inline one takes the key as it is.
    pem() { awk '{ printf "%s\\n", $0 }' "$1"; }
    cat >>"$dir/server.properties" <<PROPS
ssl.keystore.type=PEM
ssl.keystore.certificate.chain=$(pem "$KAFKA_TLS_DIR/server.pem")
ssl.keystore.key=$(pem "$KAFKA_TLS_DIR/server.key")
ssl.truststore.type=PEM
ssl.truststore.certificates=$(pem "$KAFKA_TLS_DIR/ca.pem")
listener.name.mtls.ssl.client.auth=required
PROPS
  fi
  local scram=()
  if [ -n "${KAFKA_SASL_USERS:-}" ]; then
    local plain="org.apache.kafka.common.security.plain.PlainLoginModule required"
    local user pass
    for pair in ${KAFKA_SASL_USERS//,/ }; do
      IFS=: read -r user pass <<<"$pair"
      plain+=" user_$user=\"$pass\""
      scram+=(--add-scram "SCRAM-SHA-256=[name=$user,password=$pass]" --add-scram "SCRAM-SHA-512=[name=$user,password=$pass]")
    done
    echo "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512" >>"$dir/server.properties"
    local l
    for l in sasl sasl_ssl; do
      cat >>"$dir/server.properties" <<PROPS
listener.name.$l.plain.sasl.jaas.config=$plain;
listener.name.$l.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.$l.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
    done
  fi
  if [ ! -f "$dir/data/meta.properties" ]; then
    "$java" -cp "$(cat "$cp")" kafka.tools.StorageTool format -t "$("$java" -cp "$(cat "$cp")" kafka.tools.StorageTool random-uuid 2>/dev/null)" \
      -c "$dir/server.properties" "${scram[@]}" >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "formatting $dir failed"; }
  fi
  nohup "$java" -Xms"$heap" -Xmx"$heap" -XX:+UseSerialGC -Dkafka.logs.dir="$dir" \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$(cat "$cp")" kafka.Kafka "$dir/server.properties" \
    >"$dir/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/pid"
  # Ready when the broker accepts connections on its port (bounded: 60 s).
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$dir/stdout.log" "$dir/broker.log" >&2 2>/dev/null; die "the broker exited"; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$broker") 2>/dev/null; then
      local line=() ready=1
      for e in "${extra[@]}"; do
        IFS=: read -r name proto port <<<"$e"
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || ready=0
        line+=("$name=127.0.0.1:$port")
      done
      if [ "$ready" = 1 ]; then
        echo "bootstrap=127.0.0.1:$broker pid=$pid"
        [ ${#extra[@]} -eq 0 ] || echo "${line[*]}"
        return
      fi
    fi
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  die "the broker did not listen on 127.0.0.1:$broker within 60 s"
}

stop() {
  local dir="${1:?usage: kafka.sh stop DIR [--kill]}"
  [ -f "$dir/pid" ] || return 0
  local pid; pid="$(cat "$dir/pid")"
  if [ "${2:-}" = "--kill" ]; then
    kill -9 "$pid" 2>/dev/null || true
  else
    kill "$pid" 2>/dev/null || true
  fi
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" "${3:-}" ;;
  *) die "usage: kafka.sh fetch | start DIR | stop DIR [--kill]" ;;
esac
