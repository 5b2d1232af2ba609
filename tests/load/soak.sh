#!/usr/bin/env bash
# soak.sh: a long run of the load tool with a backplane fault every minute.
#
# It starts its own redis-server on a free loopback port, has the load tool
# start two chat servers on it (publishers on one, subscribers on the
# other) and publish at a moderate fixed rate, and every FAULT_EVERY
# seconds kills (SIGKILL, then a new redis-server on the same port) or
# stops (SIGSTOP, then SIGCONT) that redis-server for OUTAGE seconds, in
# turn. At the end it prints the servers' memory and goroutine counts at
# the start and at the end of the run, and fails unless they stayed flat
# and delivery came back after every fault.
#
#   tests/load/soak.sh                        # 10 minutes, a fault a minute
#   DURATION=120 FAULT_EVERY=30 tests/load/soak.sh
#
# Environment: DURATION (seconds, default 600), FAULT_EVERY (60), OUTAGE
# (5), RATE (messages per second, 500), SUBSCRIBERS (20), PUBLISHERS (2),
# RSS_SLACK_MIB (memory growth allowed beyond 50%, default 16),
# GOROUTINE_SLACK (default 10), KEEP=1 keeps the work directory, whose
# path it prints. Needs redis-server, redis-cli, jq and go.
set -euo pipefail

DURATION=${DURATION:-600}
FAULT_EVERY=${FAULT_EVERY:-60}
OUTAGE=${OUTAGE:-5}
RATE=${RATE:-500}
SUBSCRIBERS=${SUBSCRIBERS:-20}
PUBLISHERS=${PUBLISHERS:-2}
RSS_SLACK_MIB=${RSS_SLACK_MIB:-16}
GOROUTINE_SLACK=${GOROUTINE_SLACK:-10}

for tool in redis-server redis-cli jq go; do
	command -v "$tool" >/dev/null || { echo "soak: $tool not found" >&2; exit 2; }
done
if (( FAULT_EVERY <= OUTAGE + 5 || DURATION < FAULT_EVERY + 20 )); then
	echo "soak: want FAULT_EVERY > OUTAGE + 5 and DURATION >= FAULT_EVERY + 20" >&2
	exit 2
fi

