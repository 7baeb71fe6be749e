// Sends durable wire-format messages from Node.js with the `redis` npm package (no Python).
// See docs/wire-format.md. Usage:
//   node producer.js REDIS_URL HUB TARGET OP COUNT [INSTANCE_ID EVENT_NAME]
// sends COUNT `signal` entries (data 1, ids node-0..), one of them twice (a retried send),
// then, if given, one `event` entry to INSTANCE_ID; prints the partition count and the
// partitions computed for a few sample ids (P = 32) as JSON.
'use strict';

const zlib = require('zlib');
const { createClient } = require('redis');

// CRC-32 (IEEE), the same as Python's zlib.crc32, Go's crc32.ChecksumIEEE, Java's CRC32.
const TABLE = new Int32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});

function crc32(text) {
  const bytes = Buffer.from(text, 'utf8');
  if (typeof zlib.crc32 === 'function') return zlib.crc32(bytes); // Node >= 20.15 / 22.2
  let c = 0xffffffff;
  for (const b of bytes) c = TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function partitionOf(target, partitions) {
  return crc32(target) % partitions;
}

async function main() {
  const [url, hub, target, op, count, instanceId, eventName] = process.argv.slice(2);
  const client = createClient({ url });
  await client.connect();
  const partitions = Number(await client.hGet(`durable:{${hub}}:meta`, 'partitions'));
  const inbox = (id) =>
    `durable:{${hub}:${String(partitionOf(id, partitions)).padStart(2, '0')}}:inbox`;

  for (let i = 0; i < Number(count); i++) {
    const fields = {
      v: '1',
      kind: 'signal',
      target,
      op,
      id: `node-${i}`,
      enc: 'json',
      data: JSON.stringify(1),
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    };
    await client.xAdd(inbox(target), '*', fields);
    if (i === 0) await client.xAdd(inbox(target), '*', fields); // a retry: applied once
  }
  if (instanceId) {
    await client.xAdd(inbox(instanceId), '*', {
      v: '1',
      kind: 'event',
      target: instanceId,
      op: eventName,
      id: 'node-event',
      data: JSON.stringify({ from: 'node', count: Number(count) }),
    });
  }
  const samples = ['@counter@user-42', '@counter@hits', '@account@alice', '@cart@ü-café', 'order-1001'];
  const vectors = Object.fromEntries(samples.map((s) => [s, partitionOf(s, 32)]));
  console.log(JSON.stringify({ partitions, vectors }));
  await client.quit();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
