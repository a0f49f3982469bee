'use strict'
// Joins opts.groupId, subscribes to opts.topic (fromBeginning when the group has no commit),
// collects opts.expect messages through eachMessage, commits the next offset of each
// partition it read, leaves the group and prints the messages:
// [{partition, offset, key, value, headers}] (offsets as numbers, bytes as UTF-8).
// opts.settleMs keeps consuming that long after the last expected message, so a test can
// tell "exactly these" from "at least these".

const { client, emit, headersToStrings, run } = require('./common')

run(async (opts) => {
  const consumer = client(opts).consumer({
    groupId: opts.groupId,
    sessionTimeout: 6000,
    rebalanceTimeout: 6000,
    heartbeatInterval: 500,
    maxWaitTimeInMs: 200,
    retry: { retries: 5, initialRetryTime: 100, maxRetryTime: 1000 }
  })
  const messages = []
  const next = {}
  let resolveDone
  const done = new Promise((resolve) => { resolveDone = resolve })
  await consumer.connect()
  try {
    await consumer.subscribe({ topics: [opts.topic], fromBeginning: true })
    await consumer.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => {
        messages.push({
          partition,
          offset: Number(message.offset),
          key: message.key === null ? null : message.key.toString(),
          value: message.value === null ? null : message.value.toString(),
          headers: headersToStrings(message.headers)
        })
        next[partition] = String(Number(message.offset) + 1)
        if (messages.length >= opts.expect) resolveDone()
      }
    })
    if (opts.expect > 0) await done
    await new Promise((resolve) => setTimeout(resolve, opts.settleMs || 0))
    const offsets = Object.entries(next).map(([partition, offset]) => (
      { topic: opts.topic, partition: Number(partition), offset }
    ))
    if (offsets.length > 0) await consumer.commitOffsets(offsets)
    emit({ messages, committed: offsets })
  } finally {
    await consumer.disconnect()
  }
})
