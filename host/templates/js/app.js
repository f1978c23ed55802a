// {{name}}: a keyhole task. It greets whoever the input names, using one
// granted secret without ever printing it.

import { log, secrets, task } from './keyhole/index.js';

export const run = task((input) => {
  // Only if the flow granted it (`secrets: [GREETING_TOKEN]`, or `--grant`).
  const token = secrets.get('GREETING_TOKEN');
  log.info(`greeting ${input.name}`);
  return { greeting: `hello, ${input.name}`, token_length: token.length };
});