root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/soak.XXXXXX")
redis_pid=""
load_pid=""
cleanup() {
	# Only what this script started.
	if [[ -n $load_pid ]] && kill -0 "$load_pid" 2>/dev/null; then kill -TERM "$load_pid" 2>/dev/null || true; wait "$load_pid" 2>/dev/null || true; fi
	stop_redis
	if [[ ${KEEP:-} == 1 ]]; then echo "soak: work directory $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# A free loopback port: one that nothing accepts on.
port=""
for _ in $(seq 50); do
	p=$((20000 + RANDOM % 20000))
	if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[[ -n $port ]] || { echo "soak: no free port" >&2; exit 1; }

start_redis() {
	redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
		>>"$work/redis.log" 2>&1 &
	redis_pid=$!
	for _ in $(seq 100); do
		redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "soak: redis-server did not start on port $port" >&2
	return 1
}
stop_redis() {
	if [[ -n $redis_pid ]]; then
		kill -CONT "$redis_pid" 2>/dev/null || true
		kill -KILL "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
		redis_pid=""
	fi
}

start_redis
echo "soak: redis-server on 127.0.0.1:$port, ${DURATION}s, a fault every ${FAULT_EVERY}s for ${OUTAGE}s"
(cd "$root" && go build -o "$work/load" ./tests/load)

"$work/load" -target chat -backplane redis -redis "redis://127.0.0.1:$port/0" -instances 2 -placement split \
	-subscribers "$SUBSCRIBERS" -publishers "$PUBLISHERS" -rate "$RATE" -duration "${DURATION}s" -drain 10s \
	-progress on -json "$work/soak.json" -html "$work/soak.html" -server-log "$work/servers.log" \
	>"$work/table.txt" 2> >(tee "$work/progress.log" >&2) &
load_pid=$!

# Wait for the publishing to begin: the faults are timed from it.
for _ in $(seq 1200); do
	grep -q "publishing" "$work/progress.log" 2>/dev/null && break
	kill -0 "$load_pid" 2>/dev/null || break
	sleep 0.1
done
grep -q "publishing" "$work/progress.log" || { echo "soak: the load tool did not start publishing" >&2; exit 1; }
began=$(date +%s%N)
# elapsed prints the seconds since the first publish, with a decimal.
elapsed() { local ms=$(( ($(date +%s%N) - began) / 1000000 )); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }

faults=()   # "kind from to", seconds since the first publish
n=0
while :; do
	next=$(( (n + 1) * FAULT_EVERY ))
	(( next + OUTAGE + 15 <= DURATION )) || break
	while (( ($(date +%s%N) - began) / 1000000000 < next )); do sleep 0.2; done
	from=$(elapsed)
	if (( n % 2 == 0 )); then
		kind=kill
		kill -KILL "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; redis_pid=""
		sleep "$OUTAGE"
		start_redis
	else
		kind=stop
		kill -STOP "$redis_pid"
		sleep "$OUTAGE"
		kill -CONT "$redis_pid"
	fi
	to=$(elapsed)
	faults+=("$kind $from $to")
	printf '\nsoak: fault %d: %s redis-server from %.1fs to %.1fs\n' $((n + 1)) "$kind" "$from" "$to" >&2
	n=$((n + 1))
done

status=0
wait "$load_pid" || status=$?
load_pid=""
cat "$work/table.txt"
(( status == 0 )) || { echo "soak: the load tool failed (exit $status)" >&2; exit 1; }

json="$work/soak.json"
fail=0
echo
echo "soak: servers at the start and at the end of the run (every client connected):"
jq -r '.servers[] | "  \(.name): rss \(.start_rss_bytes/1048576*10|floor/10) MiB -> \(.end_rss_bytes/1048576*10|floor/10) MiB, peak \(.peak_rss_bytes/1048576*10|floor/10) MiB; goroutines \(.start_goroutines) -> \(.end_goroutines)"' "$json"
if ! jq -e --argjson slack "$RSS_SLACK_MIB" --argjson gslack "$GOROUTINE_SLACK" \
	'all(.servers[]; .end_rss_bytes <= .start_rss_bytes * 1.5 + $slack * 1048576 and .start_goroutines >= 0 and .end_goroutines <= .start_goroutines + $gslack)' \
	"$json" >/dev/null; then
	echo "soak: FAIL: memory or goroutines grew (allowed: 50% + ${RSS_SLACK_MIB} MiB, ${GOROUTINE_SLACK} goroutines)"
	fail=1
fi

# Delivery came back after each fault: a second, after the fault ended and
# before the next one, at half the run's median deliveries per second.
median=$(jq '[.timeline[] | select(.publishing) | .deliveries_per_second] | sort | .[length/2|floor]' "$json")
echo "soak: median deliveries/s $median; $(jq '.lost' "$json") lost, $(jq '.duplicated' "$json") duplicated, $(jq '.dropped' "$json") clients dropped"
for i in "${!faults[@]}"; do
	read -r kind from to <<<"${faults[$i]}"
	back=$(jq --argjson to "$to" --argjson span "$((FAULT_EVERY - OUTAGE))" --argjson m "$median" \
		'[.timeline[] | select(.t > $to and .t <= $to + $span and .deliveries_per_second >= $m / 2) | .t] | min // "never"' "$json")
	low=$(jq --argjson from "$from" --argjson to "$to" --argjson span "$((FAULT_EVERY - OUTAGE))" \
		'[.timeline[] | select(.t > $from and .t <= $to + $span) | .deliveries_per_second] | min // 0' "$json")
	if [[ $back == never ]]; then
		printf 'soak: FAIL: fault %d (%s, %.1fs to %.1fs): delivery did not recover\n' $((i + 1)) "$kind" "$from" "$to"
		fail=1
	else
		printf 'soak: fault %d (%s, %.1fs to %.1fs): lowest %.0f deliveries/s, back at %.0fs\n' $((i + 1)) "$kind" "$from" "$to" "$low" "$back"
	fi
done
if (( ${#faults[@]} == 0 )); then
	echo "soak: FAIL: no fault was injected (DURATION too short?)"
	fail=1
fi
tail=$(jq --argjson m "$median" '[.timeline | map(select(.publishing)) | .[-5:][] | .deliveries_per_second >= $m / 2] | all' "$json")
if [[ $tail != true ]]; then
	echo "soak: FAIL: delivery was not back to half the median in the last 5 seconds"
	fail=1
fi
if (( fail )); then KEEP=1; echo "soak: FAIL"; exit 1; fi
echo "soak: PASS"
