'use strict'
// Shared by the kafkajs scripts LogStore's tests run: one JSON argument in, JSON lines out.
//
// Every script takes a single JSON object as its argument ({"brokers": ["HOST:PORT"], ...}),
// prints its results to stdout as JSON, logs kafkajs' warnings and errors to stderr, and
// exits non-zero on any failure, so the Python test sees exactly what went wrong. Timeouts
// are a few seconds (ms) so a broker that never answers fails fast.

const { Kafka, logLevel } = require('kafkajs')

function options () {
  if (process.argv.length !== 3) {
    throw new Error(`usage: node ${process.argv[1]} '<json options>'`)
  }
  return JSON.parse(process.argv[2])
}

function stderrLogger () {
  return ({ namespace, level, label, log }) => {
    const { message, ...extra } = log
    process.stderr.write(`${label} [${namespace}] ${message} ${JSON.stringify(extra)}\n`)
  }
}

function client (opts) {
  return new Kafka({
    clientId: opts.clientId || 'logstore-kafkajs-test',
    brokers: opts.brokers,
    connectionTimeout: 3000,
    requestTimeout: 10000,
    retry: { retries: 5, initialRetryTime: 100, maxRetryTime: 1000 },
    logLevel: logLevel.WARN,
    logCreator: stderrLogger
  })
}

function emit (value) {
  process.stdout.write(JSON.stringify(value) + '\n')
}

function headersToStrings (headers) {
  const out = {}
  for (const [name, value] of Object.entries(headers || {})) {
    out[name] = Buffer.isBuffer(value) ? value.toString() : String(value)
  }
  return out
}

// Runs main(opts) and exits 0, or prints the error and exits 1; a hard deadline (ms) stops
// a script that would otherwise wait forever.
function run (main) {
  let opts
  try {
    opts = options()
  } catch (err) {
    process.stderr.write(`${err.stack || err}\n`)
    process.exit(2)
  }
  const deadline = setTimeout(() => {
    process.stderr.write(`deadline of ${opts.deadlineMs || 30000} ms passed\n`)
    process.exit(3)
  }, opts.deadlineMs || 30000)
  main(opts).then(
    () => {
      clearTimeout(deadline)
      process.exit(0)
    },
    (err) => {
      process.stderr.write(`${err.stack || err}\n`)
      process.exit(1)
    }
  )
}

module.exports = { client, emit, headersToStrings, run }
