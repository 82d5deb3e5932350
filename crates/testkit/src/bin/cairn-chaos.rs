//! `cairn-chaos`: the chaos harness (see `scripts/chaos`). Prints progress on stderr and one
//! JSON summary line last on stdout; exits 0 only if the run was valid.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cairn_testkit::chaos::schedule::Nemesis;
use cairn_testkit::chaos::{run, Options, Runtime, Workload};
use clap::Parser;

#[derive(Parser)]
#[command(name = "cairn-chaos", about = "Seeded faults against a real cairn cluster, with checked histories")]
struct Args {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, value_enum, default_value = "register")]
    workload: Workload,
    /// Comma-separated: kill,pause,partition,delay,clock,restart,membership
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kill,pause,partition")]
    nemesis: Vec<Nemesis>,
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value = "process")]
    runtime: Runtime,
    /// Start the cluster with a deliberate defect (stale-read, early-ack, lease-ignore-ttl): the
    /// run must fail.
    #[arg(long)]
    bug: Option<String>,
    /// The cairn binary, built with --features failpoints.
    #[arg(long, default_value = "target/release/cairn-failpoints")]
    binary: PathBuf,
    /// With --runtime docker: the image whose entrypoint is that binary (scripts/chaos-image).
    #[arg(long, default_value = "cairn-chaos:local")]
    image: String,
    /// Report file (the history goes next to it).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Make every clock fault the leader's clock running at this rate (e.g. 4 for 4x fast),
    /// to show where lease safety ends (see RELIABILITY.md).
    #[arg(long)]
    clock_rate: Option<f64>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if !(3..=9).contains(&a.nodes) {
        eprintln!("cairn-chaos: --nodes must be between 3 and 9");
        return ExitCode::from(2);
    }
    let report = a.report.unwrap_or_else(|| PathBuf::from(format!("chaos-report-{}.json", a.seed)));
    let o = Options {
        nodes: a.nodes,
        workload: a.workload,
        nemesis: a.nemesis,
        time_limit: Duration::from_secs(a.time_limit),
        seed: a.seed,
        runtime: a.runtime,
        bug: a.bug,
        binary: a.binary,
        image: a.image,
        report: report.clone(),
        clients: a.clients,
        clock_rate: a.clock_rate,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(o)) {
        Ok(s) => {
            eprintln!("[chaos] report: {}", report.display());
            println!("{}", serde_json::to_string(&s).expect("serializable"));
            if s.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("cairn-chaos: {e}");
            ExitCode::from(2)
        }
    }
}
