#!/usr/bin/env bash
# Sends one durable wire-format message with redis-cli and coreutils only (no Python, no library).
# See docs/wire-format.md. Usage:
#   signal.sh REDIS_URL HUB KIND TARGET OP ID [JSON_DATA]
# Prints the stream entry id.
set -euo pipefail
url=$1 hub=$2 kind=$3 target=$4 op=$5 id=$6 data=${7-}

partitions=$(redis-cli -u "$url" HGET "durable:{$hub}:meta" partitions)
# crc32 (IEEE) of the target's UTF-8 bytes: gzip ends its output with it (4 bytes, little-endian)
read -r b0 b1 b2 b3 < <(printf '%s' "$target" | gzip -c | tail -c 8 | head -c 4 | od -An -tu1)
crc=$(( b0 + (b1 << 8) + (b2 << 16) + (b3 << 24) ))
partition=$(printf '%02d' $(( crc % partitions )))

args=(v 1 kind "$kind" target "$target" op "$op" id "$id")
if [ -n "$data" ]; then
    args+=(enc json data "$data")
fi
redis-cli -u "$url" XADD "durable:{$hub:$partition}:inbox" '*' "${args[@]}"
