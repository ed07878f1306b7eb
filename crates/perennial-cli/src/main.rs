//! `perennial`: the command-line program. Glue only: flags are parsed here, resolved
//! into library settings, and handed to `perennial` / `perennial-data`.

mod cli;
mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    restore_sigpipe();
    tune_allocator();
    let args = cli::Cli::parse();
    init_logging(args.verbose, args.quiet);
    if let Some(n) = args.threads {
        // libtorch panics on a count it cannot take; say so in one line instead.
        if n == 0 || n > i32::MAX as usize {
            eprintln!("error: invalid --threads = {n}: must be at least 1");
            return ExitCode::from(2);
        }
        tch::set_num_threads(n as i32);
    }
    match commands::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line, no backtrace.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`perennial report ... | head`)
/// would panic; with the default action the program ends quietly, as a Unix tool does.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: resets one signal's disposition to the default, before any other thread
    // exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// libtorch allocates and frees activation buffers of a few MB on every step. With
/// glibc's defaults each of them is a fresh `mmap` that is returned at once, so every
/// training step pays page faults for its whole working set (a third of the time went
/// to the kernel in `perennial bench protonet`). Keeping freed memory in the heap
/// removes that; the peak resident size does not grow (the bench's `peak_rss_mb` fell).
/// `MALLOC_*` environment variables set by the user still win.
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::vars().any(|(k, _)| k.starts_with("MALLOC_"));
        if !user_set {
            // SAFETY: mallopt only changes glibc's tuning parameters; it is called once,
            // before any other thread exists.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
                libc::mallopt(libc::M_TOP_PAD, 16 << 20);
            }
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet {
        "error"
    } else {
        match verbose {
            0 => "warn,perennial=info,perennial_cli=info",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
