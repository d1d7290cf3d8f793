//! The experiment model: steps run one after another; the faults of a step run at the same
//! time, each for its own duration after an optional start delay.
//!
//! The same model is read from a TOML file (`chaos-agent run experiment.toml`) and from the
//! control plane (JSON). Parsing collects **every** problem with its path in the document
//! (`steps[1].faults[0].percent: ...`) before anything touches the host; validation builds
//! each fault through the [`Registry`], so a spec that would be refused at run time is
//! refused here.
//!
//! ```toml
//! name = "pause-and-fill"
//!
//! [[steps]]
//! name = "pause the worker and fill its disk"
//!
//!   [[steps.faults]]
//!   kind = "process.stop"
//!   duration = "20s"
//!   name = "worker"
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use fault_core::Duration;
use fault_core::{DynFault, Registry};

/// Longest duration (and start delay) a single fault may have.
pub const MAX_FAULT_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Most steps an experiment may have.
pub const MAX_STEPS: usize = 100;
/// Most faults a step may have.
pub const MAX_FAULTS_PER_STEP: usize = 64;

/// An experiment as written by a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Short name.
    pub name: String,
    /// Optional longer description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Steps, run serially.
    pub steps: Vec<Step>,
    /// Whether the daemon spares its link to the control plane (and the DNS resolvers it
    /// needs) from network faults: their addresses are added to every network fault's
    /// `exclude_destinations`. Default `true`; `spare_control_plane = false` lets an
    /// experiment cut the agent off on purpose (the lease then reverts it). Local runs have
    /// no control plane and ignore it.
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub spare_control_plane: bool,
}

fn yes() -> bool {
    true
}

/// A step: faults that run in parallel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Name shown in progress and reports (defaults to "step N").
    pub name: String,
    /// The faults.
    pub faults: Vec<FaultDef>,
}

/// One fault of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultDef {
    /// The kind, e.g. `"disk.fill"`.
    pub kind: String,
    /// How long the fault stays in effect.
    pub duration: Duration,
    /// How long after the step starts the fault is injected.
    #[serde(default)]
    pub start_delay: Duration,
    /// The kind's own parameters.
    pub params: Map<String, Value>,
}

