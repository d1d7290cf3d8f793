//! Helpers for tests of fault crates that need the engine: kind examples read as
//! experiment files, and a real agent process to `kill -9`.

/// Build every kind `register` registers from its `info().example`, read exactly as an
/// experiment file is (through [`crate::experiment::Experiment::load_toml`]), and check that
/// every key an example uses is a documented parameter. Panics naming the kind otherwise.
/// Returns the built faults by kind, for crate-specific checks (`describe()`, ...).
pub fn build_examples(
    register: fn(&mut fault_core::Registry),
) -> std::collections::BTreeMap<&'static str, Box<dyn fault_core::DynFault>> {
    let mut reg = fault_core::Registry::new();
    register(&mut reg);
    let mut out = std::collections::BTreeMap::new();
    for entry in reg.kinds() {
        let info = (entry.info)();
        let text = format!(
            "name = \"example\"\n[[steps]]\n[[steps.faults]]\n{}\n",
            info.example
        );
        let mut prepared = crate::experiment::Experiment::load_toml(&text, &reg)
            .unwrap_or_else(|e| panic!("{}: its example does not validate: {e}", entry.kind));
        let def = &prepared.experiment.steps[0].faults[0];
        assert_eq!(
            def.kind, entry.kind,
            "{}: its example names another kind",
            entry.kind
        );
        let documented: Vec<&str> = info.params.iter().map(|p| p.name).collect();
        for key in def.params.keys() {
            assert!(
                documented.contains(&key.as_str()),
                "{}: example key `{key}` is not a documented parameter",
                entry.kind
            );
        }
        out.insert(entry.kind, prepared.faults.remove(0).remove(0));
    }
    out
}

#[doc(hidden)]
pub use fault_core as __fault_core;
#[doc(hidden)]
pub use serde_json as __serde_json;

/// Define, in a test binary, a way to run a real agent process and `kill -9` it while its
/// faults are applied: `fn run_agent_then_kill_it(experiment_toml) -> (journal dir, the
/// stressor processes recorded in the journal, when it was killed)`, plus the
/// `helper_agent_process` test it re-executes the test binary with (a no-op when run as an
/// ordinary test). `$register` registers the kinds the experiment uses.
#[macro_export]
macro_rules! agent_kill9_harness {
    ($register:path) => {
        const AGENT_DIR: &str = "CHAOS_TEST_AGENT_DIR";
        const AGENT_EXPERIMENT: &str = "CHAOS_TEST_AGENT_EXPERIMENT";

        /// Not a test on its own: when started by [`run_agent_then_kill_it`] (with the env set),
        /// it plays the agent: runs the experiment with a journal until it is killed.
        #[test]
        fn helper_agent_process() {
            let (Ok(dir), Ok(exp)) = (std::env::var(AGENT_DIR), std::env::var(AGENT_EXPERIMENT))
            else {
                return;
            };
            let mut reg = $crate::testing::__fault_core::Registry::new();
            $register(&mut reg);
            let prepared =
                $crate::experiment::Experiment::load_toml(&exp, &reg).expect("experiment");
            let session = $crate::Session::open(std::path::Path::new(&dir), &reg).unwrap();
            let events = |_: &$crate::runner::Event| {};
            session
                .run(
                    &prepared,
                    "kill9",
                    &$crate::runner::AbortHandle::new(),
                    &events,
                )
                .unwrap();
        }

        /// Start an agent process running `experiment`, wait until its fault is applied, `kill
        /// -9` it, and return the journal dir and the recorded stressors.
        fn run_agent_then_kill_it(
            experiment: &str,
        ) -> (
            $crate::testing::__fault_core::testing::TempDir,
            Vec<$crate::testing::__fault_core::host::process::ProcessId>,
            std::time::Instant,
        ) {
            let dir = $crate::testing::__fault_core::testing::TempDir::new("chaos-kill9");
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "helper_agent_process",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(AGENT_DIR, dir.path())
                .env(AGENT_EXPERIMENT, experiment)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let journal = $crate::journal::Journal::open(dir.path()).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let pids: Vec<$crate::testing::__fault_core::host::process::ProcessId> = loop {
                let applied = journal
                    .records()
                    .unwrap()
                    .into_iter()
                    .find(|r| r.state == $crate::journal::RecordState::Applied);
                if let Some(r) = applied {
                    break $crate::testing::__serde_json::from_value(
                        r.receipt["stressors"]["processes"].clone(),
                    )
                    .unwrap();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the agent never applied its fault"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            assert!(!pids.is_empty());
            assert!(pids.iter().all(|p| p.is_alive()));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            (dir, pids, std::time::Instant::now())
        }
    };
}
