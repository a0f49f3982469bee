'use strict'
// Runs opts.steps in order with kafkajs' admin client and prints one JSON line per step:
// {"step": name, "result": ...}. Steps: createTopics {topics, validateOnly},
// fetchTopicMetadata {topics}, fetchTopicOffsets {topic}, fetchOffsets {groupId, topics},
// listGroups, describeGroups {groupIds}, deleteTopics {topics}. A step that throws prints
// {"step": name, "error": {"type", "message"}} and the script goes on, so a test can assert
// on the error a broker answers.

const { client, emit, run } = require('./common')

const STEPS = {
  createTopics: (admin, s) => admin.createTopics({
    topics: s.topics, validateOnly: Boolean(s.validateOnly), waitForLeaders: true, timeout: 5000
  }),
  fetchTopicMetadata: (admin, s) => admin.fetchTopicMetadata({ topics: s.topics }),
  fetchTopicOffsets: (admin, s) => admin.fetchTopicOffsets(s.topic),
  fetchOffsets: (admin, s) => admin.fetchOffsets({ groupId: s.groupId, topics: s.topics }),
  listGroups: (admin) => admin.listGroups(),
  describeGroups: (admin, s) => admin.describeGroups(s.groupIds),
  deleteTopics: (admin, s) => admin.deleteTopics({ topics: s.topics, timeout: 5000 })
}

run(async (opts) => {
  const admin = client(opts).admin()
  await admin.connect()
  try {
    for (const step of opts.steps) {
      try {
        emit({ step: step.name, result: await STEPS[step.name](admin, step) })
      } catch (err) {
        emit({ step: step.name, error: { type: err.type || err.name, message: err.message } })
      }
    }
  } finally {
    await admin.disconnect()
  }
})