/// One problem found in an experiment document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Where: `steps[0].faults[1].percent`, or `line 3, column 7` for syntax errors.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in an experiment; nothing was run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "the experiment is invalid ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            if p.path.is_empty() {
                writeln!(f, "  - {}", p.message)?;
            } else {
                writeln!(f, "  - {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

impl Experiment {
    /// Parse an experiment file. Syntax errors report line and column; structural errors
    /// report paths. All structural problems are collected, not just the first.
    pub fn from_toml(text: &str) -> Result<Experiment, Invalid> {
        Experiment::from_value(&toml_to_value(text)?)
    }

    /// Read an experiment from JSON (the control plane's form, same keys as the file).
    pub fn from_value(value: &Value) -> Result<Experiment, Invalid> {
        let (exp, _, problems) = parse(value, None);
        if problems.is_empty() {
            Ok(exp)
        } else {
            Err(Invalid(problems))
        }
    }

    /// Validate every fault against the registry (spec parsing and each kind's own checks).
    /// Reads nothing from the host and changes nothing.
    pub fn validate(self, registry: &Registry) -> Result<Prepared, Invalid> {
        Experiment::load_value(&self.to_value(), registry)
    }

    /// Parse and validate an experiment file, reporting structural and per-kind problems
    /// together.
    pub fn load_toml(text: &str, registry: &Registry) -> Result<Prepared, Invalid> {
        Experiment::load_value(&toml_to_value(text)?, registry)
    }

    /// Parse and validate the JSON form (what the control plane sends).
    pub fn load_value(value: &Value, registry: &Registry) -> Result<Prepared, Invalid> {
        let (experiment, faults, problems) = parse(value, Some(registry));
        if problems.is_empty() {
            Ok(Prepared { experiment, faults })
        } else {
            Err(Invalid(problems))
        }
    }

    /// The experiment as JSON (the control plane's form).
    pub fn to_value(&self) -> Value {
        let mut top = Map::new();
        top.insert("name".into(), Value::String(self.name.clone()));
        if let Some(d) = &self.description {
            top.insert("description".into(), Value::String(d.clone()));
        }
        let steps = self
            .steps
            .iter()
            .map(|s| {
                let faults = s
                    .faults
                    .iter()
                    .map(|f| {
                        let mut m = Map::new();
                        m.insert("kind".into(), Value::String(f.kind.clone()));
                        m.insert("duration".into(), Value::String(f.duration.to_string()));
                        if f.start_delay.0 > std::time::Duration::ZERO {
                            m.insert(
                                "start_delay".into(),
                                Value::String(f.start_delay.to_string()),
                            );
                        }
                        m.extend(f.params.clone());
                        Value::Object(m)
                    })
                    .collect();
                let mut m = Map::new();
                m.insert("name".into(), Value::String(s.name.clone()));
                m.insert("faults".into(), Value::Array(faults));
                Value::Object(m)
            })
            .collect();
        top.insert("steps".into(), Value::Array(steps));
        if !self.spare_control_plane {
            top.insert("spare_control_plane".into(), Value::Bool(false));
        }
        Value::Object(top)
    }

    /// The longest this experiment can take: the sum over steps of the longest
    /// start delay + duration in the step.
    pub fn total_duration(&self) -> std::time::Duration {
        self.steps
            .iter()
            .map(|s| {
                s.faults
                    .iter()
                    .map(|f| f.start_delay.0 + f.duration.0)
                    .max()
                    .unwrap_or_default()
            })
            .sum()
    }
}

fn toml_to_value(text: &str) -> Result<Value, Invalid> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let path = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                format!("line {line}, column {col}")
            }
            None => String::new(),
        };
        Invalid(vec![Problem {
            path,
            message: e.message().trim().to_string(),
        }])
    })?;
    let mut problems = Vec::new();
    for (k, v) in &table {
        non_finite_floats(v, k.clone(), &mut problems);
    }
    if !problems.is_empty() {
        return Err(Invalid(problems));
    }
    serde_json::to_value(&table).map_err(|e| {
        Invalid(vec![Problem {
            path: String::new(),
            message: format!("unsupported value: {e}"),
        }])
    })
}

