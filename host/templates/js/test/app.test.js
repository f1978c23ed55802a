import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeHost } from '../keyhole/testing.js';

const { run } = await import('../app.js');

test('greets with the granted token', () => {
  const host = new FakeHost({ secrets: { GREETING_TOKEN: 't0k3n' } }).install();
  assert.deepEqual(JSON.parse(run('{"name":"ada"}')), { greeting: 'hello, ada', token_length: 5 });
  assert.deepEqual(host.reads, ['GREETING_TOKEN']);
});

test('fails without the grant', () => {
  new FakeHost().install();
  assert.throws(() => run('{"name":"ada"}'), /secret GREETING_TOKEN: denied/);
});
