//! `cairn`: one binary for the server and its tools.
//!
//! - `cairn server`: a member of a cluster; flags follow etcd's (`--name`, `--data-dir`,
//!   `--initial-cluster`, ...), also settable from a TOML file (`--config-file`) and `CAIRN_*`
//!   environment variables.
//! - `cairn status`: members, leader, term, indexes and sizes, like `etcdctl endpoint status`.
//! - `cairn demo`: a local 3-member cluster, a workload, a leader killed and replaced.
//! - `cairn bench`: a load generator for any etcd v3 endpoints (cairn's or etcd's).
//! - `cairn snapshot status|restore`: check a backup, make a new cluster's member from one.

mod bench;
mod client;
mod config;
mod demo;
mod server;
mod snapshot;
mod status;
mod tier;
mod watch_scan;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a member allocates per request and per watch
/// event, and glibc's malloc and free were a fifth of a member's CPU fanning out events to
/// 10,000 watchers (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "A distributed data platform in one binary: an etcd-compatible replicated key-value store, and more to come"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a cluster member (flags as etcd's).
    Server(Box<config::ServerArgs>),
    /// Show the status of members, like `etcdctl endpoint status -w table`.
    Status(status::StatusArgs),
    /// Start a local 3-member cluster, run a workload, kill the leader, check nothing was lost.
    Demo(demo::DemoArgs),
    /// Load-test etcd v3 endpoints (cairn's or etcd's).
    Bench(bench::BenchArgs),
    /// Check or restore a backup (`etcdctl snapshot save` of a cairn member).
    Snapshot(snapshot::SnapshotArgs),
    /// The data tier's ranges.
    #[command(subcommand)]
    Range(tier::RangeCmd),
    /// The data tier's nodes.
    #[command(subcommand)]
    Node(tier::NodeCmd),
}

/// No transparent huge pages for this process. mimalloc asks for them on its arenas, and then
/// nearly every fresh page it hands out faults in a whole 2 MiB page that the kernel zeroes
/// first: 7–8% of all CPU in the 3-member put benchmark, against 2% with 4 KiB pages (the kernel
/// checks this flag at fault time, so it covers the arenas made before `main`).
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    let argv: Vec<String> = std::env::args().collect();
    // `server` reads its config file before clap sees the command line (see config.rs).
    let argv = match config::expand_config_file(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Server(a) => server::run(*a).await,
            Cmd::Status(a) => status::run(a).await,
            Cmd::Demo(a) => demo::run(a).await,
            Cmd::Bench(a) => bench::run(a).await,
            Cmd::Snapshot(a) => snapshot::run(a).await,
            Cmd::Range(c) => tier::range(c).await,
            Cmd::Node(c) => tier::node(c).await,
        }
    });
    // Tasks still running on the blocking pool (such as a log write stuck on a failing disk)
    // must not keep the process alive once it has decided to exit: what was acknowledged is
    // on disk, and a restart recovers from there.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
