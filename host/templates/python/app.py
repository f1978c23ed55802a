"""{{name}}: a keyhole task. It greets whoever the input names, using one
granted secret without ever printing it."""

from keyhole import log, secrets, task


@task
def run(input):
    # Only if the flow granted it (`secrets: [GREETING_TOKEN]`, or `--grant`).
    token = secrets.get("GREETING_TOKEN")
    log.info(f"greeting {input['name']}")
    return {"greeting": f"hello, {input['name']}", "token_length": len(token)}
