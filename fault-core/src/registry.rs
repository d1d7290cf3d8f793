//! The kind registry: maps kind strings to constructors and to the receipt-only functions
//! (verify, revert, manual undo), so the runner, recovery and examples never `match` on
//! kinds. Each fault crate exposes `register(&mut Registry)`.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use serde_json::Value;

use crate::fault::{Context, Fault, KindInfo, Leftover, Observation};
use crate::{Error, ErrorKind, Result};

/// A fault with its spec type erased; receipts travel as JSON values.
pub trait DynFault: Send + Sync {
    /// The kind string.
    fn kind(&self) -> &'static str;
    /// One line saying what this fault will do.
    fn describe(&self) -> String;
    /// The validated spec, as JSON (what the journal stores).
    fn spec(&self) -> Value;
    /// See [`Fault::plan`].
    fn plan(&self, cx: &Context) -> Result<Value>;
    /// See [`Fault::inject`].
    fn inject(&self, cx: &Context, receipt: &mut Value) -> Result<()>;
    /// See [`Fault::maintain_interval`].
    fn maintain_interval(&self) -> Option<StdDuration>;
    /// See [`Fault::maintain`].
    fn maintain(&self, cx: &Context, receipt: &mut Value) -> Result<Option<StdDuration>>;
}

struct Erased<F: Fault> {
    fault: F,
    spec: Value,
}

fn decode<R: serde::de::DeserializeOwned>(kind: &str, v: &Value) -> Result<R> {
    R::deserialize(v).map_err(|e| {
        Error::new(
            ErrorKind::Journal,
            format!("{kind}: unreadable receipt: {e}"),
        )
    })
}

fn encode<R: serde::Serialize>(kind: &str, r: &R) -> Result<Value> {
    serde_json::to_value(r).map_err(|e| {
        Error::new(
            ErrorKind::Journal,
            format!("{kind}: receipt not serializable: {e}"),
        )
    })
}

impl<F: Fault> DynFault for Erased<F> {
    fn kind(&self) -> &'static str {
        F::KIND
    }
    fn describe(&self) -> String {
        self.fault.describe()
    }
    fn spec(&self) -> Value {
        self.spec.clone()
    }
    fn plan(&self, cx: &Context) -> Result<Value> {
        encode(F::KIND, &self.fault.plan(cx)?)
    }
    fn inject(&self, cx: &Context, receipt: &mut Value) -> Result<()> {
        let mut r: F::Receipt = decode(F::KIND, receipt)?;
        let result = self.fault.inject(cx, &mut r);
        // Keep what inject recorded even when it failed part-way: revert needs it.
        *receipt = encode(F::KIND, &r)?;
        result
    }
    fn maintain_interval(&self) -> Option<StdDuration> {
        self.fault.maintain_interval()
    }
    fn maintain(&self, cx: &Context, receipt: &mut Value) -> Result<Option<StdDuration>> {
        let mut r: F::Receipt = decode(F::KIND, receipt)?;
        let result = self.fault.maintain(cx, &mut r);
        *receipt = encode(F::KIND, &r)?;
        result
    }
}

/// One registered kind.
#[derive(Clone, Copy)]
pub struct KindEntry {
    /// The kind string.
    pub kind: &'static str,
    /// Describe the kind.
    pub info: fn() -> KindInfo,
    /// See [`Fault::FINDS_LEFTOVERS`].
    pub finds_leftovers: bool,
    /// Whether this host can run it (see [`Fault::availability`]).
    pub availability: fn() -> crate::Availability,
    build: fn(&Value) -> Result<Box<dyn DynFault>>,
    verify: fn(&Value) -> Result<Observation>,
    revert: fn(&Value) -> Result<()>,
    manual_undo: fn(&Value) -> Result<Vec<String>>,
    targets: fn(&Value) -> Result<Vec<String>>,
    touches: fn(&Value) -> Result<Vec<String>>,
    check_receipt: fn(&str, &Value) -> Result<()>,
    leftovers: fn(&[String]) -> Result<Vec<Leftover<Value>>>,
}

impl std::fmt::Debug for KindEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindEntry")
            .field("kind", &self.kind)
            .finish()
    }
}

fn build<F: Fault>(spec: &Value) -> Result<Box<dyn DynFault>> {
    let parsed: F::Spec = serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            Error::invalid(inner)
        } else {
            Error::invalid(format!("{path}: {inner}"))
        }
    })?;
    let fault = F::new(parsed)?;
    // The journal keeps the spec as written (and validated).
    Ok(Box::new(Erased {
        fault,
        spec: spec.clone(),
    }))
}

