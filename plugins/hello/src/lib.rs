//! Hello world: the smallest useful keyhole task. It reads one granted secret
//! and greets whoever the input names, without ever printing the secret.

use keyhole_guest::{TaskError, secrets, task};
use serde_json::{Value, json};

#[derive(serde::Deserialize)]
struct Input {
    name: String,
}

fn hello(input: Input) -> Result<Value, TaskError> {
    let token = secrets::get("API_TOKEN")?;
    Ok(json!({ "message": format!("hello, {}", input.name), "authenticated": !token.is_empty() }))
}

task!(hello);
