//! A standard WASI program run as a keyhole task: `main` reads its input
//! document on stdin and prints its output on stdout. Its configuration
//! comes through `wasi:config/store`, the interface Spin and wasmtime serve;
//! keyhole answers it from the task's granted secrets. It imports both
//! versions of the interface in use, and `"version"` in the input picks one.
//!
//! Input: `{"version": "rc1" | "draft", "get": [KEY, ..], "all": bool,
//! "stderr": KEY, "text": STRING, "exit": CODE}`.

use serde_json::{Map, Value, json};
use std::io::Read;

mod rc1 {
    wit_bindgen::generate!({
        inline: "
            package wasi:config@0.2.0-rc.1;
            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }
            world config { import store; }
        ",
        world: "wasi:config/config",
    });
}

mod draft {
    wit_bindgen::generate!({
        inline: "
            package wasi:config@0.2.0-draft-2024-09-27;
            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }
            world config { import store; }
        ",
        world: "wasi:config/config",
    });
}

type Get = fn(&str) -> Result<Option<String>, String>;
type GetAll = fn() -> Result<Vec<(String, String)>, String>;

fn why_r(e: rc1::wasi::config::store::Error) -> String {
    use rc1::wasi::config::store::Error;
    match e {
        Error::Upstream(s) | Error::Io(s) => s,
    }
}

fn why_d(e: draft::wasi::config::store::Error) -> String {
    use draft::wasi::config::store::Error;
    match e {
        Error::Upstream(s) | Error::Io(s) => s,
    }
}

fn store(version: &str) -> (Get, GetAll) {
    use draft::wasi::config::store as d;
    use rc1::wasi::config::store as r;
    if version == "draft" {
        (|k| d::get(k).map_err(why_d), || d::get_all().map_err(why_d))
    } else {
        (|k| r::get(k).map_err(why_r), || r::get_all().map_err(why_r))
    }
}

fn main() {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).expect("stdin is readable");
    let input: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        eprintln!("input is not JSON: {e}");
        std::process::exit(2);
    });
    let (get, get_all) = store(input["version"].as_str().unwrap_or("rc1"));

    if let Some(key) = input["stderr"].as_str() {
        eprintln!("config {key} is {:?}", get(key));
    }
    if let Some(code) = input["exit"].as_i64() {
        std::process::exit(code as i32);
    }
    if let Some(line) = input["text"].as_str() {
        println!("{line}");
        return;
    }
    let mut values = Map::new();
    for key in input["get"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        let v = match get(key) {
            Ok(v) => json!(v),
            Err(e) => json!({ "error": e }),
        };
        values.insert(key.to_owned(), v);
    }
    let mut out = json!({ "values": values });
    if input["all"].as_bool() == Some(true) {
        out["all"] = match get_all() {
            Ok(pairs) => pairs.into_iter().map(|(k, v)| json!([k, v])).collect(),
            Err(e) => json!({ "error": e }),
        };
    }
    println!("{out}");
}
