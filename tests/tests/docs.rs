//! docs/faults.md embeds the output of `chaos-agent faults`; keep it current.

mod common;

#[test]
fn docs_faults_md_matches_chaos_agent_faults() {
    let out = std::process::Command::new(common::agent_bin())
        .arg("faults")
        .output()
        .unwrap();
    assert!(out.status.success());
    let current = String::from_utf8(out.stdout).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/faults.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = (
        "<!-- BEGIN chaos-agent faults -->\n",
        "<!-- END chaos-agent faults -->",
    );
    let start = doc.find(begin).expect("begin marker") + begin.len();
    let stop = doc.find(end).expect("end marker");
    let want = format!("```text\n{current}```\n");
    if doc[start..stop] != want {
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&path, format!("{}{want}{}", &doc[..start], &doc[stop..])).unwrap();
            return;
        }
        panic!("docs/faults.md is out of date: run `UPDATE_DOCS=1 cargo test -p chaos-tests --test docs`");
    }
}