/// TOML has `nan` and `inf`; JSON does not, and converting turns them into `null`, which an
/// optional field would read as "not given" (so `load = nan` would mean the default). Refuse
/// them here, with their path, before anything else sees them.
fn non_finite_floats(v: &toml::Value, path: String, out: &mut Vec<Problem>) {
    match v {
        toml::Value::Float(f) if !f.is_finite() => out.push(Problem {
            path,
            message: format!("{f} is not a number this agent accepts (use a finite value)"),
        }),
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                non_finite_floats(v, format!("{path}[{i}]"), out);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t {
                non_finite_floats(v, format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// `null` anywhere in an experiment is refused with its path: an optional field given as
/// `null` would silently mean its default (JSON from the control plane can say `null`).
fn nulls(p: &mut Problems, v: &Value, path: &str) {
    match v {
        Value::Null => p.add(
            path,
            "null is not accepted: give a value, or leave the key out for its default",
        ),
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                nulls(p, v, &format!("{path}[{i}]"));
            }
        }
        Value::Object(m) => {
            for (k, v) in m {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                nulls(p, v, &sub);
            }
        }
        _ => {}
    }
}

type Built = Vec<Vec<Box<dyn DynFault>>>;

/// Parse what can be parsed, collecting every problem. With a registry, each fault whose
/// kind could be read is also built (validated) by its kind, even when other parts of the
/// document have problems, so one pass reports everything.
fn parse(value: &Value, registry: Option<&Registry>) -> (Experiment, Built, Vec<Problem>) {
    let mut p = Problems(Vec::new());
    let mut built = Vec::new();
    let empty = Experiment {
        name: String::new(),
        description: None,
        steps: Vec::new(),
        spare_control_plane: true,
    };
    let Some(top) = value.as_object() else {
        let msg = format!("expected a table, found {}", type_name(value));
        return (
            empty,
            built,
            vec![Problem {
                path: String::new(),
                message: msg,
            }],
        );
    };
    for key in top.keys() {
        if !["name", "description", "steps", "spare_control_plane"].contains(&key.as_str()) {
            p.add(
                key.clone(),
                "unknown key (expected name, description, steps, spare_control_plane)",
            );
        }
    }
    let name = match top.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 200 => s.clone(),
        Some(Value::String(_)) => {
            p.add("name", "must be 1 to 200 characters");
            String::new()
        }
        Some(v) => {
            p.add("name", format!("expected a string, found {}", type_name(v)));
            String::new()
        }
        None => {
            p.add("name", "missing (every experiment needs a name)");
            String::new()
        }
    };
    let description = match top.get("description") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            p.add(
                "description",
                format!("expected a string, found {}", type_name(v)),
            );
            None
        }
    };
    let spare_control_plane = match top.get("spare_control_plane") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            p.add(
                "spare_control_plane",
                format!("expected true or false, found {}", type_name(v)),
            );
            true
        }
    };
    let mut steps = Vec::new();
    match top.get("steps") {
        None => p.add(
            "steps",
            "missing: add at least one [[steps]] with [[steps.faults]]",
        ),
        Some(Value::Array(a)) if a.is_empty() => p.add("steps", "empty: add at least one step"),
        Some(Value::Array(a)) if a.len() > MAX_STEPS => p.add(
            "steps",
            format!("{} steps; at most {MAX_STEPS} are allowed", a.len()),
        ),
        Some(Value::Array(a)) => {
            for (i, s) in a.iter().enumerate() {
                let mut step_built = Vec::new();
                if let Some(step) = parse_step(&mut p, i, s, registry, &mut step_built) {
                    steps.push(step);
                    built.push(step_built);
                }
            }
        }
        Some(v) => p.add(
            "steps",
            format!(
                "expected an array of tables ([[steps]]), found {}",
                type_name(v)
            ),
        ),
    }
    (
        Experiment {
            name,
            description,
            steps,
            spare_control_plane,
        },
        built,
        p.0,
    )
}

fn build_fault(
    p: &mut Problems,
    path: &str,
    kind: &str,
    params: &Map<String, Value>,
    registry: &Registry,
    out: &mut Vec<Box<dyn DynFault>>,
) {
    match registry.build(kind, &Value::Object(params.clone())) {
        Ok(f) => out.push(f),
        Err(e) => {
            let msg = e.message().to_string();
            // "field: message" from the spec decoder becomes part of the path.
            match msg.split_once(": ") {
                Some((field, rest))
                    if !field.contains(' ')
                        && params.contains_key(field.split(['.', '[']).next().unwrap_or("")) =>
                {
                    p.add(format!("{path}.{field}"), rest)
                }
                _ if registry.get(kind).is_err() => p.add(path, e.to_string()),
                _ => p.add(path, format!("{e} ({kind})")),
            }
        }
    }
}