fn verify<F: Fault>(r: &Value) -> Result<Observation> {
    F::verify(&decode(F::KIND, r)?)
}
fn revert<F: Fault>(r: &Value) -> Result<()> {
    F::revert(&decode(F::KIND, r)?)
}
fn manual_undo<F: Fault>(r: &Value) -> Result<Vec<String>> {
    Ok(F::manual_undo(&decode(F::KIND, r)?))
}
fn targets<F: Fault>(r: &Value) -> Result<Vec<String>> {
    Ok(F::targets(&decode(F::KIND, r)?))
}
fn touches<F: Fault>(r: &Value) -> Result<Vec<String>> {
    Ok(F::touches(&decode(F::KIND, r)?))
}
fn check_receipt<F: Fault>(fault_id: &str, r: &Value) -> Result<()> {
    F::check_receipt(fault_id, &decode(F::KIND, r)?)
}
fn leftovers<F: Fault>(known: &[String]) -> Result<Vec<Leftover<Value>>> {
    F::leftovers(known)?
        .into_iter()
        .map(|l| {
            Ok(Leftover {
                fault_id: l.fault_id,
                receipt: encode(F::KIND, &l.receipt)?,
                found: l.found,
            })
        })
        .collect()
}

/// Kind string -> constructor and receipt functions.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, KindEntry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Register fault type `F` under `F::KIND`. Registering a kind twice keeps the last.
    pub fn register<F: Fault>(&mut self) -> &mut Registry {
        self.kinds.insert(
            F::KIND,
            KindEntry {
                kind: F::KIND,
                info: F::info,
                finds_leftovers: F::FINDS_LEFTOVERS,
                availability: F::availability,
                build: build::<F>,
                verify: verify::<F>,
                revert: revert::<F>,
                manual_undo: manual_undo::<F>,
                targets: targets::<F>,
                touches: touches::<F>,
                check_receipt: check_receipt::<F>,
                leftovers: leftovers::<F>,
            },
        );
        self
    }

    /// The entry for `kind`.
    pub fn get(&self, kind: &str) -> Result<&KindEntry> {
        self.kinds.get(kind).ok_or_else(|| {
            let known: Vec<&str> = self.kinds.keys().copied().collect();
            Error::invalid(format!(
                "unknown fault kind \"{kind}\" (known kinds: {})",
                known.join(", ")
            ))
        })
    }

    /// Every registered kind, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &KindEntry> {
        self.kinds.values()
    }

    /// Validate `spec` for `kind` and build the fault.
    pub fn build(&self, kind: &str, spec: &Value) -> Result<Box<dyn DynFault>> {
        (self.get(kind)?.build)(spec)
    }

    /// Verify from a receipt alone.
    pub fn verify(&self, kind: &str, receipt: &Value) -> Result<Observation> {
        (self.get(kind)?.verify)(receipt)
    }

    /// Revert from a receipt alone.
    pub fn revert(&self, kind: &str, receipt: &Value) -> Result<()> {
        (self.get(kind)?.revert)(receipt)
    }

    /// The manual undo commands for a receipt.
    pub fn manual_undo(&self, kind: &str, receipt: &Value) -> Result<Vec<String>> {
        (self.get(kind)?.manual_undo)(receipt)
    }

    /// The targets a receipt acts on.
    pub fn targets(&self, kind: &str, receipt: &Value) -> Result<Vec<String>> {
        (self.get(kind)?.targets)(receipt)
    }

    /// What a receipt touches, for people (see [`Fault::touches`]).
    pub fn touches(&self, kind: &str, receipt: &Value) -> Result<Vec<String>> {
        (self.get(kind)?.touches)(receipt)
    }

    /// Check a journaled receipt against its fault id (see [`Fault::check_receipt`]).
    pub fn check_receipt(&self, kind: &str, fault_id: &str, receipt: &Value) -> Result<()> {
        (self.get(kind)?.check_receipt)(fault_id, receipt)
    }

    /// This kind's artifacts found on the host (see [`Fault::leftovers`]).
    pub fn leftovers(&self, kind: &str, known: &[String]) -> Result<Vec<Leftover<Value>>> {
        (self.get(kind)?.leftovers)(known)
    }
}
