// Write a keyhole task in JavaScript.
//
// A keyhole task is a WebAssembly component that takes a JSON document in and
// gives a JSON document back. Wrap one function with `task` and export it as
// `run`:
//
//     import { task, secrets, log } from './keyhole/index.js';
//
//     export const run = task((input) => {
//       const token = secrets.get('GREETING_TOKEN'); // only if the flow granted it
//       log.info(`greeting ${input.name}`);
//       return { greeting: `hello, ${input.name}`, tokenLength: token.length };
//     });
//
// Build it with `host plugin build` (componentize-js underneath). Values the
// task reads are masked by the host in everything it prints, logs or returns.
// Under plain `node --test`, `keyhole/testing.js` provides a fake host.
//
// Hands-off rotation (a flow's `rotate: [NAME]`) is `rotation`: the task holds
// placeholders only:
//
//     const staged = rotation.generate('SERVICE_PASSWORD', 32);
//     const r = await fetch(url, { method: 'POST', body: JSON.stringify({ password: staged.next }) });
//     r.ok ? rotation.commit('SERVICE_PASSWORD') : rotation.discard('SERVICE_PASSWORD');
//
// This module targets keyhole:task@0.2.0 (WIT_VERSION).

import * as witSecrets from 'keyhole:task/secrets@0.2.0';
import * as witLog from 'keyhole:task/log@0.2.0';
import * as witContext from 'keyhole:task/context@0.2.0';
import * as witRotation from 'keyhole:task/rotation@0.2.0';

export const WIT_VERSION = '0.2.0';

/** Why the host did not hand out a secret: `kind` is `denied`, `not-found`,
 * `revoked`, `expired` or `unavailable` (with `detail` saying why). */
export class SecretError extends Error {
  constructor(name, kind, detail = '') {
    super(`secret ${name}: ${kind}${detail ? `: ${detail}` : ''}`);
    this.name = 'SecretError';
    this.secret = name;
    this.kind = kind;
    this.detail = detail;
  }
}

/** Throw it to fail the task with a message for the operator. */
export class TaskError extends Error {
  constructor(message) {
    super(message);
    this.name = 'TaskError';
  }
}

export const secrets = {
  /** The value of secret `name`; throws a SecretError when the host does not
   * hand it out. */
  get(name) {
    try {
      return witSecrets.get(name);
    } catch (e) {
      const p = e && e.payload;
      if (p && typeof p.tag === 'string') throw new SecretError(name, p.tag, p.val ?? '');
      throw e;
    }
  },
};

/** Why a rotation step was refused: `kind` is `denied` (not in the task's
 * `rotate:`), `not-found`, `refused` or `unavailable`, `detail` says why. */
export class RotationError extends Error {
  constructor(name, kind, detail = '') {
    super(`rotation of ${name}: ${kind}${detail ? `: ${detail}` : ''}`);
    this.name = 'RotationError';
    this.secret = name;
    this.kind = kind;
    this.detail = detail;
  }
}

const rotating = (name, call) => {
  try {
    return call();
  } catch (e) {
    const p = e && e.payload;
    if (p && typeof p.tag === 'string') throw new RotationError(name, p.tag, p.val ?? '');
    throw e;
  }
};

/** Hands-off rotation of a secret the flow lets this task rotate, bound to
 * the service's destinations. `generate` and `capture` return placeholders,
 * `{ next, current }`: put them in requests to the service; the host puts
 * the values in as the requests leave. */
export const rotation = {
  /** Stages a new random value (`alnum`, `hex`, `base64`, `ascii`; 8 to 4096). */
  generate(name, length = 32, charset = 'alnum') {
    return rotating(name, () => witRotation.generate(name, { length, charset }));
  },
  /** Captures the new value from the first 2xx JSON answer of one of the
   * secret's destinations at JSON pointer `pointer`; the task reads `next` there. */
  capture(name, pointer) {
    return rotating(name, () => witRotation.capture(name, pointer));
  },
  /** Makes the staged value current (once the service accepted it); returns its version. */
  commit(name) {
    return Number(rotating(name, () => witRotation.commit(name)));
  },
  /** Erases the staged value (refused once the service may hold it). */
  discard(name) {
    rotating(name, () => witRotation.discard(name));
  },
};

const emit = (level) => (message) => witLog.log(level, String(message));

/** Log lines to the operator's terminal, masked, prefixed with the task id. */
export const log = {
  debug: emit('debug'),
  info: emit('info'),
  warn: emit('warn'),
  error: emit('error'),
};

export const context = {
  /** `{ namespace, flow, task, executionId }` of the running task. */
  current() {
    return witContext.current();
  },
};

/** Turns `fn(input) -> output` into the component's `run` export: the input
 * is decoded from JSON, the output encoded as JSON, and a thrown error fails
 * the task with its message. `fn` may be async (to `await fetch(...)`). */
export function task(fn) {
  const fail = (e) => {
    throw e instanceof Error ? `${e.name === 'Error' ? '' : `${e.name}: `}${e.message}` : String(e);
  };
  return function run(input) {
    let output;
    try {
      output = fn(JSON.parse(input));
    } catch (e) {
      fail(e);
    }
    if (output && typeof output.then === 'function') {
      return output.then((o) => JSON.stringify(o ?? null), fail);
    }
    return JSON.stringify(output ?? null);
  };
}
