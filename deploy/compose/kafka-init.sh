#!/usr/bin/env bash
# Create the streamsynth topics once the broker answers. TOPICS holds "name:partitions"
# words; --if-not-exists makes re-runs (compose up after down without -v) harmless.
set -euo pipefail
bin=/opt/kafka/bin
for spec in ${TOPICS}; do
  name="${spec%%:*}"
  partitions="${spec##*:}"
  "${bin}/kafka-topics.sh" --bootstrap-server "${BOOTSTRAP_SERVERS}" --create --if-not-exists \
    --topic "${name}" --partitions "${partitions}" --replication-factor 1
done
"${bin}/kafka-topics.sh" --bootstrap-server "${BOOTSTRAP_SERVERS}" --list
