#!/usr/bin/env bash
# A local, one-node Apache Kafka broker (KRaft, broker and controller in one JVM) for development,
# tests and benchmarks. The jars come from Maven Central through deploy/local/pom.xml; no
# tarball, no container.
#
#   deploy/local/kafka.sh fetch                  download the jars once into the cache
#   deploy/local/kafka.sh up                     start the broker, return when it answers metadata
#   deploy/local/kafka.sh down                   SIGTERM, wait up to 30 s, then SIGKILL
#   deploy/local/kafka.sh status                 exit 0 when the broker answers
#   deploy/local/kafka.sh logs                   follow the broker log (print its tail if not a tty)
#   deploy/local/kafka.sh run-class CLASS ARGS   run a Java class from the cached jars, e.g.
#       run-class org.apache.kafka.tools.ProducerPerformance --topic t --num-records 100000 ...
#   deploy/local/kafka.sh up-secure              start the secured broker (below) on 127.0.0.1:9093
#   deploy/local/kafka.sh down-secure            stop it; status-secure: exit 0 when it answers
#
# The secured broker is a second, separate broker for security tests and for trying a
# production-like set-up: one SASL_SSL listener (SCRAM-SHA-512 over TLS from a throwaway CA
# made with the JDK's keytool), the standard authorizer and no access unless an ACL grants it.
# Users: `admin` (super user), `filterd` and `auditor` (no ACLs until someone grants them).
# Its state, CA and credentials live in ~/.cache/filterd/broker-secure/, which also gets
# admin.toml, filterd.toml and auditor.toml: complete `[kafka]` sections in filterd's own keys
# that a config can start from. The controller listener (KAFKA_PORT + 1000) takes TLS with
# client certificates only. It coexists with the plain broker on 9092.
#
# Several brokers can run side by side: each KAFKA_PORT gets its own state directory (data,
# server.properties, pid file, logs) and its own controller port, so
#   KAFKA_PORT=19092 deploy/local/kafka.sh up     # a private broker, e.g. for a test that kills it
#   KAFKA_PORT=19092 deploy/local/kafka.sh down   # stops that one only
# leaves the shared broker on 9092 alone. Up and down on one port are serialized by a lock.
#
# Environment:
#   KAFKA_BOOTSTRAP        when set, an existing broker is used: up/down do nothing
#   KAFKA_VERSION          Apache Kafka version (default 4.4.0)
#   KAFKA_PORT             broker port on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default KAFKA_PORT + 1000)
#   FILTERD__KAFKA_HOME     jar cache (default ~/.cache/filterd/kafka-$KAFKA_VERSION)
#   FILTERD__KAFKA_STATE    state directory (default ~/.cache/filterd/broker-$KAFKA_PORT)
#   KAFKA_HEAP_OPTS        broker heap (default "-Xms256m -Xmx1g"); KAFKA_JVM_OPTS: extra flags
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 60)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 30)
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_HOST=127.0.0.1
# up-secure, down-secure and status-secure act on the secured broker: its own port and state.
SECURE=false
case "${1:-}" in
*-secure) SECURE=true ;;
esac
if [[ "$SECURE" == true ]]; then
	KAFKA_PORT="${KAFKA_SECURE_PORT:-9093}"
	FILTERD__KAFKA_STATE="${FILTERD__KAFKA_SECURE_STATE:-$HOME/.cache/filterd/broker-secure}"
	# KAFKA_BOOTSTRAP names a plain broker to use instead of a local one; it says nothing about
	# the secured one, which is always this script's own.
	unset KAFKA_BOOTSTRAP
fi
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1000))}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_HOME="${FILTERD__KAFKA_HOME:-$HOME/.cache/filterd/kafka-$KAFKA_VERSION}"
STATE="${FILTERD__KAFKA_STATE:-$HOME/.cache/filterd/broker-$KAFKA_PORT}"
LIBS="$KAFKA_HOME/libs"
MARKER="$KAFKA_HOME/.fetched"
PID_FILE="$STATE/kafka.pid"
LOG_DIR="$STATE/logs"
PYTHON="${PYTHON:-python3}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"

