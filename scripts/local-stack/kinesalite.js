// Starts kinesalite bound to 127.0.0.1 (its CLI has no --host flag).
// Streams become ACTIVE at once (createStreamMs 0) so provisioning and tests
// do not wait on an emulated delay that tells us nothing.
//
// usage: node kinesalite.js [port] [shard limit] [iterator lifetime ms]
//
// The optional third argument shortens the lifetime of shard iterators
// (Kinesis and kinesalite: 300000 ms), so a test can make iterators expire
// in seconds instead of five minutes. GetRecords then answers
// ExpiredIteratorException exactly as it does for an iterator older than
// five minutes.
'use strict';
const crypto = require('crypto');

const port = Number(process.argv[2] || 4567);
const shardLimit = Number(process.argv[3] || 64);
const iteratorTtlMs = Number(process.argv[4] || 0);

if (iteratorTtlMs > 0) {
  const db = require('kinesalite/db');
  const path = require.resolve('kinesalite/actions/getRecords');
  const getRecords = require(path);
  require.cache[path].exports = function getRecordsWithTtl(store, data, cb) {
    let created = 0;
    try {
      const buffer = Buffer.from(data.ShardIterator, 'base64');
      const decipher = crypto.createDecipheriv('aes-256-cbc', db.ITERATOR_PWD_KEY, db.ITERATOR_PWD_IV);
      const plain = Buffer.concat([decipher.update(buffer.slice(8)), decipher.final()]).toString('utf8');
      created = Number(plain.split('/')[0]);
    } catch (e) {
      // Not decodable: kinesalite's own validation answers it.
    }
    if (created > 0 && Date.now() - created > iteratorTtlMs) {
      return cb(db.clientError('ExpiredIteratorException',
        'Iterator expired: created ' + (Date.now() - created) + ' ms ago, lifetime ' + iteratorTtlMs + ' ms.'));
    }
    return getRecords(store, data, cb);
  };
}

const kinesalite = require('kinesalite');

kinesalite({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit})
  .listen(port, '127.0.0.1', (err) => {
    if (err) {
      console.error(`kinesalite failed to listen on 127.0.0.1:${port}: ${err.message}`);
      process.exit(1);
    }
    const ttl = iteratorTtlMs > 0 ? `, iterator lifetime ${iteratorTtlMs} ms` : '';
    console.log(`kinesalite listening on 127.0.0.1:${port} (shard limit ${shardLimit}${ttl})`);
  });