fn parse_step(
    p: &mut Problems,
    i: usize,
    v: &Value,
    registry: Option<&Registry>,
    built: &mut Vec<Box<dyn DynFault>>,
) -> Option<Step> {
    let path = format!("steps[{i}]");
    let Some(t) = v.as_object() else {
        p.add(path, format!("expected a table, found {}", type_name(v)));
        return None;
    };
    for key in t.keys() {
        if !["name", "faults"].contains(&key.as_str()) {
            p.add(
                format!("{path}.{key}"),
                "unknown key (a step has name and faults)",
            );
        }
    }
    let name = match t.get("name") {
        None => format!("step {}", i + 1),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(v) => {
            p.add(
                format!("{path}.name"),
                format!("expected a non-empty string, found {}", type_name(v)),
            );
            String::new()
        }
    };
    let mut faults = Vec::new();
    match t.get("faults") {
        None => p.add(
            format!("{path}.faults"),
            "missing: add at least one [[steps.faults]]",
        ),
        Some(Value::Array(a)) if a.is_empty() => {
            p.add(format!("{path}.faults"), "empty: add at least one fault")
        }
        Some(Value::Array(a)) if a.len() > MAX_FAULTS_PER_STEP => p.add(
            format!("{path}.faults"),
            format!("{} faults; at most {MAX_FAULTS_PER_STEP} per step", a.len()),
        ),
        Some(Value::Array(a)) => {
            for (j, f) in a.iter().enumerate() {
                let fpath = format!("{path}.faults[{j}]");
                if let Some(f) = parse_fault(p, &fpath, f, registry, built) {
                    faults.push(f);
                }
            }
        }
        Some(v) => p.add(
            format!("{path}.faults"),
            format!("expected an array of tables, found {}", type_name(v)),
        ),
    }
    Some(Step { name, faults })
}

fn parse_duration(p: &mut Problems, path: String, v: &Value, allow_zero: bool) -> Option<Duration> {
    let Value::String(s) = v else {
        let hint = if v.is_number() {
            format!(" with a unit, e.g. \"{v}s\"")
        } else {
            String::new()
        };
        p.add(
            path,
            format!("expected a duration string{hint}, found {}", type_name(v)),
        );
        return None;
    };
    match s.parse::<Duration>() {
        Err(e) => p.add(path, e),
        Ok(d) if !allow_zero && d.0.is_zero() => p.add(path, "must be longer than 0s"),
        Ok(d) if d > MAX_FAULT_DURATION => p.add(
            path,
            format!("{d} is longer than the maximum of {MAX_FAULT_DURATION}"),
        ),
        Ok(d) => return Some(d),
    }
    None
}

