//! The front door with a test kind whose whole effect is one marker file in a directory the
//! test owns: panics, journal write failures, lost records and edited receipts.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chaos_engine::experiment::Experiment;
use chaos_engine::runner::{AbortHandle, Event, RevertOutcome, RunOutcome};
use chaos_engine::Session;
use fault_core::testing::TempDir;
use fault_core::{
    Context, Error, ErrorKind, Fault, KindInfo, Leftover, Observation, Registry, Result,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkSpec {
    dir: PathBuf,
    #[serde(default)]
    panic_in: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MarkReceipt {
    file: PathBuf,
}

struct Mark(MarkSpec);

fn marker(dir: &Path, fault_id: &str) -> PathBuf {
    dir.join(format!(".mark-{fault_id}"))
}

impl Fault for Mark {
    const KIND: &'static str = "test.mark";
    const FINDS_LEFTOVERS: bool = true;
    type Spec = MarkSpec;
    type Receipt = MarkReceipt;
    fn new(spec: MarkSpec) -> Result<Mark> {
        Ok(Mark(spec))
    }
    fn info() -> KindInfo {
        KindInfo {
            summary: "a marker file",
            privileges: "none",
            reversible: true,
            params: &[],
            example: "kind = \"test.mark\"\nduration = \"1s\"\ndir = \"/tmp\"",
        }
    }
    fn describe(&self) -> String {
        "mark".into()
    }
    fn plan(&self, cx: &Context) -> Result<MarkReceipt> {
        if self.0.panic_in.as_deref() == Some("plan") {
            panic!("plan blew up");
        }
        Ok(MarkReceipt {
            file: marker(&self.0.dir, &cx.fault_id),
        })
    }
    fn inject(&self, _cx: &Context, r: &mut MarkReceipt) -> Result<()> {
        std::fs::write(&r.file, b"x").map_err(|e| Error::io("write", e))?;
        if self.0.panic_in.as_deref() == Some("inject") {
            panic!("inject blew up");
        }
        Ok(())
    }
    fn verify(r: &MarkReceipt) -> Result<Observation> {
        Ok(if r.file.exists() {
            Observation::in_effect("marked")
        } else {
            Observation::clean("no mark")
        })
    }
    fn revert(r: &MarkReceipt) -> Result<()> {
        match std::fs::remove_file(&r.file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", e)),
            _ => Ok(()),
        }
    }
    fn manual_undo(r: &MarkReceipt) -> Vec<String> {
        vec![fault_core::shell_cmd![
            "rm",
            "-f",
            r.file.display().to_string()
        ]]
    }
    fn check_receipt(fault_id: &str, r: &MarkReceipt) -> Result<()> {
        let name = format!(".mark-{fault_id}");
        if r.file.file_name().and_then(|n| n.to_str()) == Some(name.as_str()) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Drifted,
                format!("{} is not {name}", r.file.display()),
            ))
        }
    }
    fn leftovers(known: &[String]) -> Result<Vec<Leftover<MarkReceipt>>> {
        let dir = PLAYGROUND.lock().unwrap().clone();
        Ok(known
            .iter()
            .filter_map(|id| {
                let file = marker(dir.as_ref()?, id);
                file.exists().then(|| Leftover {
                    fault_id: id.clone(),
                    found: format!("marker {}", file.display()),
                    receipt: MarkReceipt { file },
                })
            })
            .collect())
    }
}

/// Where `leftovers` looks (a test kind has no host-wide place of its own).
static PLAYGROUND: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Tests that set the playground run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Mark>();
    r
}

fn experiment(dir: &Path, extra: &str, hold: &str) -> String {
    format!(
        "name = \"t\"\n[[steps]]\n  [[steps.faults]]\n  kind = \"test.mark\"\n  duration = \"{hold}\"\n  dir = \"{}\"\n{extra}\n  [[steps.faults]]\n  kind = \"test.mark\"\n  duration = \"{hold}\"\n  dir = \"{}/b\"\n[[steps]]\n  [[steps.faults]]\n  kind = \"test.mark\"\n  duration = \"{hold}\"\n  dir = \"{}\"\n",
        dir.display(),
        dir.display(),
        dir.display()
    )
}

