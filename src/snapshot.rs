//! `cairn snapshot status|restore`: etcdutl's snapshot commands for cairn's backups (the file
//! `etcdctl snapshot save` writes from cairn's `Maintenance.Snapshot`; format in
//! `cairn_state::backup`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use cairn_services::boot::{self, BootOptions, ClusterState};
use cairn_state::backup;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub cmd: SnapshotCmd,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Verify a backup and print its hash, revision, record count and size.
    Status(StatusArgs),
    /// Make a new member's data directory from a backup (as `etcdutl snapshot restore`).
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The backup file (`etcdctl snapshot save` of a cairn member).
    pub file: PathBuf,
    /// Output format: table, json or simple.
    #[arg(short = 'w', long = "write-out", default_value = "simple")]
    pub write_out: String,
}

/// etcdutl's restore flags and defaults.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// This member's name.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The data directory to create (default: NAME.etcd). It must not exist yet, or be empty.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The new cluster's members, `name=peer-url,...`.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// The new cluster's token (member ids derive from it and the peer URLs).
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs, as listed in --initial-cluster.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,
}

pub async fn run(a: SnapshotArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        SnapshotCmd::Status(s) => status(s),
        SnapshotCmd::Restore(r) => restore(r).await,
    }
}

fn verified(file: &Path) -> anyhow::Result<backup::BackupStatus> {
    backup::status(file).with_context(|| format!("snapshot {} cannot be used", file.display()))
}

fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let st = verified(&a.file)?;
    match a.write_out.as_str() {
        "json" => println!("{}", serde_json::to_string(&st)?),
        "simple" => println!(
            "{:x}, {}, {}, {}",
            st.hash,
            st.revision,
            st.total_key,
            crate::status::human_bytes(st.total_size as i64)
        ),
        "table" => {
            let rows = vec![
                vec!["HASH".into(), "REVISION".into(), "TOTAL KEYS".into(), "TOTAL SIZE".into()],
                vec![
                    format!("{:x}", st.hash),
                    st.revision.to_string(),
                    st.total_key.to_string(),
                    crate::status::human_bytes(st.total_size as i64),
                ],
            ];
            print!("{}", crate::status::table(&rows));
        }
        other => bail!("--write-out must be table, json or simple, got {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let data_dir = a.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.etcd", a.name)));
    if std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!("data-dir {:?} exists", data_dir.display().to_string());
    }
    let st = verified(&a.file)?;
    let opts = BootOptions {
        name: a.name.clone(),
        data_dir: data_dir.clone(),
        initial_cluster: crate::config::parse_initial_cluster(&a.initial_cluster)?,
        state: ClusterState::New,
        token: a.initial_cluster_token.clone(),
        advertise_peer_urls: a.initial_advertise_peer_urls.clone(),
    };
    // The new cluster's identity, exactly as `cairn server` works it out for a new member.
    let id = boot::identify(&opts).await?;
    let member = data_dir.join("member");
    std::fs::create_dir_all(&member).with_context(|| format!("creating {}", member.display()))?;
    let engine_path = member.join("state.redb");
    let result = (|| -> anyhow::Result<()> {
        let engine = cairn_storage::RedbEngine::open(&engine_path, 64 << 20)
            .with_context(|| format!("creating {}", engine_path.display()))?;
        backup::restore(&a.file, &engine).with_context(|| format!("restoring {}", a.file.display()))?;
        boot::save_identity(&data_dir, &id)?;
        Ok(())
    })();
    if let Err(e) = result {
        // Leave nothing half-made behind: a later restore into the same directory must work.
        let _ = std::fs::remove_dir_all(&data_dir);
        return Err(e);
    }
    println!(
        "restored snapshot {} (revision {}, {} records) into {}: member {} ({:x}) of cluster {:x}",
        a.file.display(),
        st.revision,
        st.total_key,
        data_dir.display(),
        id.name,
        id.member_id,
        id.cluster_id
    );
    println!(
        "start it with `cairn server --name {} --data-dir {} ...`; restore every member of the new cluster from the same file",
        id.name,
        data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
