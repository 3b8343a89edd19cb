// A Node.js producer process with ioredis, run by the tests (tests/producers.py installs ioredis once).
//
//     node ioredis_producer.js REDIS_URL ENTRIES_JSON
//
// ENTRIES_JSON is a list of [stream, [field, value, ...]]; each is one XADD ... * as a Node service writes it.
// Prints the ioredis version.
"use strict";

const Redis = require("ioredis");

async function main() {
  const [url, entries] = process.argv.slice(2);
  const redis = new Redis(url);
  try {
    for (const [stream, pairs] of JSON.parse(entries)) {
      await redis.xadd(stream, "*", ...pairs);
    }
  } finally {
    redis.disconnect();
  }
  console.log(require("ioredis/package.json").version);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