fn marks(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in [dir.to_path_buf(), dir.join("b")] {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.retain(|n| n.starts_with(".mark-"));
    out
}

#[test]
fn a_panicking_fault_is_a_failed_fault_and_everything_is_reverted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let reg = registry();
    let state = TempDir::new("engine-state");
    let play = TempDir::new("engine-play");
    std::fs::create_dir(play.path().join("b")).unwrap();
    for (where_, injected) in [("inject", true), ("plan", false)] {
        let text = experiment(play.path(), &format!("  panic_in = \"{where_}\""), "30s");
        let prepared = Experiment::load_toml(&text, &reg).unwrap();
        let session = Session::open(state.path(), &reg).unwrap();
        let started = std::time::Instant::now();
        let report = session
            .run(
                &prepared,
                &format!("p{where_}"),
                &AbortHandle::new(),
                &|_| {},
            )
            .unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "siblings held to the end"
        );
        assert_eq!(report.outcome, RunOutcome::Failed, "{where_}: {report:?}");
        let f = &report.steps[0].faults;
        if injected {
            let err = f[0].error.as_deref().unwrap();
            assert!(err.contains("inject panicked: inject blew up"), "{err}");
            assert_eq!(f[0].revert, RevertOutcome::Reverted);
        } else {
            let err = report.steps[0].error.as_deref().unwrap();
            assert!(err.contains("plan panicked: plan blew up"), "{err}");
        }
        assert!(report.host_clean());
        assert_eq!(marks(play.path()), Vec::<String>::new(), "{where_}");
        assert!(session
            .journal()
            .records()
            .unwrap()
            .iter()
            .all(|r| r.state == chaos_engine::journal::RecordState::Reverted));
    }
}

#[test]
fn a_journal_write_failure_is_reported_and_stops_further_injection() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let reg = registry();
    let state = TempDir::new("engine-state");
    let play = TempDir::new("engine-play");
    std::fs::create_dir(play.path().join("b")).unwrap();
    let text = experiment(play.path(), "", "2s");
    let prepared = Experiment::load_toml(&text, &reg).unwrap();
    let session = Session::open(state.path(), &reg).unwrap();
    let journal_dir = session.journal().dir().to_path_buf();
    let events = Mutex::new(Vec::new());
    // As soon as the first fault is in effect, the journal directory disappears (a
    // person's rm -rf, a failing disk): every later write fails.
    let on_event = |e: &Event| {
        if let Event::Fault { state, .. } = e {
            if *state == chaos_engine::runner::FaultState::Injected {
                let _ = std::fs::remove_dir_all(&journal_dir);
            }
        }
        events
            .lock()
            .unwrap()
            .push(serde_json::to_value(e).unwrap());
    };
    let report = session
        .run(&prepared, "jfail", &AbortHandle::new(), &on_event)
        .unwrap();
    let events = events.into_inner().unwrap();
    assert!(
        events.iter().any(|e| e["event"] == "journal-error"),
        "no journal-error event"
    );
    assert_eq!(report.outcome, RunOutcome::Failed, "{report:?}");
    let errors: Vec<&str> = report.steps[0]
        .faults
        .iter()
        .filter_map(|f| f.error.as_deref())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("journal write")),
        "{errors:?}"
    );
    assert_eq!(
        report.steps[1].outcome,
        chaos_engine::runner::StepOutcome::Skipped,
        "the second step must not inject"
    );
    assert_eq!(
        marks(play.path()),
        Vec::<String>::new(),
        "reverting went on"
    );
}

