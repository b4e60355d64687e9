//! Reload hooks of `lanyard svid watch`: `--exec CMD` (split into words here, run
//! without a shell), `--signal SIG` to the process named by `--pid-file` or to the
//! supervised program.

use std::path::Path;
use std::time::Duration;

use rustix::process::{Pid, Signal};

use super::WatchError;

/// How long an `--exec` hook may run before it is killed.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Split `--exec`'s command line into words as a POSIX shell would for plain
/// words: blanks separate words, `'…'` quotes literally, `"…"` quotes with `\"`
/// and `\\` escapes, and `\` outside quotes escapes the next character. Nothing
/// else is interpreted (no variables, globs, pipes or redirections); for those,
/// run `sh -c '…'`.
pub fn split_command(line: &str) -> Result<Vec<String>, WatchError> {
    let bad = |why: &str| {
        WatchError::Usage(format!(
            "--exec {line:?}: {why}; quote arguments with '…' or \"…\""
        ))
    };
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(bad("unterminated single quote")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(bad("unterminated double quote")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(bad("unterminated double quote")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(bad("a trailing backslash escapes nothing")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    if words.is_empty() {
        return Err(bad("no command"));
    }
    Ok(words)
}

/// A signal by name (`HUP`, `SIGHUP`, any case) or number (`1`).
pub fn parse_signal(s: &str) -> Result<Signal, WatchError> {
    let upper = s.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let by_name = match name {
        "HUP" => Some(Signal::HUP),
        "INT" => Some(Signal::INT),
        "QUIT" => Some(Signal::QUIT),
        "TERM" => Some(Signal::TERM),
        "USR1" => Some(Signal::USR1),
        "USR2" => Some(Signal::USR2),
        "WINCH" => Some(Signal::WINCH),
        "CONT" => Some(Signal::CONT),
        "ALRM" => Some(Signal::ALARM),
        _ => None,
    };
    let sig = by_name.or_else(|| {
        name.parse::<i32>().ok().and_then(|n| {
            [
                Signal::HUP,
                Signal::INT,
                Signal::QUIT,
                Signal::TERM,
                Signal::USR1,
                Signal::USR2,
                Signal::WINCH,
                Signal::CONT,
                Signal::ALARM,
            ]
            .into_iter()
            .find(|s| s.as_raw() == n)
        })
    });
    sig.ok_or_else(|| {
        WatchError::Usage(format!(
            "--signal {s:?} is not a signal this helper sends; use HUP, USR1, USR2, WINCH, QUIT, TERM, INT, CONT or ALRM (or its number)"
        ))
    })
}

/// The process ID in a pid file (first line, as nginx and most daemons write it).
pub fn parse_pid(text: &str) -> Option<Pid> {
    text.lines()
        .next()?
        .trim()
        .parse::<i32>()
        .ok()
        // Never 0 or negative: kill(2) would signal a whole process group.
        .filter(|&n| n > 0)
        .and_then(Pid::from_raw)
}

/// Send `sig` to the process whose ID is in `pid_file`.
pub fn signal_pid_file(pid_file: &Path, sig: Signal) -> Result<i32, WatchError> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        WatchError::Hook(format!(
            "cannot read the pid file {}: {e}; is the program running, and does --pid-file name the file it writes?",
            pid_file.display()
        ))
    })?;
    let pid = parse_pid(&text).ok_or_else(|| {
        WatchError::Hook(format!(
            "the pid file {} does not start with a process ID",
            pid_file.display()
        ))
    })?;
    rustix::process::kill_process(pid, sig).map_err(|e| {
        WatchError::Hook(format!(
            "cannot send {} to process {} (from {}): {e}; run the helper as the program's user or root",
            signal_name(sig),
            pid.as_raw_nonzero(),
            pid_file.display()
        ))
    })?;
    Ok(pid.as_raw_nonzero().get())
}

/// `SIGHUP` etc. for messages.
pub fn signal_name(sig: Signal) -> String {
    let name = match sig {
        Signal::HUP => "HUP",
        Signal::INT => "INT",
        Signal::QUIT => "QUIT",
        Signal::TERM => "TERM",
        Signal::USR1 => "USR1",
        Signal::USR2 => "USR2",
        Signal::WINCH => "WINCH",
        Signal::CONT => "CONT",
        Signal::ALARM => "ALRM",
        other => return format!("signal {}", other.as_raw()),
    };
    format!("SIG{name}")
}

/// Run an `--exec` hook to completion (killed after [`EXEC_TIMEOUT`]), its
/// output going to the helper's. Returns how it ended, for the log.
pub async fn run_exec(argv: &[String], dir: &Path) -> Result<(), WatchError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(WatchError::Hook("--exec has no command".into()));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("LANYARD_SVID_DIR", dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| WatchError::Hook(format!("cannot run --exec {program:?}: {e}")))?;
    match tokio::time::timeout(EXEC_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(WatchError::Hook(format!(
            "--exec {program:?} failed ({status}); the files were written, fix the hook and it runs again on the next rotation"
        ))),
        Ok(Err(e)) => Err(WatchError::Hook(format!("--exec {program:?}: {e}"))),
        Err(_) => {
            let _ = child.start_kill();
            Err(WatchError::Hook(format!(
                "--exec {program:?} did not finish within {} s and was killed",
                EXEC_TIMEOUT.as_secs()
            )))
        }
    }
}

