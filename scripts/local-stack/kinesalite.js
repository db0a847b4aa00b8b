// Starts kinesalite bound to 127.0.0.1 (its CLI has no --host flag).
// Streams become ACTIVE at once (createStreamMs 0) so provisioning and tests
// do not wait on an emulated delay that tells us nothing.
'use strict';
const kinesalite = require('kinesalite');

const port = Number(process.argv[2] || 4567);
const shardLimit = Number(process.argv[3] || 64);

kinesalite({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit})
  .listen(port, '127.0.0.1', (err) => {
    if (err) {
      console.error(`kinesalite failed to listen on 127.0.0.1:${port}: ${err.message}`);
      process.exit(1);
    }
    console.log(`kinesalite listening on 127.0.0.1:${port} (shard limit ${shardLimit})`);
  });
