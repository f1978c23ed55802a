//! A plugin built against the frozen `keyhole:task@0.1.0` (`wit/0.1.0`),
//! without the SDK: the host must keep running it unchanged. Reads the
//! secret its input names, logs a line holding it, and returns it with
//! its context (the host masks both).

// The generated glue is unsafe code (the SDK wraps it; this plugin does
// without the SDK on purpose).
#![allow(unsafe_code)]

wit_bindgen::generate!({
    path: "../../wit/0.1.0",
    world: "keyhole:task/task",
});

use keyhole::task::{context, log, secrets};

struct Legacy;

impl Guest for Legacy {
    fn run(input: String) -> Result<String, String> {
        let name = input.trim().trim_matches('"');
        let value = secrets::get(name).map_err(|e| format!("{e:?}"))?;
        log::log(log::Level::Info, &format!("0.1.0 read {value}"));
        let me = context::current();
        Ok(format!(r#"{{"value":"{value}","task":"{}","wit":"0.1.0"}}"#, me.task))
    }
}

export!(Legacy);
