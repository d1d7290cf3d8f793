//! `enosys-exec [--kernel X.Y] -- PROGRAM [ARGS...]`: run PROGRAM as on an old kernel, every
//! x86_64 system call newer than X.Y (default 4.4) answering ENOSYS (see
//! `chaos_tests::oldkernel`). The filter is inherited by everything PROGRAM starts.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use chaos_tests::oldkernel::{restrict, Kernel};

const USAGE: &str = "usage: enosys-exec [--kernel X.Y] -- PROGRAM [ARGS...]";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut kernel = Kernel::V4_4;
    loop {
        match args.next().as_ref().and_then(|a| a.to_str()) {
            Some("--kernel") => {
                match args
                    .next()
                    .as_ref()
                    .and_then(|a| a.to_str())
                    .and_then(Kernel::parse)
                {
                    Some(k) => kernel = k,
                    None => {
                        eprintln!("enosys-exec: --kernel wants a version such as 4.4 (3.10 or later)\n{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            Some("--") => break,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(program) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut cmd = Command::new(&program);
    cmd.args(args);
    if let Err(e) = restrict(&mut cmd, kernel) {
        eprintln!("enosys-exec: {e}");
        return ExitCode::from(2);
    }
    let e = cmd.exec();
    eprintln!("enosys-exec: cannot run {}: {e}", program.to_string_lossy());
    ExitCode::from(127)
}
