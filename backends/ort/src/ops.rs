//! Single-operator ONNX graphs that carry out the core's tensor operations on ONNX Runtime,
//! built on first use and cached per operation, attributes and device. Their inputs have
//! open shapes, so one session serves every size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ort::session::{Session, SessionInputValue};
use ort::value::DynValue;

use crate::error::{Error, Result};
use crate::graph::{Attr, FLOAT, Graph, INT64};
use crate::runtime::{OrtDevice, session};

/// A cached one-operator session and the name of its output.
pub(crate) struct Op {
    session: Mutex<Session>,
    output: String,
    name: String,
}

type Cache = Mutex<HashMap<(String, OrtDevice), Arc<Op>>>;

fn cache() -> &'static Cache {
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// What an op's graph takes: float inputs (`x0`, `x1`, ...) and int64 inputs (`i0`, ...),
/// in the order given to [`Op::run`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum In {
    F,
    I,
}

/// The op `op_type` over `inputs` with `attrs`, cached under `key` (which must name
/// everything that shapes the graph).
pub(crate) fn op(
    key: &str,
    device: OrtDevice,
    op_type: &str,
    inputs: &[In],
    attrs: &[(&str, Attr)],
) -> Result<Arc<Op>> {
    // A poisoned lock means another thread panicked while inserting; the map itself is
    // still consistent (an insert is one call), so it is used as it is.
    let mut map = cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(op) = map.get(&(key.to_string(), device)) {
        return Ok(op.clone());
    }
    let mut g = Graph::new(key);
    let names: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(n, kind)| match kind {
            In::F => g.input(&format!("x{n}"), FLOAT, None),
            In::I => g.input(&format!("i{n}"), INT64, None),
        })
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let output = g.node(op_type, &refs, attrs);
    g.output(&output, FLOAT);
    let session = session(&g.into_model_bytes(), device, key)?;
    let op = Arc::new(Op { session: Mutex::new(session), output, name: key.to_string() });
    map.insert((key.to_string(), device), op.clone());
    Ok(op)
}

impl Op {
    /// Runs the op on `inputs` (in declaration order) and returns its output.
    pub(crate) fn run(&self, inputs: Vec<SessionInputValue<'_>>) -> Result<DynValue> {
        let mut session = self.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = session.run(&inputs[..]).map_err(Error::ort(self.name.as_str()))?;
        out.remove(&self.output)
            .ok_or_else(|| Error::MissingOutput { what: self.name.clone(), output: self.output.clone() })
    }
}
