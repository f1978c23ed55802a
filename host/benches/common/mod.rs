//! Shared by the benchmarks: one task through keyhole's real path.

use keyhole::access::TaskIdentity;
use keyhole::audit::AuditLog;
use keyhole::backend::Router;
use keyhole::exec::{ExecutionEnv, Limits, TaskSpec, run_task};
use keyhole::mask::MaskSet;
use keyhole::names::{ExecutionId, Namespace, TaskId};
use keyhole::policy::Grants;
use keyhole::runtime::Runtime;
use std::sync::Arc;

/// One task through keyhole's real path (`run_task`), with fresh masks and
/// pins, as a flow would run it.
#[allow(clippy::too_many_arguments)]
pub fn keyhole_task(
    rt: &tokio::runtime::Runtime,
    runtime: &Runtime,
    plugin: &keyhole::runtime::Plugin,
    secrets: &Arc<Router>,
    sink: &keyhole::output::Sink,
    audit: &AuditLog,
    task: &TaskId,
    grants: Grants,
    input: &serde_json::Value,
    network: keyhole::network::NetworkPolicy,
) -> serde_json::Value {
    let env = ExecutionEnv {
        secrets: secrets.clone(),
        sink: sink.clone(),
        masks: Arc::new(MaskSet::new()),
        audit: audit.clone(),
        pins: Default::default(),
        cancel: Default::default(),
        leases: Arc::new(keyhole::lease::ExecutionLeases::new(
            secrets.clone(),
            audit.clone(),
            keyhole::audit::Actor::Server,
        )),
        memory: Default::default(),
        waiting: Default::default(),
    };
    let spec = TaskSpec {
        plugin,
        identity: Arc::new(TaskIdentity {
            namespace: Namespace::root(),
            flow: task.clone(),
            task: task.clone(),
            execution: ExecutionId::generate(),
            plugin_sha256: plugin.sha256.clone(),
        }),
        grants,
        rotate: Default::default(),
        attempt: 1,
        input,
        limits: Limits::default(),
        network,
    };
    rt.block_on(run_task(runtime, &env, spec)).result.expect("the task succeeds")
}
