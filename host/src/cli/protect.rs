//! `host secret protect|unprotect|protections`: which secrets a flow
//! revision may not touch without a second person's review; through the
//! service layer as the root operator, or through the API with
//! $KEYHOLE_ADDR.

use super::remote::{self, Remote};
use super::table::{Align::Left, Table};
use super::*;
use keyhole::registry::Protection;

/// A secret, or a whole namespace, to protect.
#[derive(Args, Debug)]
pub(crate) struct ProtectArgs {
    /// Secret name (or --all).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    name: Option<SecretName>,
    #[command(flatten)]
    at: At,
    /// The whole namespace, and every namespace below it.
    #[arg(long)]
    all: bool,
}

/// `secret protect` (`on`) or `secret unprotect`.
pub(crate) fn set(dir: &DataDir, a: ProtectArgs, on: bool) -> Result<(), Exit> {
    let ns = &a.at.namespace;
    let what = match &a.name {
        Some(n) => format!("secret {n} in namespace {ns}"),
        None => format!("every secret of namespace {ns} and below"),
    };
    let changed = match Remote::from_env()? {
        Some(r) => {
            let path = match &a.name {
                Some(n) => format!("/api/v1/secrets/{}/{n}/protection", remote::ns_path(ns)),
                None => format!("/api/v1/namespaces/{}/protection", remote::ns_path(ns)),
            };
            let v = if on {
                r.send(&format!("protect {what}"), "PUT", &path, &serde_json::json!({}), &[])?
            } else {
                r.delete(&format!("unprotect {what}"), &path)?
            };
            remote::typed::<keyhole::service::bodies::ProtectionChanged>(v, "a protection's change")?.changed
        }
        None => {
            let who = keyhole::vouch::Voucher::root();
            keyhole::service::flows::protect(&open_state(dir)?, &who, ns, a.name.as_ref(), on)?
        }
    };
    match (on, changed) {
        (true, true) => eprintln!(
            "protected {what}: a flow revision that touches it now waits for a second person holding secret:use to approve it"
        ),
        (true, false) => eprintln!("{what} was already protected"),
        (false, true) => eprintln!("unprotected {what}"),
        (false, false) => eprintln!("{what} was not protected (a protection of a namespace above it still applies)"),
    }
    Ok(())
}

/// `secret protections`.
pub(crate) fn list(dir: &DataDir, json: bool) -> Result<(), Exit> {
    let list: Vec<Protection> = match Remote::from_env()? {
        Some(r) => serde_json::from_value(r.get("list protections", "/api/v1/protections")?)
            .map_err(|e| fail(HOST, anyhow::anyhow!("the server's answer is not a protection list: {e}")))?,
        None => open_state(dir)?.registry().protections().map_err(super::flow::registry_exit)?,
    };
    let mut out = std::io::stdout().lock();
    if json {
        return print_json(&mut out, &list);
    }
    let mut table = Table::new(&[("NAMESPACE", Left), ("SECRET", Left), ("SINCE", Left), ("BY", Left)]);
    for p in list {
        let secret = p.secret.as_ref().map_or_else(|| "* (and below)".to_owned(), ToString::to_string);
        table.row([p.namespace.to_string(), secret, p.created_at, p.created_by]);
    }
    table.write(&mut out).map_err(stdout_err)
}
