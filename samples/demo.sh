#!/bin/sh
# The README's demo: a sensor replays the bundled capture, raises alerts, keeps them in
# its local store, and forwards them over CURVE-encrypted ZeroMQ to a local collector.
# Everything it writes goes under out/demo/. Run through `make demo`.
set -eu
cd "$(dirname "$0")/.."
M=.venv/bin/mamori
D="$(pwd)/out/demo"
PORT=${MAMORI_DEMO_PORT:-7700}
rm -rf "$D"
mkdir -p "$D/sensor/keys" "$D/collector/keys/sensors"

# Key pairs: the collector admits only the sensor keys in its allow-list directory.
$M keys generate collector --dir "$D/collector/keys" >/dev/null
$M keys generate sensor --dir "$D/sensor/keys" >/dev/null
cp "$D/sensor/keys/sensor.pub" "$D/collector/keys/sensors/"

cat > "$D/collector.toml" <<TOML
[sensor]
state_dir = "$D/collector"

[collect]
listen = ["tcp://127.0.0.1:$PORT"]
publish = ""
jsonl = "$D/collector/siem.jsonl"
TOML

cat > "$D/sensor.toml" <<TOML
[sensor]
name = "demo-substation"
state_dir = "$D/sensor"

[forward]
collectors = [{ endpoint = "tcp://127.0.0.1:$PORT", server_key = "$D/collector/keys/collector.pub" }]
heartbeat_interval = 1.0
TOML

echo "== collector: listening on 127.0.0.1:$PORT"
$M collect --config "$D/collector.toml" --duration 60 &
COLLECTOR=$!
trap 'kill $COLLECTOR 2>/dev/null || true' EXIT
sleep 1

echo "== sensor: replaying samples/modbus_demo.pcap (detection on, store, forwarding)"
$M replay --no-progress --config "$D/sensor.toml" --store "$D/sensor/mamori.db" \
    --events "$D/events.jsonl" --alerts "$D/alerts.jsonl" samples/modbus_demo.pcap

echo "== operator view on the sensor (mamori alerts)"
$M alerts --store "$D/sensor/mamori.db"

echo "== collector status (mamori collect status)"
$M collect status --config "$D/collector.toml"
kill $COLLECTOR 2>/dev/null || true
wait $COLLECTOR 2>/dev/null || true
trap - EXIT
echo "== files: $D/events.jsonl ($(wc -l < "$D/events.jsonl") events)," \
     "$D/alerts.jsonl ($(wc -l < "$D/alerts.jsonl") alerts)," \
     "$D/collector/siem.jsonl ($(wc -l < "$D/collector/siem.jsonl") alerts received)"
