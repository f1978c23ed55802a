//! {{name}}: a keyhole task. It greets whoever the input names, using one
//! granted secret without ever printing it.

use keyhole_guest::{TaskError, Value, info, json, secrets, serde, task};

#[derive(serde::Deserialize)]
#[serde(crate = "keyhole_guest::serde")]
struct Input {
    name: String,
}

fn greet(input: Input) -> Result<Value, TaskError> {
    // Only if the flow granted it (`secrets: [GREETING_TOKEN]`, or `--grant`).
    let token = secrets::get("GREETING_TOKEN")?;
    info!("greeting {}", input.name);
    Ok(json!({ "greeting": format!("hello, {}", input.name), "token_length": token.len() }))
}

task!(greet);

#[cfg(test)]
mod tests {
    use super::*;
    use keyhole_guest::testing::FakeHost;

    #[test]
    fn greets_with_the_granted_token() {
        let host = FakeHost::new().secret("GREETING_TOKEN", "t0k3n").install();
        let out = greet(Input { name: "ada".into() }).unwrap();
        assert_eq!(out["greeting"], "hello, ada");
        assert_eq!(out["token_length"], 5);
        assert_eq!(host.reads(), ["GREETING_TOKEN"]);
    }

    #[test]
    fn fails_without_the_grant() {
        let _host = FakeHost::new().install();
        let err = greet(Input { name: "ada".into() }).unwrap_err();
        assert_eq!(err.to_string(), "secret not granted to this task");
    }
}