#[test]
fn recover_finds_what_a_lost_journal_left_and_refuses_edited_receipts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let reg = registry();
    let state = TempDir::new("engine-state");
    let play = TempDir::new("engine-play");
    std::fs::create_dir(play.path().join("b")).unwrap();
    *PLAYGROUND.lock().unwrap() = Some(play.path().to_path_buf());

    // A fault applied, then its record lost (the agent died; someone deleted journal/).
    let one = "name = \"t\"\n[[steps]]\n[[steps.faults]]\nkind = \"test.mark\"\nduration = \"1s\"\ndir = \"DIR\"\n"
        .replace("DIR", &play.path().display().to_string());
    let prepared = Experiment::load_toml(&one, &reg).unwrap();
    {
        let session = Session::open(state.path(), &reg).unwrap();
        let cx = Context::new("lost1-1-1", "lost1");
        let mut receipt = prepared.faults[0][0].plan(&cx).unwrap();
        let record = chaos_engine::journal::Record::planned(
            "lost1-1-1",
            "lost1",
            "test.mark",
            serde_json::Value::Null,
            receipt.clone(),
            vec![],
        );
        session.journal().put(&record).unwrap();
        prepared.faults[0][0].inject(&cx, &mut receipt).unwrap();
    }
    std::fs::remove_dir_all(state.path().join("journal")).unwrap();
    // A foreign marker (another state directory's fault) is never claimed.
    std::fs::write(marker(play.path(), "other-1-1"), b"x").unwrap();

    let status = Session::status(&reg, state.path()).unwrap();
    assert!(!status.clean());
    assert_eq!(status.orphans.len(), 1, "{status:?}");
    let session = Session::open(state.path(), &reg).unwrap();
    let recovery = session.recover().unwrap();
    assert!(recovery.clean(), "{recovery:?}");
    assert_eq!(recovery.items.len(), 1);
    assert!(recovery.items[0].detail.contains("not in the journal"));
    assert_eq!(marks(play.path()), vec![".mark-other-1-1".to_string()]);
    assert!(
        session.recover().unwrap().items.is_empty(),
        "second recover is a no-op"
    );

    // An applied record whose receipt was edited to name the foreign file: refused.
    let victim = marker(play.path(), "other-1-1");
    let mut record = chaos_engine::journal::Record::planned(
        "edit-1-1",
        "edit",
        "test.mark",
        serde_json::Value::Null,
        serde_json::json!({ "file": victim }),
        vec![],
    );
    record.state = chaos_engine::journal::RecordState::Applied;
    session.journal().put(&record).unwrap();
    let recovery = session.recover().unwrap();
    assert!(!recovery.clean());
    let item = &recovery.items[0];
    assert!(item.detail.contains("refused"), "{item:?}");
    assert!(
        item.manual_undo.iter().all(|c| !c.contains("rm ")),
        "never suggests deleting the foreign file: {item:?}"
    );
    assert!(victim.exists(), "the edited receipt's file survives");

    // forget: an applied record needs --force.
    let mut applied = record.clone();
    applied.fault_id = "force-1-1".into();
    applied.receipt = serde_json::json!({ "file": marker(play.path(), "force-1-1") });
    session.journal().put(&applied).unwrap();
    let err = session.forget("force-1-1", false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(err.to_string().contains("--force"), "{err}");
    let gone = session.forget("force-1-1", true).unwrap();
    assert!(gone.left_on_host[0].starts_with("rm -f "), "{gone:?}");
    *PLAYGROUND.lock().unwrap() = None;
}

#[test]
fn a_state_dir_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let reg = registry();
    let state = TempDir::new("engine-state");
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Session::open(state.path(), &reg).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("writable by everyone"), "{err}");
    assert!(err.to_string().contains("chmod go-w"), "{err}");
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir(state.path().join("journal")).unwrap();
    std::fs::set_permissions(
        state.path().join("journal"),
        std::fs::Permissions::from_mode(0o770),
    )
    .unwrap();
    let err = Session::open(state.path(), &reg).unwrap_err();
    assert!(err.to_string().contains("writable by its group"), "{err}");
}
