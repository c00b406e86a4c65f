//! `pot`: the command line. Flags become library calls here; no logic lives in this file
//! beyond turning arguments into options and results into output and exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tune_allocator();
    let args = cli::Cli::parse();
    cli::init_tracing(args.verbose);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) if e.chain().any(|c| c.is::<cli::StdoutClosed>()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the cause chain joined: what failed and what to do about it.
            eprintln!("pot: error: {}", pot::with_causes(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

/// Keep freed activation buffers in the heap for reuse. glibc hands allocations above its
/// mmap threshold back to the kernel on free, so every forward pass would fault its multi-MB
/// activations in again (about a tenth of a diff's time on the VMs measured in BENCHMARKS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
