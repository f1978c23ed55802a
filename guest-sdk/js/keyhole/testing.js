// A fake keyhole host for plain `node --test`: load it first with
// `node --import ./keyhole/testing.js --test`, then
//
//     import { FakeHost } from './keyhole/testing.js';
//     const host = new FakeHost({ secrets: { GREETING_TOKEN: 't0k3n' } }).install();
//     const { run } = await import('./app.js');
//     assert.equal(JSON.parse(run('{"name":"ada"}')).tokenLength, 5);
//     assert.deepEqual(host.reads, ['GREETING_TOKEN']);
//
// Like the real host it refuses (`denied`) every secret it was not given.
// `rotatable: ['NAME']` lets the task rotate NAME: `rotation` calls answer with
// placeholders `khp_fake_next_NAME` / `khp_fake_current_NAME` and are recorded
// in `host.rotations` (`'generate NAME 32 alnum'`, ...).
// It answers the `keyhole:task/...` imports that only exist inside the
// component, through a Node module hook.

import { register } from 'node:module';

const FAKES = {
  secrets: `export function get(name) { return globalThis.__keyholeFake.get(name); }`,
  log: `export function log(level, message) { globalThis.__keyholeFake.log(level, message); }`,
  context: `export function current() { return globalThis.__keyholeFake.context; }`,
  rotation: [
    `export function generate(name, spec) { return globalThis.__keyholeFake.rotate(name, 'generate ' + spec.length + ' ' + spec.charset); }`,
    `export function capture(name, pointer) { return globalThis.__keyholeFake.rotate(name, 'capture ' + pointer); }`,
    `export function commit(name) { globalThis.__keyholeFake.rotate(name, 'commit'); return 2n; }`,
    `export function discard(name) { globalThis.__keyholeFake.rotate(name, 'discard'); }`,
  ].join('\n'),
};

const hooks = `
const FAKES = ${JSON.stringify(FAKES)};
export async function resolve(specifier, context, next) {
  const m = /^keyhole:task\\/([a-z-]+)@/.exec(specifier);
  if (m && FAKES[m[1]]) return { url: 'keyhole-fake:' + m[1], shortCircuit: true };
  return next(specifier, context);
}
export async function load(url, context, next) {
  if (url.startsWith('keyhole-fake:')) {
    return { format: 'module', source: FAKES[url.slice('keyhole-fake:'.length)], shortCircuit: true };
  }
  return next(url, context);
}`;
register('data:text/javascript,' + encodeURIComponent(hooks));

export class FakeHost {
  constructor({ secrets = {}, errors = {}, rotatable = [], namespace = '', flow = 'test', task = 'test' } = {}) {
    this.secrets = { ...secrets };
    this.errors = { ...errors };
    this.rotatable = [...rotatable];
    this.rotations = [];
    this.context = { namespace, flow, task, executionId: '00000000-0000-0000-0000-000000000000' };
    this.reads = [];
    this.logs = [];
  }

  install() {
    globalThis.__keyholeFake = this;
    return this;
  }

  get(name) {
    this.reads.push(name);
    const fail = (tag, val) => {
      const e = new Error(`${tag}`);
      e.payload = val === undefined ? { tag } : { tag, val };
      throw e;
    };
    if (name in this.errors) fail(this.errors[name]);
    if (!(name in this.secrets)) fail('denied');
    return this.secrets[name];
  }

  log(level, message) {
    this.logs.push([level, message]);
  }

  rotate(name, step) {
    if (!this.rotatable.includes(name)) {
      const e = new Error('denied');
      e.payload = { tag: 'denied' };
      throw e;
    }
    const [verb, ...rest] = step.split(' ');
    this.rotations.push([verb, name, ...rest].join(' '));
    return { next: `khp_fake_next_${name}`, current: `khp_fake_current_${name}` };
  }
}