fn parse_fault(
    p: &mut Problems,
    path: &str,
    v: &Value,
    registry: Option<&Registry>,
    built: &mut Vec<Box<dyn DynFault>>,
) -> Option<FaultDef> {
    let Some(t) = v.as_object() else {
        p.add(path, format!("expected a table, found {}", type_name(v)));
        return None;
    };
    let before = p.0.len();
    let kind = match t.get("kind") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            p.add(
                format!("{path}.kind"),
                format!("expected a string, found {}", type_name(v)),
            );
            String::new()
        }
        None => {
            p.add(
                format!("{path}.kind"),
                "missing (run `chaos-agent faults` for the list of kinds)",
            );
            String::new()
        }
    };
    let duration = match t.get("duration") {
        Some(v) => parse_duration(p, format!("{path}.duration"), v, false),
        None => {
            p.add(
                format!("{path}.duration"),
                "missing (how long the fault stays, e.g. \"30s\")",
            );
            None
        }
    };
    let start_delay = match t.get("start_delay") {
        Some(v) => parse_duration(p, format!("{path}.start_delay"), v, true),
        None => Some(Duration::default()),
    };
    let params: Map<String, Value> = t
        .iter()
        .filter(|(k, _)| !["kind", "duration", "start_delay"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let before_params = p.0.len();
    for (k, v) in &params {
        nulls(p, v, &format!("{path}.{k}"));
    }
    if let Some(registry) = registry.filter(|_| !kind.is_empty() && p.0.len() == before_params) {
        build_fault(p, path, &kind, &params, registry, built);
    }
    if p.0.len() != before {
        return None;
    }
    Some(FaultDef {
        kind,
        duration: duration?,
        start_delay: start_delay?,
        params,
    })
}

/// A validated experiment: every fault built through the registry.
pub struct Prepared {
    /// The experiment.
    pub experiment: Experiment,
    /// `faults[step][fault]`, parallel to `experiment.steps`.
    pub faults: Vec<Vec<Box<dyn DynFault>>>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("experiment", &self.experiment)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "demo"

[[steps]]
name = "one"
  [[steps.faults]]
  kind = "x.y"
  duration = "20s"
  pid = 4242

  [[steps.faults]]
  kind = "x.z"
  duration = "1m"
  start_delay = "5s"
  path = "/srv"

[[steps]]
  [[steps.faults]]
  kind = "x.y"
  duration = "250ms"
"#;

    #[test]
    fn parses_the_design_shape() {
        let e = Experiment::from_toml(GOOD).unwrap();
        assert_eq!(e.name, "demo");
        assert_eq!(e.steps.len(), 2);
        assert_eq!(e.steps[1].name, "step 2");
        let f = &e.steps[0].faults[1];
        assert_eq!(
            (
                f.kind.as_str(),
                f.duration.0.as_secs(),
                f.start_delay.0.as_secs()
            ),
            ("x.z", 60, 5)
        );
        assert_eq!(f.params.get("path"), Some(&Value::String("/srv".into())));
        assert_eq!(e.total_duration(), std::time::Duration::from_millis(65_250));
        // JSON form round-trips.
        assert_eq!(Experiment::from_value(&e.to_value()).unwrap(), e);
    }

    #[test]
    fn collects_every_problem_with_its_path() {
        let bad = r#"
name = ""
colour = "blue"
[[steps]]
bogus = 1
  [[steps.faults]]
  duration = "-3s"
  [[steps.faults]]
  kind = "x.y"
  duration = 30
  start_delay = "99999h"
[[steps]]
faults = []
"#;
        let err = Experiment::from_toml(bad).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "colour",
            "name",
            "steps[0].bogus",
            "steps[0].faults[0].kind",
            "steps[0].faults[0].duration",
            "steps[0].faults[1].duration",
            "steps[0].faults[1].start_delay",
            "steps[1].faults",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
        let text = err.to_string();
        assert!(text.contains("with a unit, e.g. \"30s\""), "{text}");
    }

    #[test]
    fn nan_infinity_and_null_are_refused_with_their_path() {
        let text = r#"
name = "strict"
[[steps]]
  [[steps.faults]]
  kind = "x.y"
  duration = "1s"
  load = nan
  list = [1.0, -inf]
  [steps.faults.nested]
  deep = +inf
"#;
        let err = Experiment::from_toml(text).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "steps[0].faults[0].list[1]",
                "steps[0].faults[0].load",
                "steps[0].faults[0].nested.deep"
            ],
            "{err}"
        );
        assert!(err.to_string().contains("NaN is not a number"), "{err}");

        let json: Value = serde_json::from_str(
            r#"{"name": "strict", "steps": [{"name": "s", "faults": [
                {"kind": "x.y", "duration": "1s", "signal": null, "opts": {"reserve": null}}]}]}"#,
        )
        .unwrap();
        let err = Experiment::load_value(&json, &Registry::new()).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "steps[0].faults[0].opts.reserve",
                "steps[0].faults[0].signal"
            ],
            "{err}"
        );
        assert!(err.to_string().contains("null is not accepted"), "{err}");
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let err = Experiment::from_toml("name = \"x\"\nsteps = [\n  {kind = }\n").unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].path.starts_with("line 3"), "{:?}", err.0[0]);
    }

    #[test]
    fn unknown_kind_is_reported_with_known_kinds() {
        let err = Experiment::load_toml(GOOD, &Registry::new()).unwrap_err();
        assert_eq!(err.0.len(), 3);
        assert!(
            err.0[0].message.contains("unknown fault kind \"x.y\""),
            "{err}"
        );
    }
}
