'use strict'
// Produces opts.messages ([{key, value, headers, partition}]) to opts.topic with opts.acks
// (1 or -1) and opts.compression ("gzip" or none), then prints the RecordMetadata kafkajs
// returns: [{topicName, partition, errorCode, baseOffset, ...}].

const { CompressionTypes, Partitioners } = require('kafkajs')
const { client, emit, run } = require('./common')

const CODECS = { none: CompressionTypes.None, gzip: CompressionTypes.GZIP }

run(async (opts) => {
  const producer = client(opts).producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    allowAutoTopicCreation: false,
    idempotent: Boolean(opts.idempotent),
    maxInFlightRequests: opts.idempotent ? 1 : undefined
  })
  await producer.connect()
  try {
    const metadata = await producer.send({
      topic: opts.topic,
      acks: opts.acks,
      timeout: 5000,
      compression: CODECS[opts.compression || 'none'],
      messages: opts.messages
    })
    emit(metadata)
  } finally {
    await producer.disconnect()
  }
})
