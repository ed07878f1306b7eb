//! `perennial launch`: N local ranks of a data-parallel run, as `torchrun` starts them.

use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::LaunchArgs;

/// Starts `a.nproc` copies of this program running `a.command`, each with the
/// environment of one rank, and waits for them. When a rank fails the others are
/// stopped and the launch fails with its status; `threads` (the launcher's own
/// `--threads`) is passed on to every rank.
pub fn launch(a: LaunchArgs, threads: Option<usize>, quiet: bool) -> Result<()> {
    // The command's first word after any global flags: only training runs as ranks
    // (N copies of anything else would do the same work N times, uncoordinated).
    let subcommand = a
        .command
        .iter()
        .enumerate()
        .find(|(i, w)| !w.starts_with('-') && (*i == 0 || a.command[i - 1] != "--threads"))
        .map(|(_, w)| w.as_str());
    if subcommand != Some("train") {
        bail!(
            "launch -- {}: only `train` runs data-parallel (launch --nproc N -- train ...)",
            a.command.join(" ")
        );
    }
    spawn_ranks(a, threads, quiet)
}

/// Starts and waits for the ranks of [`launch`] (and of `bench --ranks`), whatever
/// their command.
pub fn spawn_ranks(a: LaunchArgs, threads: Option<usize>, quiet: bool) -> Result<()> {
    if a.nproc == 0 {
        bail!("invalid --nproc = 0: must be at least 1");
    }
    let port = match a.master_port {
        Some(0) => bail!("invalid --master-port = 0"),
        Some(p) => p,
        None => std::net::TcpListener::bind((a.master_addr.as_str(), 0))
            .and_then(|l| l.local_addr())
            .with_context(|| format!("finding a free port on {}", a.master_addr))?
            .port(),
    };
    let exe = std::env::current_exe().context("locating this program")?;
    let mut prefix: Vec<String> = Vec::new();
    let has = |flags: &[&str]| a.command.iter().any(|w| flags.contains(&w.as_str()));
    if let (Some(t), false) = (threads, has(&["--threads"])) {
        prefix.extend(["--threads".into(), t.to_string()]);
    }
    if quiet && !has(&["--quiet", "-q"]) {
        prefix.push("--quiet".into());
    }
    tracing::info!(
        nproc = a.nproc, master = %format!("{}:{port}", a.master_addr), command = ?a.command,
        "launching"
    );
    let mut children: Vec<Child> = Vec::with_capacity(a.nproc);
    for rank in 0..a.nproc {
        let mut cmd = Command::new(&exe);
        die_with_parent(&mut cmd);
        let child = cmd
            .args(&prefix)
            .args(&a.command)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", a.nproc.to_string())
            .env("LOCAL_WORLD_SIZE", a.nproc.to_string())
            .env("MASTER_ADDR", &a.master_addr)
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(c) => children.push(c),
            Err(e) => {
                stop(&mut children);
                return Err(e).with_context(|| format!("starting rank {rank}"));
            }
        }
    }
    // Wait for all; the first failure stops the rest.
    let mut done: Vec<Option<ExitStatus>> = vec![None; a.nproc];
    loop {
        for (rank, c) in children.iter_mut().enumerate() {
            if done[rank].is_some() {
                continue;
            }
            let status = match c.try_wait() {
                Ok(s) => s,
                Err(e) => {
                    stop(&mut children);
                    return Err(e).with_context(|| format!("waiting for rank {rank}"));
                }
            };
            if let Some(status) = status {
                done[rank] = Some(status);
                if !status.success() {
                    stop(&mut children);
                    bail!(
                        "rank {rank} of {} failed ({status}); the others were stopped",
                        a.nproc
                    );
                }
            }
        }
        if done.iter().all(Option::is_some) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the child receive SIGKILL when the launcher dies (killed, or stopped with
/// Ctrl-C), so that no rank outlives it holding the port and the run directory.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The launcher may have died before the prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Kills the ranks still running and reaps them all.
fn stop(children: &mut [Child]) {
    for c in children.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
        }
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}