/// Exit status for a child's status: its code, or 128 + the signal that ended it.
pub fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from((128 + s) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn commands_split_like_a_shell_without_expansion() {
        let s = |l: &str| split_command(l).unwrap();
        assert_eq!(s("nginx -s reload"), ["nginx", "-s", "reload"]);
        assert_eq!(
            s("  systemctl   reload\tnginx "),
            ["systemctl", "reload", "nginx"]
        );
        assert_eq!(
            s(r#"sh -c 'kill -HUP $(cat /run/x.pid)'"#),
            ["sh", "-c", "kill -HUP $(cat /run/x.pid)"]
        );
        assert_eq!(
            s(r#"echo "a \"b\" \n" c\ d"#),
            ["echo", "a \"b\" \\n", "c d"]
        );
        assert_eq!(s("printf ''"), ["printf", ""]);
        assert_eq!(s("a'b'\"c\"d"), ["abcd"]);
        for (bad, why) in [
            ("", "no command"),
            ("   ", "no command"),
            ("echo 'x", "unterminated single quote"),
            ("echo \"x", "unterminated double quote"),
            ("echo x\\", "trailing backslash"),
        ] {
            let e = split_command(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.starts_with("--exec"), "{e}");
        }
    }

    #[test]
    fn signals_by_name_or_number() {
        for s in ["HUP", "hup", "SIGHUP", "sighup", "1"] {
            assert_eq!(parse_signal(s).unwrap(), Signal::HUP, "{s}");
        }
        assert_eq!(parse_signal("USR1").unwrap(), Signal::USR1);
        assert_eq!(parse_signal("SIGQUIT").unwrap(), Signal::QUIT);
        assert_eq!(parse_signal("15").unwrap(), Signal::TERM);
        for bad in ["KILL", "9", "HUPP", "", "-1"] {
            let e = parse_signal(bad).unwrap_err().to_string();
            assert!(e.contains("is not a signal this helper sends"), "{e}");
        }
        assert_eq!(signal_name(Signal::HUP), "SIGHUP");
    }

    #[test]
    fn pid_files_hold_the_pid_on_the_first_line() {
        assert_eq!(parse_pid("1234\n").unwrap().as_raw_nonzero().get(), 1234);
        assert_eq!(parse_pid(" 77 \nextra").unwrap().as_raw_nonzero().get(), 77);
        assert!(parse_pid("").is_none());
        assert!(parse_pid("0\n").is_none());
        assert!(parse_pid("-1\n").is_none());
        assert!(parse_pid("nginx\n").is_none());
        let e = signal_pid_file(Path::new("/nonexistent/nginx.pid"), Signal::HUP)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read the pid file /nonexistent/nginx.pid"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn exec_hooks_report_failure() {
        let dir = tempfile::tempdir().unwrap();
        run_exec(&["true".into()], dir.path()).await.unwrap();
        let e = run_exec(&["false".into()], dir.path()).await.unwrap_err();
        assert!(e.to_string().contains("failed"), "{e}");
        let e = run_exec(&["/nonexistent/hook".into()], dir.path())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot run --exec"), "{e}");
    }
}