say() { printf 'kafka.sh[%s]: %s\n' "$KAFKA_PORT" "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

need() {
	local cmd
	for cmd in "$@"; do
		command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is not installed (needed: $*)"
	done
}

check_java() {
	need java
	local version major
	version="$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
	major="${version%%.*}"
	# Kafka 4 brokers need Java 17 or newer.
	[[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] || die "Java 17+ is required, found '$version'"
}

fetch() {
	[[ -f "$MARKER" ]] && return 0
	need mvn
	check_java
	mkdir -p "$KAFKA_HOME"
	# Two first-time `up`s at once (make test and an editor's pytest) must not both download.
	exec 8>"$KAFKA_HOME/.fetch.lock"
	flock 8
	if [[ ! -f "$MARKER" ]]; then
		say "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS"
		rm -rf "$LIBS.partial"
		# Maven 3.8 prints stray colour resets even in quiet batch mode: strip them.
		mvn -B -q -f "$HERE/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
			dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.partial" 2>&1 |
			sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2 ||
			die "mvn could not resolve Kafka $KAFKA_VERSION"
		[[ -f "$LIBS.partial/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "kafka_2.13 jar missing after mvn"
		rm -rf "$LIBS"
		mv "$LIBS.partial" "$LIBS"
		# The marker is written last: a cache without it is incomplete and fetched again.
		echo "$KAFKA_VERSION" >"$MARKER"
		say "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars"
	fi
	exec 8>&-
}

lock_state() {
	mkdir -p "$STATE" "$LOG_DIR"
	exec 9>"$STATE/.lock"
	flock -w 180 9 || die "another kafka.sh holds $STATE/.lock"
}

# The pid of the broker started from this state directory, if it is alive. A pid file whose
# process is gone, or now belongs to something else, is stale and removed.
running_pid() {
	[[ -f "$PID_FILE" ]] || return 1
	local pid
	pid="$(cat "$PID_FILE")"
	if [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r "/proc/$pid/cmdline" ]] &&
		tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $STATE/server.properties"; then
		echo "$pid"
		return 0
	fi
	say "removing stale pid file ($pid is not a broker of $STATE)"
	rm -f "$PID_FILE"
	return 1
}

# Whether the broker of this state directory answers a metadata request. The cluster id is
# compared too: a broker from another state directory may hold the port.
answers() {
	if [[ "$SECURE" == true ]]; then
		# Without credentials only the TLS handshake and ApiVersions can be asked for.
		"$PYTHON" "$HERE/kafka_ping.py" --quiet --timeout 2 --tls-cafile "$TLS_DIR/ca.pem" \
			"$KAFKA_HOST:$KAFKA_PORT"
		return
	fi
	local cluster_id
	cluster_id="$(cat "$STATE/cluster.id" 2>/dev/null || true)"
	"$PYTHON" "$HERE/kafka_ping.py" --quiet --timeout 2 ${cluster_id:+--cluster-id "$cluster_id"} \
		"$KAFKA_HOST:$KAFKA_PORT"
}

# Whether anything at all answers on the port.
port_answers() {
	"$PYTHON" "$HERE/kafka_ping.py" --quiet --timeout 2 "$KAFKA_HOST:$KAFKA_PORT"
}

show_log_tail() {
	local f
	for f in "$LOG_DIR/kafka.out" "$LOG_DIR/server.log"; do
		if [[ -s "$f" ]]; then
			say "last lines of $f:"
			tail -n 40 "$f" >&2
		fi
	done
}

write_config() {
	if [[ "$SECURE" == true ]]; then
		write_secure_config
		return
	fi
	cat >"$STATE/server.properties" <<EOF
# Written by deploy/local/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$STATE/data
EOF
	one_node_properties >>"$STATE/server.properties"
	cp -f "$HERE/log4j2.properties" "$STATE/log4j2.properties"
}

# What both local brokers share: one node, and the settings tests rely on.
one_node_properties() {
	cat <<EOF

# Tests create every topic they use; a typo must fail, not create a topic.
auto.create.topics.enable=false
delete.topic.enable=true
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
# One node: every internal topic has one replica, and few partitions so that the first
# consumer group or transaction of a test run does not wait for 50 partitions to come up.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start consumers one after another; the default 3 s delay would slow every group.
group.initial.rebalance.delay.ms=0
EOF
}

# --- the secured broker ------------------------------------------------------------------------
TLS_DIR="$STATE/tls"
SECRETS="$STATE/secrets.env"
# The broker certificate's subject: with client certificates on the controller listener, the
# node authenticates to itself as User:CN=filterd-local-broker, a super user.
BROKER_DN="CN=filterd-local-broker"

# Random passwords for the keystores and the SCRAM users, made once and kept (mode 600).
make_secrets() {
	[[ -s "$SECRETS" ]] && return 0
	local name
	(
		umask 077
		for name in STORE_PASSWORD ADMIN_PASSWORD FILTERD_PASSWORD AUDITOR_PASSWORD; do
			printf '%s=%s\n' "$name" "$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')"
		done >"$SECRETS.partial"
	)
	mv "$SECRETS.partial" "$SECRETS"
}

# A throwaway CA and a broker certificate signed by it (SAN 127.0.0.1 and localhost), made
# with the JDK's keytool. Clients trust ca.pem; the broker keeps broker.p12 and truststore.p12.
make_tls() {
	[[ -s "$TLS_DIR/broker.p12" && -s "$TLS_DIR/ca.pem" ]] && return 0
	need keytool
	# shellcheck disable=SC1090
	source "$SECRETS"
	local dir="$TLS_DIR.partial" pw="$STORE_PASSWORD"
	rm -rf "$dir"
	mkdir -p "$dir"
	say "making a throwaway CA and broker certificate in $TLS_DIR"
	{
		keytool -genkeypair -alias ca -keyalg RSA -keysize 2048 -validity 825 \
			-dname "CN=filterd local test CA" -ext bc:c \
			-keystore "$dir/ca.p12" -storetype PKCS12 -storepass "$pw" -keypass "$pw" &&
			keytool -exportcert -alias ca -rfc -keystore "$dir/ca.p12" -storepass "$pw" \
				-file "$dir/ca.pem" &&
			keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 825 \
				-dname "$BROKER_DN" \
				-keystore "$dir/broker.p12" -storetype PKCS12 -storepass "$pw" -keypass "$pw" &&
			keytool -certreq -alias broker -keystore "$dir/broker.p12" -storepass "$pw" \
				-file "$dir/broker.csr" &&
			keytool -gencert -alias ca -keystore "$dir/ca.p12" -storepass "$pw" -validity 825 \
				-ext "SAN=ip:127.0.0.1,dns:localhost" -ext "EKU=serverAuth,clientAuth" -rfc \
				-infile "$dir/broker.csr" -outfile "$dir/broker.pem" &&
			keytool -importcert -noprompt -alias ca -file "$dir/ca.pem" \
				-keystore "$dir/broker.p12" -storepass "$pw" &&
			keytool -importcert -noprompt -alias broker -file "$dir/broker.pem" \
				-keystore "$dir/broker.p12" -storepass "$pw" &&
			keytool -importcert -noprompt -alias ca -file "$dir/ca.pem" \
				-keystore "$dir/truststore.p12" -storetype PKCS12 -storepass "$pw"
	} >"$LOG_DIR/keytool.log" 2>&1 || {
		cat "$LOG_DIR/keytool.log" >&2
		die "keytool could not make the certificates in $dir"
	}
	rm -f "$dir/broker.csr"
	chmod 600 "$dir"/*.p12
	rm -rf "$TLS_DIR"
	mv "$dir" "$TLS_DIR"
}

write_secure_config() {
	make_secrets
	make_tls
	# shellcheck disable=SC1090
	source "$SECRETS"
	(
		umask 077
		cat >"$STATE/server.properties" <<EOF
# Written by deploy/local/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=SASL_SSL://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_SSL://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL
log.dirs=$STATE/data

# Clients: SCRAM-SHA-512 over TLS, nothing else. The node talks to itself on that listener as
# admin, and to its controller over TLS with its own certificate.
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$ADMIN_PASSWORD";
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/broker.p12
ssl.keystore.password=$STORE_PASSWORD
ssl.key.password=$STORE_PASSWORD
ssl.truststore.type=PKCS12
ssl.truststore.location=$TLS_DIR/truststore.p12
ssl.truststore.password=$STORE_PASSWORD
listener.name.controller.ssl.client.auth=required

# No access unless an ACL grants it; admin and the node itself are super users.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:$BROKER_DN
EOF
		one_node_properties >>"$STATE/server.properties"
	)
	cp -f "$HERE/log4j2.properties" "$STATE/log4j2.properties"
	write_client_configs
}

# admin.toml, filterd.toml, auditor.toml: a [kafka] section per user, in filterd's own keys.
write_client_configs() {
	local user password
	for user in admin filterd auditor; do
		case "$user" in
		admin) password="$ADMIN_PASSWORD" ;;
		filterd) password="$FILTERD_PASSWORD" ;;
		*) password="$AUDITOR_PASSWORD" ;;
		esac
		(
			umask 077
			cat >"$STATE/$user.toml.partial" <<EOF
# The secured local broker (deploy/local/kafka.sh up-secure), as user $user.
# Written on every start; copy this section into a filterd config.
[kafka]
bootstrap_servers = "$KAFKA_HOST:$KAFKA_PORT"
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "$user"
sasl_password = "$password"
ssl_cafile = "$TLS_DIR/ca.pem"
EOF
		)
		mv "$STATE/$user.toml.partial" "$STATE/$user.toml"
	done
}

# The SCRAM users exist from the first start: KRaft takes them at storage format time.
scram_args() {
	# shellcheck disable=SC1090
	source "$SECRETS"
	printf '%s\n' --add-scram "SCRAM-SHA-512=[name=admin,password=$ADMIN_PASSWORD]" \
		--add-scram "SCRAM-SHA-512=[name=filterd,password=$FILTERD_PASSWORD]" \
		--add-scram "SCRAM-SHA-512=[name=auditor,password=$AUDITOR_PASSWORD]"
}

format_once() {
	[[ -f "$STATE/data/meta.properties" ]] && return 0
	if [[ ! -s "$STATE/cluster.id" ]]; then
		# A Kafka Uuid: 16 random bytes, URL-safe base64 without padding. Like Kafka's own
		# Uuid.randomUuid(), draw again when it starts with "-": the storage tool would read
		# such an id as an option.
		"$PYTHON" -c 'import base64, uuid
while (i := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"): pass
print(i)' >"$STATE/cluster.id"
	fi
	say "formatting $STATE/data (cluster $(cat "$STATE/cluster.id"))"
	local extra=()
	if [[ "$SECURE" == true ]]; then
		mapfile -t extra < <(scram_args)
	fi
	java -Xmx256m -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/tools-log4j2.properties" \
		kafka.tools.StorageTool format -t "$(cat "$STATE/cluster.id")" \
		-c "$STATE/server.properties" "${extra[@]}" >"$LOG_DIR/format.log" 2>&1 || {
		cat "$LOG_DIR/format.log" >&2
		die "formatting the storage failed"
	}
}

wait_ready() {
	local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
	while ((SECONDS < deadline)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			show_log_tail
			rm -f "$PID_FILE"
			die "the broker (pid $pid) exited during start-up"
		fi
		if answers; then
			return 0
		fi
		sleep 0.5
	done
	show_log_tail
	die "the broker (pid $pid) did not answer on $KAFKA_HOST:$KAFKA_PORT within ${START_TIMEOUT}s; it is left running: see '$0 logs', stop it with '$0 down'"
}

up() {
	if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
		say "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is set: using that broker, starting nothing"
		return 0
	fi
	fetch
	check_java
	need "$PYTHON" flock setsid
	lock_state
	local pid
	if pid="$(running_pid)"; then
		# Alive: either up already or still starting (another `up` timed out, or is racing us).
		wait_ready "$pid"
		say "already up on $KAFKA_HOST:$KAFKA_PORT (pid $pid)"
		return 0
	fi
	if port_answers; then
		die "a broker not started from $STATE answers on $KAFKA_HOST:$KAFKA_PORT; stop it, pick another KAFKA_PORT, or set KAFKA_BOOTSTRAP to use it"
	fi
	write_config
	format_once
	say "starting Kafka $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT, state $STATE)"
	local started=$SECONDS
	# setsid: the broker outlives the shell, make or pytest that started it, and a Ctrl+C in that
	# terminal does not reach it. Closing fds 8 and 9 keeps the JVM from holding our locks.
	# shellcheck disable=SC2086  # the option strings are meant to split into words
	(cd "$STATE" && exec setsid java $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-Djava.awt.headless=true ${KAFKA_JVM_OPTS:-} \
		-Dkafka.logs.dir="$LOG_DIR" -Dlog4j2.configurationFile="$STATE/log4j2.properties" \
		-cp "$LIBS/*" kafka.Kafka "$STATE/server.properties") \
		</dev/null >>"$LOG_DIR/kafka.out" 2>&1 8>&- 9>&- &
	pid=$!
	echo "$pid" >"$PID_FILE"
	wait_ready "$pid"
	say "up on $KAFKA_HOST:$KAFKA_PORT (pid $pid) after $((SECONDS - started))s"
}

down() {
	if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
		say "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is set: not stopping a broker this script did not start"
		return 0
	fi
	if [[ ! -d "$STATE" ]]; then
		say "no broker state in $STATE: nothing to stop"
		return 0
	fi
	lock_state
	local pid
	if ! pid="$(running_pid)"; then
		say "not running"
		return 0
	fi
	say "stopping pid $pid"
	kill -TERM "$pid" 2>/dev/null || true
	local deadline=$((SECONDS + STOP_TIMEOUT))
	while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		say "still alive after ${STOP_TIMEOUT}s: SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
	fi
	rm -f "$PID_FILE"
	say "stopped"
}

status() {
	local address="${KAFKA_BOOTSTRAP:-$KAFKA_HOST:$KAFKA_PORT}"
	address="${address%%,*}"
	if "$PYTHON" "$HERE/kafka_ping.py" --timeout 2 "$address"; then
		local pid
		if [[ -z "${KAFKA_BOOTSTRAP:-}" ]] && pid="$(running_pid 2>/dev/null)"; then
			say "pid $pid, state $STATE"
		fi
		return 0
	fi
	return 1
}

logs() {
	local log="$LOG_DIR/server.log"
	[[ -f "$log" ]] || die "no log at $log (never started?)"
	if [[ -t 1 ]]; then
		exec tail -n 100 -F "$log"
	fi
	tail -n 200 "$log"
}

run_class() {
	[[ $# -ge 1 ]] || die "usage: $0 run-class CLASS [ARGS...]"
	fetch
	check_java
	# shellcheck disable=SC2086
	exec java ${KAFKA_TOOL_HEAP_OPTS:--Xmx512m} ${KAFKA_JVM_OPTS:-} \
		-Dlog4j2.configurationFile="$HERE/tools-log4j2.properties" -cp "$LIBS/*" "$@"
}

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit 2
}

main() {
	local cmd="${1:-}"
	[[ $# -gt 0 ]] && shift
	case "$cmd" in
	fetch) fetch ;;
	up | start | up-secure) up ;;
	down | stop | down-secure) down ;;
	status) status ;;
	status-secure) answers ;;
	logs) logs ;;
	run-class) run_class "$@" ;;
	*) usage ;;
	esac
}

main "$@"
