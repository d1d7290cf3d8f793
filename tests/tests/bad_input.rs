//! Bad input gets a clear error and a non-zero exit, and the host stays untouched.

mod common;

use common::{text, Sandbox};

fn case(sb: &Sandbox, name: &str, body: &str, want_code: i32, want_msg: &str) {
    let path = sb.write(&format!("{name}.toml"), body);
    let out = sb.agent(&["run", path.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(want_code), "{name}: {t}");
    assert!(
        t.contains(want_msg),
        "{name}: expected \"{want_msg}\" in:\n{t}"
    );
    assert!(!t.contains("panicked"), "{name}: {t}");
    assert_eq!(sb.victim.state(), Some('S'), "{name}: victim touched");
    assert!(sb.fill_files().is_empty(), "{name}: fill file created");
    for r in sb.records() {
        assert_eq!(r["state"], "reverted", "{name}: {r}");
    }
}

fn fault(body: &str) -> String {
    format!("name = \"bad\"\n[[steps]]\n  [[steps.faults]]\n{body}\n")
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_nothing_changes() {
    let Some(sb) = Sandbox::new("bad_input_is_refused_with_a_clear_error_and_nothing_changes")
    else {
        return;
    };
    let pid = sb.victim.pid();
    let fs = sb.fs.path().display().to_string();
    let file = sb.write("not-a-dir", "x");
    // Validation errors: exit 2, nothing planned.
    case(
        &sb,
        "malformed",
        "name = \"x\"\n[[steps]\nkind=",
        2,
        "line 2",
    );
    case(
        &sb,
        "unknown-top-key",
        &format!(
            "colour = 1\n{}",
            fault(&format!(
                "kind = \"process.stop\"\nduration = \"1s\"\npid = {pid}"
            ))
        ),
        2,
        "colour: unknown key",
    );
    case(
        &sb,
        "unknown-fault-key",
        &fault(&format!(
            "kind = \"process.stop\"\nduration = \"1s\"\npid = {pid}\nsignall = 9"
        )),
        2,
        "unknown field `signall`",
    );
    case(
        &sb,
        "unknown-kind",
        &fault("kind = \"network.teleport\"\nduration = \"1s\""),
        2,
        "unknown fault kind \"network.teleport\"",
    );
    case(
        &sb,
        "negative-duration",
        &fault(&format!(
            "kind = \"process.stop\"\nduration = \"-5s\"\npid = {pid}"
        )),
        2,
        "negative",
    );
    case(
        &sb,
        "absurd-duration",
        &fault(&format!(
            "kind = \"process.stop\"\nduration = \"9999h\"\npid = {pid}"
        )),
        2,
        "longer than the maximum",
    );
    case(
        &sb,
        "no-unit",
        &fault(&format!(
            "kind = \"process.stop\"\nduration = 30\npid = {pid}"
        )),
        2,
        "with a unit",
    );
    case(
        &sb,
        "negative-size",
        &fault(&format!(
            "kind = \"disk.fill\"\nduration = \"1s\"\npath = \"{fs}\"\nsize = \"-1MiB\""
        )),
        2,
        "negative",
    );
    case(
        &sb,
        "percent-over-100",
        &fault(&format!(
            "kind = \"disk.fill\"\nduration = \"1s\"\npath = \"{fs}\"\npercent = 250"
        )),
        2,
        "between 0 and 100",
    );
    case(
        &sb,
        "pid-1",
        &fault("kind = \"process.stop\"\nduration = \"1s\"\npid = 1"),
        2,
        "PID 1",
    );
    case(
        &sb,
        "negative-pid",
        &fault("kind = \"process.kill\"\nduration = \"1s\"\npid = -4"),
        2,
        "pid",
    );
    case(&sb, "no-steps", "name = \"x\"\n", 2, "steps: missing");
    // Errors found when planning against the host: exit 1, nothing changed.
    case(
        &sb,
        "missing-pid",
        &fault("kind = \"process.stop\"\nduration = \"1s\"\npid = 999999999"),
        1,
        "no process with pid 999999999",
    );
    case(
        &sb,
        "path-is-a-file",
        &fault(&format!(
            "kind = \"disk.fill\"\nduration = \"1s\"\npath = \"{}\"\nsize = \"1MiB\"",
            file.display()
        )),
        1,
        "is not a directory",
    );
    case(&sb, "path-missing", &fault("kind = \"disk.fill\"\nduration = \"1s\"\npath = \"/nonexistent/chaos\"\nsize = \"1MiB\""), 1, "/nonexistent/chaos");
    case(
        &sb,
        "too-big",
        &fault(&format!(
            "kind = \"disk.fill\"\nduration = \"1s\"\npath = \"{fs}\"\nsize = \"1TiB\""
        )),
        1,
        "available",
    );
    // The agent itself is never a target: the only process whose command line holds this
    // marker is the agent (it is in the experiment file's name), so nothing else can match.
    let marker = format!("self-{}", fault_core::host::random_hex(4));
    let body = fault(&format!(
        "kind = \"process.stop\"\nduration = \"1s\"\ncmdline = \"{marker}\""
    ));
    case(&sb, &marker, &body, 1, "agent");
    // A step whose second fault cannot be planned changes nothing, not even the first.
    let two = format!(
        "name = \"half\"\n[[steps]]\n  [[steps.faults]]\n  kind = \"process.stop\"\n  duration = \"1s\"\n  pid = {pid}\n  [[steps.faults]]\n  kind = \"disk.fill\"\n  duration = \"1s\"\n  path = \"{fs}\"\n  size = \"1TiB\"\n"
    );
    case(&sb, "half-applied", &two, 1, "nothing was changed");
    // A missing file.
    let out = sb.agent(&["run", "/nonexistent/exp.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("cannot read /nonexistent/exp.toml"),
        "{}",
        text(&out)
    );
}

#[test]
fn nan_infinity_and_null_are_refused_not_read_as_defaults() {
    let Some(sb) = Sandbox::new("nan_infinity_and_null_are_refused_not_read_as_defaults") else {
        return;
    };
    let pid = sb.victim.pid();
    let fs = sb.fs.path().display().to_string();
    // Today's main read these as absent: SIGKILL, 100% load, no reserve.
    case(
        &sb,
        "signal-nan",
        &fault(&format!(
            "kind = \"process.kill\"\nduration = \"1s\"\npid = {pid}\nsignal = nan"
        )),
        2,
        "steps[0].faults[0].signal: NaN is not a number",
    );
    case(
        &sb,
        "load-nan",
        &fault("kind = \"cpu.stress\"\nduration = \"1s\"\nload = nan"),
        2,
        "steps[0].faults[0].load: NaN is not a number",
    );
    case(
        &sb,
        "reserve-inf",
        &fault(&format!(
            "kind = \"disk.fill\"\nduration = \"1s\"\npath = \"{fs}\"\npercent = 50\nreserve = -inf"
        )),
        2,
        "steps[0].faults[0].reserve: -inf is not a number",
    );
}

#[test]
fn dry_run_touches_nothing() {
    let Some(sb) = Sandbox::new("dry_run_touches_nothing") else {
        return;
    };
    let exp = sb.two_step_experiment("1s");
    let out = sb.agent(&["run", "--dry-run", exp.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("nothing will be changed") && t.contains("needs:"),
        "{t}"
    );
    assert!(t.contains(&format!("pid {}", sb.victim.pid())), "{t}");
    // What it touches, in human units, not raw receipts.
    assert!(t.contains("touches:") && !t.contains("plan: {"), "{t}");
    assert_eq!(sb.victim.state(), Some('S'));
    assert!(sb.fill_files().is_empty());
    assert!(sb.records().is_empty(), "dry run writes no journal");
}

/// `time.offset` is validated and planned on this host without its clock being set: bad
/// offsets are refused before anything runs, and a dry run plans (reads the clocks and the
/// NTP services) and prints what it would shift.
#[test]
fn time_offset_is_validated_and_dry_run_without_setting_the_clock() {
    let Some(sb) = Sandbox::new("time_offset_is_validated_and_dry_run_without_setting_the_clock")
    else {
        return;
    };
    for (offset, want) in [
        ("\"2h\"", "needs a sign"),
        ("\"+0s\"", "less than 1s"),
        ("\"-3654d\"", "more than 3653 days"),
        ("7200", "invalid type"),
    ] {
        // --dry-run even here: should validation ever let one through, it is only planned.
        let path = sb.write(
            "offset.toml",
            &fault(&format!(
                "kind = \"time.offset\"\nduration = \"1s\"\noffset = {offset}"
            )),
        );
        let out = sb.agent(&["run", "--dry-run", path.to_str().unwrap()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{offset}: {t}");
        assert!(t.contains(want), "{offset}: expected \"{want}\" in:\n{t}");
    }
    let exp = sb.write(
        "clock.toml",
        &fault("kind = \"time.offset\"\nduration = \"1m\"\noffset = \"-2h\""),
    );
    let out = sb.agent(&["run", "--dry-run", exp.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("shift the wall clock by -2h")
            && t.contains("touches: the wall clock of the whole host")
            && t.contains("CAP_SYS_TIME"),
        "{t}"
    );
    assert!(sb.records().is_empty(), "dry run writes no journal");
}
